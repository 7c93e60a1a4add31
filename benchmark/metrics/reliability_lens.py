"""The reliability lens: from a task's stored rows of every task seed to the tables the site shows.

Input: rows in the results schema (:data:`benchmark.results.COLUMNS`) of one task at its current
version, for every stored unit that differs from a shown unit only in its task seed (see
:func:`benchmark.results.task_seed_family`). A *measure* is one (metric, aggregate subset), e.g.
(``gt_mcc``, ``preset=song2025-toy``); its *replicate rows* are the per-seed (``…,seed=N``) or
per-pair (``…,pair=a-b``) rows under the same aggregate subset. For each measure:

* **evaluation noise** (per submission): the spread of the aggregate value over task seeds (same
  SAEs): ``σ_eval``, ``CV = σ_eval/|μ|``, ``MDD_eval = z·√2·σ_eval``;
* **training-seed noise** (per submission): the spread over its training seeds (or seed pairs),
  pooled over task seeds, and the standard error of the submission's mean over them (pairs: the
  U-statistic bound ``s·√(2(S+1)/(S(S−1)))``, see :func:`benchmark.metrics.reliability.mean_standard_error`);
* **the noise of a shown score**: ``σ²_score = σ²_eval + se²_seed`` (each pooled over submissions)
  and the measure's minimum detectable difference ``MDD = z·√2·σ_score`` (conservative: the
  per-seed spread already holds some evaluation noise);
* **discriminability**: variance components of architecture / training seed / task seed
  (:func:`~benchmark.metrics.reliability.nested_variance_components`), Welch's ANOVA on the groups'
  replicate means and a Welch pair matrix with Holm's correction;
* **rank stability**: Kendall's τ-b between the rankings of every two task seeds;
* **validity**: correlation with a declared ground-truth metric across submissions (same subset);
* **rank groups**: ``rank = 1 + #{submissions better by more than MDD}`` of the shown scores.

Why Welch + Holm for the pair matrix: a panel has 3-5 training seeds per architecture; a
permutation test of 3 against 3 seeds has C(6,3) = 20 relabellings, so its smallest two-sided
p-value is 0.1 and it can never reach 0.05. Welch's t assumes normal seed means but not equal
variances (architectures differ in seed stability), and Holm's step-down adjustment controls the
family-wise error over all pairs under any dependence between them, with more power than Bonferroni.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from benchmark.metrics import reliability as rel
from benchmark.results import spec_without_seed

DEFAULT_TASK_SEED = 0  # the task seed of the shown score (benchmark.spec.DEFAULT_SEED)
_PAIR_LABEL = re.compile(r"^(-?\d+)-(-?\d+)$")


@dataclass(frozen=True)
class ReliabilityThresholds:
    """The thresholds a measure must meet; declared once, stored with every verdict, shown on the page."""

    min_task_seeds: int = 5  # evaluation noise from fewer task seeds is marked preliminary
    min_share_between: float = 0.5  # discriminability: between-architecture share of variance (ICC)
    alpha: float = 0.05  # Welch ANOVA and the Holm-adjusted pair matrix
    min_validity_spearman: float = 0.5  # validity: Spearman ρ with the ground truth across submissions
    min_validity_points: int = 5  # ... over at least this many submissions (ρ = 1 from 3 points happens by chance 1 in 6)
    min_rank_tau: float = 0.8  # rank stability: mean Kendall τ-b between task seeds
    level: float = 0.95  # confidence of the minimum detectable difference

    def as_text(self) -> str:
        return (f"discriminability: between-architecture share of variance ≥ {self.min_share_between:g} and Welch ANOVA "
                f"p < {self.alpha:g}; validity: Spearman ρ with the ground truth ≥ {self.min_validity_spearman:g} over "
                f"≥ {self.min_validity_points} submissions; "
                f"rank stability: mean Kendall τ-b between task seeds ≥ {self.min_rank_tau:g}; evaluation noise needs "
                f"≥ {self.min_task_seeds} task seeds; MDD at {self.level:.0%}")


DEFAULT_THRESHOLDS = ReliabilityThresholds()

#: column → dtype ("s" text, "f" float, "i" integer, "b" boolean) of each stored table
_VERDICT = {
    "metric": "s", "subset": "s", "direction": "s", "submissions": "i", "task_seeds": "s", "min_task_seeds": "i",
    "replicate_kind": "s", "eval_std": "f", "eval_cv": "f", "eval_mdd": "f", "seed_std": "f", "seed_se": "f",
    "score_std": "f", "mdd": "f", "var_between": "f", "var_seed": "f", "var_eval": "f", "share_between": "f",
    "share_seed": "f", "share_eval": "f", "truncated": "s", "welch_f": "f", "welch_df1": "f", "welch_df2": "f",
    "welch_p": "f", "pairs": "i", "pairs_differ": "i", "tau_mean": "f", "tau_min": "f", "tau_pairs": "i",
    "validity_truth": "s", "validity_n": "i", "validity_pearson": "f", "validity_spearman": "f",
    "validity_spearman_p": "f", "discriminability": "s", "validity": "s", "rank_stability": "s", "verdict": "s",
    "reasons": "s", "sentence": "s", "thresholds": "s", "specs": "s",
}
_NOISE = {
    "metric": "s", "subset": "s", "submission": "s", "architecture": "s", "task_seeds": "i", "eval_mean": "f",
    "eval_std": "f", "eval_std_upper": "f", "eval_cv": "f", "eval_mdd": "f", "replicate_kind": "s", "replicates": "i",
    "seed_std": "f", "seed_cv": "f", "seed_se": "f", "score_std": "f", "score_mdd": "f", "note": "s",
}
_PAIRS = {
    "metric": "s", "subset": "s", "a": "s", "b": "s", "architecture_a": "s", "architecture_b": "s", "mean_a": "f",
    "mean_b": "f", "diff": "f", "se": "f", "t": "f", "df": "f", "p": "f", "p_holm": "f", "differs": "b", "alpha": "f",
    "evidence": "s",
}
_RANKS = {
    "metric": "s", "subset": "s", "submission": "s", "architecture": "s", "value": "f", "task_seed": "i", "rank": "i",
    "plain_rank": "i", "rank_group_size": "i", "tied_with": "s", "mdd": "f", "noise_measured": "b", "reason": "s",
}
VERDICT_COLUMNS, NOISE_COLUMNS, PAIR_COLUMNS, RANK_COLUMNS = (tuple(t) for t in (_VERDICT, _NOISE, _PAIRS, _RANKS))


@dataclass
class LensTables:
    verdict: pd.DataFrame
    noise: pd.DataFrame
    pairs: pd.DataFrame
    ranks: pd.DataFrame


def split_subset(subset: str) -> tuple[str, str | None, str | None]:
    """``"preset=x,seed=3"`` → ``("preset=x", "seed", "3")``; ``"pair=0-1"`` → ``("all", "pair", "0-1")``;
    ``"all"`` → ``("all", None, None)``."""
    parts = [p for p in str(subset).split(",") if p]
    kind = label = None
    rest = []
    for part in parts:
        key, _, value = part.partition("=")
        if key in ("seed", "pair") and kind is None:
            kind, label = key, value
        else:
            rest.append(part)
    return (",".join(rest) or "all"), kind, label


def _num(value) -> float | None:
    if value is None or value is pd.NA:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _pair_seeds(labels: Sequence[str]) -> int | None:
    seeds: set[str] = set()
    for label in labels:
        match = _PAIR_LABEL.match(str(label))
        if not match:
            return None
        seeds.update(match.groups())
    return len(seeds) or None


@dataclass
class _Submission:
    """One submission's data for one measure."""

    name: str
    architecture: str
    by_seed: dict[int, float]  # task seed → aggregate value
    replicates: dict[int, dict[str, float]] = field(default_factory=dict)  # task seed → replicate → value
    kind: str | None = None  # "seed" | "pair" | None
    shown: int | None = None  # task seed of the unit the leaderboard shows (column ``shown_unit``), if marked

    @property
    def shown_seed(self) -> int | None:
        """The task seed of the shown score: the marked shown unit, else seed 0, else the lowest."""
        if not self.by_seed:
            return None
        if self.shown is not None and self.shown in self.by_seed:
            return self.shown
        return DEFAULT_TASK_SEED if DEFAULT_TASK_SEED in self.by_seed else min(self.by_seed)


def _measures(rows: pd.DataFrame, metrics: Sequence[str]) -> dict[tuple[str, str], dict[str, _Submission]]:
    """(metric, aggregate subset) → submission → its values."""
    out: dict[tuple[str, str], dict[str, _Submission]] = {}
    if rows is None or len(rows) == 0:
        return out
    frame = rows[rows["metric"].isin(list(metrics)) & rows["value"].notna()]
    parsed = [split_subset(s) for s in frame["subset"].astype(str)]
    marked = frame["shown_unit"].fillna(False).astype(bool).tolist() if "shown_unit" in frame else [False] * len(frame)
    for row, (base, kind, label), is_shown in zip(frame.itertuples(index=False), parsed, marked):
        seed = int(row.task_seed) if not pd.isna(row.task_seed) else DEFAULT_TASK_SEED
        key = (str(row.metric), base)
        subs = out.setdefault(key, {})
        sub = subs.get(row.submission)
        if sub is None:
            arch = row.architecture if isinstance(row.architecture, str) and row.architecture else "unknown"
            sub = subs[row.submission] = _Submission(str(row.submission), arch, {})
        value = float(row.value)
        if kind is None:
            sub.by_seed[seed] = value
            if is_shown:
                sub.shown = seed
        else:
            if sub.kind not in (None, kind):
                continue  # one replicate kind per measure (per-seed rows win if both exist)
            sub.kind = kind
            sub.replicates.setdefault(seed, {})[label] = value
    # a measure is defined by its aggregate rows; replicate rows without one are left out
    return {k: {n: s for n, s in subs.items() if s.by_seed} for k, subs in out.items() if any(s.by_seed for s in subs.values())}


@dataclass
class _NoiseRow:
    eval_: rel.Spread
    eval_upper: float | None
    eval_mdd: float | None
    replicates: int
    seed_std: float | None
    seed_cv: float | None
    seed_se: float | None
    seed_df: float | None
    pair_seeds: int | None


def _noise(sub: _Submission, level: float) -> _NoiseRow:
    values = [sub.by_seed[s] for s in sorted(sub.by_seed)]
    ev = rel.spread(values)
    upper = rel.std_upper_bound(ev.std, ev.n, level) if ev.std is not None else None
    mdd = rel.minimum_detectable_difference(ev.std, level) if ev.std is not None else None
    seed_std = seed_cv = seed_se = seed_df = None
    n_reps, pair_seeds = 0, None
    if sub.replicates:
        variances, counts, means = [], [], []
        for seed in sorted(sub.replicates):
            sp = rel.spread(sub.replicates[seed].values())
            variances.append(None if sp.std is None else sp.std**2)
            counts.append(sp.n)
            means.append(sp.mean)
        var, _ = rel.pooled_variance(variances, counts)
        n_reps = max(counts)
        if var is not None:
            seed_std = math.sqrt(var)
            center = float(np.mean(means))
            seed_cv = seed_std / abs(center) if center else None
            if sub.kind == "pair":
                labels = sorted({label for reps in sub.replicates.values() for label in reps})
                pair_seeds = _pair_seeds(labels)
            if sub.kind == "pair" and pair_seeds:
                seed_se = rel.mean_standard_error(seed_std, n_reps, pairwise_seeds=pair_seeds)
                seed_df = pair_seeds - 1
            else:
                seed_se = rel.mean_standard_error(seed_std, n_reps)
                seed_df = n_reps - 1
    return _NoiseRow(ev, upper, mdd, n_reps, seed_std, seed_cv, seed_se, seed_df, pair_seeds)


def _group_estimate(sub: _Submission, noise: _NoiseRow) -> rel.GroupEstimate | None:
    """The group's mean over its replicates (each averaged over task seeds) with its standard error;
    without replicate rows, the mean over task seeds with the task-seed standard error."""
    if sub.replicates:
        labels = sorted({label for reps in sub.replicates.values() for label in reps})
        rep_means = [float(np.mean([sub.replicates[s][lab] for s in sub.replicates if lab in sub.replicates[s]])) for lab in labels]
        sp = rel.spread(rep_means)
        if sp.std is None:
            return None
        if sub.kind == "pair" and noise.pair_seeds:
            se = rel.mean_standard_error(sp.std, sp.n, pairwise_seeds=noise.pair_seeds)
            return rel.GroupEstimate(sub.name, sp.mean, se, noise.pair_seeds - 1, sp.n)
        return rel.GroupEstimate(sub.name, sp.mean, rel.mean_standard_error(sp.std, sp.n), sp.n - 1, sp.n)
    sp = noise.eval_
    if sp.std is None:
        return None
    return rel.GroupEstimate(sub.name, sp.mean, rel.mean_standard_error(sp.std, sp.n), sp.n - 1, sp.n)


def _components(subs: Mapping[str, _Submission]) -> rel.VarianceComponents:
    values, groups, reps = [], [], []
    with_reps = any(s.replicates for s in subs.values())
    for sub in subs.values():
        if with_reps:
            for seed, replicate_values in sub.replicates.items():
                for label, value in replicate_values.items():
                    values.append(value)
                    groups.append(sub.name)
                    reps.append(label)
        else:
            for value in sub.by_seed.values():
                values.append(value)
                groups.append(sub.name)
                reps.append("")  # one replicate per group: the within level is the task seeds
    return rel.nested_variance_components(values, groups, reps)


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")


@dataclass
class _Pooled:
    """The noise of one measure, pooled over its submissions."""

    eval_std: float | None  # √(pooled task-seed variance)
    eval_cv: float | None  # eval_std / |mean of the submissions' means|
    seed_std: float | None  # √(mean of the submissions' training-seed variances)
    seed_se: float | None  # √(mean of the submissions' se² of their mean over seeds)
    score_std: float | None  # √(eval_std² + seed_se²)
    mdd: float | None  # z·√2·score_std


def _pool(noise: Mapping[str, _NoiseRow], level: float) -> _Pooled:
    rows = list(noise.values())
    eval_var, _ = rel.pooled_variance([None if r.eval_.std is None else r.eval_.std**2 for r in rows], [r.eval_.n for r in rows])
    se2 = [r.seed_se**2 for r in rows if r.seed_se is not None]
    seed_var = [r.seed_std**2 for r in rows if r.seed_std is not None]
    seed_se = math.sqrt(float(np.mean(se2))) if se2 else None
    parts = [v for v in (eval_var, None if seed_se is None else seed_se**2) if v is not None]
    score_std = math.sqrt(sum(parts)) if parts else None
    center = float(np.mean([r.eval_.mean for r in rows])) if rows else math.nan
    eval_std = math.sqrt(eval_var) if eval_var is not None else None
    return _Pooled(
        eval_std=eval_std, eval_cv=eval_std / abs(center) if eval_std is not None and center else None,
        seed_std=math.sqrt(float(np.mean(seed_var))) if seed_var else None, seed_se=seed_se, score_std=score_std,
        mdd=rel.minimum_detectable_difference(score_std, level) if score_std is not None else None,
    )


def _noise_records(metric: str, subset: str, subs: Mapping[str, _Submission], noise: Mapping[str, _NoiseRow],
                   thresholds: ReliabilityThresholds) -> list[dict]:
    out = []
    for name, nr in noise.items():
        parts = [v for v in (None if nr.eval_.std is None else nr.eval_.std**2, None if nr.seed_se is None else nr.seed_se**2)
                 if v is not None]
        own = math.sqrt(sum(parts)) if parts else None
        notes = []
        if nr.eval_.n < thresholds.min_task_seeds:
            notes.append(f"{nr.eval_.n} task seed(s): evaluation noise {'not measured' if nr.eval_.n < 2 else 'preliminary'}")
        if subs[name].kind == "pair":
            notes.append("seed pairs share seeds: se = s·√(2(S+1)/(S(S−1)))")
        out.append({
            "metric": metric, "subset": subset, "submission": name, "architecture": subs[name].architecture,
            "task_seeds": nr.eval_.n, "eval_mean": nr.eval_.mean, "eval_std": nr.eval_.std, "eval_std_upper": nr.eval_upper,
            "eval_cv": nr.eval_.cv, "eval_mdd": nr.eval_mdd, "replicate_kind": subs[name].kind or "none",
            "replicates": nr.replicates, "seed_std": nr.seed_std, "seed_cv": nr.seed_cv, "seed_se": nr.seed_se,
            "score_std": own, "score_mdd": rel.minimum_detectable_difference(own, thresholds.level) if own is not None else None,
            "note": "; ".join(notes),
        })
    return out


def _evidence(subs: Mapping[str, _Submission]) -> str:
    kinds = {s.kind for s in subs.values() if s.replicates}
    if not kinds:
        return "task seeds"
    return "training seeds" if kinds == {"seed"} else "seed pairs"


def _pair_records(metric: str, subset: str, subs: Mapping[str, _Submission], estimates: list[rel.GroupEstimate],
                  tests: list[rel.PairTest], thresholds: ReliabilityThresholds) -> list[dict]:
    means = {e.label: e.mean for e in estimates}
    evidence = _evidence(subs)
    return [{
        "metric": metric, "subset": subset, "a": t.a, "b": t.b, "architecture_a": subs[t.a].architecture,
        "architecture_b": subs[t.b].architecture, "mean_a": means[t.a], "mean_b": means[t.b], "diff": t.diff, "se": t.se,
        "t": t.t if math.isfinite(t.t) else None, "df": t.df if math.isfinite(t.df) else None, "p": t.p,
        "p_holm": t.p_holm, "differs": bool(t.differs), "alpha": thresholds.alpha, "evidence": evidence,
    } for t in tests]


def _rank_records(metric: str, subset: str, direction: str, subs: Mapping[str, _Submission], mdd: float | None) -> list[dict]:
    """Rank groups of the shown scores (task seed 0, else the lowest stored seed)."""
    if direction not in ("higher", "lower"):
        return []
    shown = [(n, subs[n].shown_seed, subs[n].by_seed[subs[n].shown_seed]) for n in sorted(subs)]
    values = [v for _, _, v in shown]
    margin = mdd if mdd is not None else 0.0
    ranks = rel.rank_with_ties(values, direction, margin)
    plain = rel.rank_with_ties(values, direction, 0.0)
    sign = 1.0 if direction == "higher" else -1.0
    out = []
    for (name, seed, value), rank, plain_rank in zip(shown, ranks, plain):
        tied = sorted(m for m, _, w in shown if m != name and abs(w - value) <= margin)
        better = sorted((sign * (w - value), m) for m, _, w in shown if sign * (w - value) > margin)
        if mdd is None:
            reason = f"plain rank {plain_rank}: noise not measured (run canonbench reliability), so no ties are drawn"
        else:
            reason = f"rank {rank}: " + (
                f"{len(better)} submission(s) better by more than the noise threshold {_fmt(mdd)} "
                f"(closest: {better[0][1]}, by {_fmt(better[0][0])})" if better
                else f"no submission is better by more than the noise threshold {_fmt(mdd)}")
            if tied:
                reason += f"; within noise of {', '.join(tied)}"
        out.append({"metric": metric, "subset": subset, "submission": name, "architecture": subs[name].architecture,
                    "value": value, "task_seed": seed, "rank": int(rank), "plain_rank": int(plain_rank),
                    "rank_group_size": sum(1 for r in ranks if r == rank), "tied_with": json.dumps(tied), "mdd": mdd,
                    "noise_measured": mdd is not None, "reason": reason})
    return out


def _validity(metric: str, subset: str, subs: Mapping[str, _Submission], truth: str | None,
              measures: Mapping[tuple[str, str], dict[str, _Submission]], min_points: int) -> rel.Correlation | None:
    """Correlation across submissions of the shown scores with the ground-truth metric's (same task seed)."""
    if not truth:
        return None
    truth_subs = measures.get((truth, subset), {})
    xs, ys = [], []
    for name in sorted(subs):
        if name not in truth_subs:
            continue
        seed = subs[name].shown_seed
        xs.append(subs[name].by_seed[seed])
        ys.append(truth_subs[name].by_seed.get(seed, truth_subs[name].by_seed[truth_subs[name].shown_seed]))
    return rel.correlation(xs, ys, min_points=min_points)


def _verdict(*, metric: str, ranked: bool, truth: str | None, ground_truth: bool, min_seeds: int, share_between: float | None,
             welch_p: float | None, n_estimates: int, corr: rel.Correlation | None, taus: list[float],
             thresholds: ReliabilityThresholds) -> tuple[str, str, str, str, list[str]]:
    """(discriminability, validity, rank stability, overall verdict, reasons) against ``thresholds``."""
    reasons = []
    if min_seeds < thresholds.min_task_seeds:
        reasons.append(f"evaluation noise from {min_seeds} task seed(s) (threshold: {thresholds.min_task_seeds})")
    if not ranked:
        discrim = "n/a"  # a reference value (no direction): telling architectures apart is not its job
    elif n_estimates < 2 or share_between is None or welch_p is None:
        discrim = "not measured"
        reasons.append("discriminability needs at least two submissions with a measured spread")
    elif share_between >= thresholds.min_share_between and welch_p < thresholds.alpha:
        discrim = "pass"
    else:
        discrim = "fail"
        reasons.append(f"between-architecture share {_fmt(share_between)} (≥ {thresholds.min_share_between:g} needed), "
                       f"Welch ANOVA p = {_fmt(welch_p)} (< {thresholds.alpha:g} needed)")
    if ground_truth:
        valid = "ground truth"
    elif corr is None:
        valid = "no ground truth"
    elif corr.spearman is None:
        valid = "not measured"
        reasons.append(f"validity against {truth}: {corr.note}")
    elif corr.spearman >= thresholds.min_validity_spearman:
        valid = "pass"
    else:
        valid = "fail"
        reasons.append(f"Spearman ρ with {truth} = {_fmt(corr.spearman)} (≥ {thresholds.min_validity_spearman:g} needed)")
    if not ranked:
        stable = "n/a"
    elif not taus:
        stable = "not measured"
        reasons.append("rank stability needs at least two task seeds and three submissions")
    elif float(np.mean(taus)) >= thresholds.min_rank_tau:
        stable = "pass"
    else:
        stable = "fail"
        reasons.append(f"mean Kendall τ between task seeds {_fmt(float(np.mean(taus)))} (≥ {thresholds.min_rank_tau:g} needed)")
    checks = (discrim, valid, stable)
    if not ranked:
        overall = "reference"  # a baseline without direction: only its noise is measured
    elif "fail" in checks:
        overall = "fails"
    elif "not measured" in checks or min_seeds < thresholds.min_task_seeds:
        overall = "incomplete"
    else:
        overall = "passes"
    return discrim, valid, stable, overall, reasons


def _sentence(metric: str, subset: str, pooled: _Pooled, n_task_seeds: int) -> str:
    """The one plain sentence the page shows for a measure."""
    if pooled.mdd is None:
        return f"{metric} ({subset}): noise not measured yet."
    sources = []
    if pooled.eval_std is not None:
        sources.append(f"evaluation noise σ_eval = {_fmt(pooled.eval_std)} over {n_task_seeds} task seeds"
                       + (" (deterministic given the SAEs)" if pooled.eval_std == 0 else ""))
    if pooled.seed_se is not None:
        sources.append(f"training-seed noise of a submission's mean se_seed = {_fmt(pooled.seed_se)}")
    return (f"{metric} ({subset}): differences below {_fmt(pooled.mdd)} are noise "
            f"(95%: 1.96·√2·σ with σ² = σ²_eval + se²_seed; {'; '.join(sources)}).")


def reliability_lens(rows: pd.DataFrame, metrics: Sequence[str], *, validity: Mapping[str, str] | None = None,
                     ground_truth: Sequence[str] = (), thresholds: ReliabilityThresholds = DEFAULT_THRESHOLDS) -> LensTables:
    """Every table of the lens (see the module docstring) for ``metrics`` of one task.

    ``rows``: the task's stored rows of every task seed (results schema). ``validity``: metric →
    ground-truth metric it is checked against (same task, same subset). ``ground_truth``: metrics
    that *are* ground truth (their validity reads "ground truth"). A pure function of its inputs."""
    validity = dict(validity or {})
    measures = _measures(rows, list(metrics) + [t for t in validity.values() if t not in metrics])
    directions: dict[str, str] = {}
    specs: set[str] = set()
    if rows is not None and len(rows):
        directions = rows.drop_duplicates("metric").set_index("metric")["direction"].astype(str).to_dict()
        specs = {spec_without_seed(s) for s in rows.drop_duplicates("unit_key")["spec"]}
    verdicts, noise_rows, pair_rows, rank_rows = [], [], [], []
    for (metric, subset), subs in sorted(measures.items()):
        if metric not in metrics:
            continue
        direction = directions.get(metric, "none")
        names = sorted(subs)
        noise = {n: _noise(subs[n], thresholds.level) for n in names}
        pooled = _pool(noise, thresholds.level)
        noise_rows += _noise_records(metric, subset, subs, noise, thresholds)
        comps = _components(subs)
        with_reps = any(s.replicates for s in subs.values())
        estimates = [e for e in (_group_estimate(subs[n], noise[n]) for n in names) if e is not None]
        welch = rel.welch_anova(estimates) if len(estimates) >= 2 else (None, None, None, None)
        tests = rel.pair_matrix(estimates, alpha=thresholds.alpha) if len(estimates) >= 2 else []
        pair_rows += _pair_records(metric, subset, subs, estimates, tests, thresholds)
        table: dict[int, dict[str, float]] = {}
        for n in names:
            for seed, value in subs[n].by_seed.items():
                table.setdefault(seed, {})[n] = value
        taus = [t[2] for t in rel.kendall_tau_pairs(table)]
        truth = validity.get(metric)
        corr = _validity(metric, subset, subs, truth, measures, thresholds.min_validity_points)
        rank_rows += _rank_records(metric, subset, direction, subs, pooled.mdd)
        task_seeds = sorted(table)
        min_seeds = min(noise[n].eval_.n for n in names)
        welch_p = _num(welch[3])
        discrim, valid, stable, overall, reasons = _verdict(
            metric=metric, ranked=direction in ("higher", "lower"), truth=truth, ground_truth=metric in ground_truth,
            min_seeds=min_seeds,
            share_between=comps.icc, welch_p=welch_p, n_estimates=len(estimates), corr=corr, taus=taus,
            thresholds=thresholds)
        verdicts.append({
            "metric": metric, "subset": subset, "direction": direction, "submissions": len(names),
            "task_seeds": json.dumps(task_seeds), "min_task_seeds": min_seeds, "replicate_kind": _evidence(subs),
            "eval_std": pooled.eval_std, "eval_cv": pooled.eval_cv,
            "eval_mdd": rel.minimum_detectable_difference(pooled.eval_std, thresholds.level) if pooled.eval_std is not None else None,
            "seed_std": pooled.seed_std, "seed_se": pooled.seed_se, "score_std": pooled.score_std, "mdd": pooled.mdd,
            "var_between": comps.between, "var_seed": comps.replicate if with_reps else None, "var_eval": comps.residual,
            "share_between": comps.icc, "share_seed": comps.share("replicate") if with_reps else None,
            "share_eval": comps.share("residual"), "truncated": ",".join(comps.truncated),
            "welch_f": _num(welch[0]), "welch_df1": _num(welch[1]), "welch_df2": _num(welch[2]), "welch_p": welch_p,
            "pairs": len(tests), "pairs_differ": sum(t.differs for t in tests),
            "tau_mean": float(np.mean(taus)) if taus else None, "tau_min": min(taus) if taus else None, "tau_pairs": len(taus),
            "validity_truth": truth or ("(itself)" if metric in ground_truth else ""),
            "validity_n": corr.n if corr else None, "validity_pearson": corr.pearson if corr else None,
            "validity_spearman": corr.spearman if corr else None, "validity_spearman_p": corr.spearman_p if corr else None,
            "discriminability": discrim, "validity": valid, "rank_stability": stable, "verdict": overall,
            "reasons": "; ".join(reasons), "sentence": _sentence(metric, subset, pooled, len(task_seeds)),
            "thresholds": json.dumps(asdict(thresholds), sort_keys=True), "specs": json.dumps(sorted(specs)),
        })
    return LensTables(
        verdict=_frame(verdicts, _VERDICT), noise=_frame(noise_rows, _NOISE), pairs=_frame(pair_rows, _PAIRS),
        ranks=_frame(rank_rows, _RANKS),
    )


_DTYPES = {"s": "string", "f": "Float64", "i": "Int64", "b": "boolean"}


def _frame(records: list[dict], types: Mapping[str, str]) -> pd.DataFrame:
    """Records as a frame with fixed column types (stable parquet schemas, whatever the rows hold)."""
    frame = pd.DataFrame(records, columns=list(types))
    for column, kind in types.items():
        if kind in ("f", "i"):
            frame[column] = pd.to_numeric(frame[column].astype(object).where(frame[column].notna(), None), errors="coerce")
        frame[column] = frame[column].astype(_DTYPES[kind])
    return frame


__all__ = ["DEFAULT_THRESHOLDS", "LensTables", "NOISE_COLUMNS", "PAIR_COLUMNS", "RANK_COLUMNS", "ReliabilityThresholds",
           "VERDICT_COLUMNS", "reliability_lens", "split_subset"]
