"""The task page's "How reliable is this metric?" section, from the stored reliability lens.

Everything shown is read from the tables ``canonbench summarize`` stored for the task's
reliability summaries (:mod:`tasks.reliability`): the sentence, the verdict against the stored
thresholds, the pair matrix, the noise per submission and the rank groups. Nothing is computed here.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from leaderboard import plots
from leaderboard.cells import Cell, Column, Table, frame_table, slug
from leaderboard.collect import TaskInfo, role_table
from leaderboard.plots import format_number

ROLES = ("reliability", "reliability_noise", "reliability_pairs", "reliability_ranks")

THRESHOLD_LABELS = {
    "min_share_between": "discriminability: between-architecture share of variance (ICC) at least",
    "alpha": "Welch ANOVA and Holm-adjusted pair tests: significance level",
    "min_validity_spearman": "validity: Spearman ρ with the ground truth at least",
    "min_validity_points": "validity: submissions needed",
    "min_rank_tau": "rank stability: mean Kendall τ-b between task seeds at least",
    "min_task_seeds": "evaluation noise: task seeds needed",
    "level": "confidence of the minimum detectable difference",
}


def command_for(task: TaskInfo) -> str:
    return f"canonbench reliability PANEL --tasks {task.name} --task-seeds 0-4"


def _num(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _text(value: Any) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _fmt(value: Any) -> str:
    number = _num(value)
    return "" if number is None else format_number(number)


def _cell(value: Any, **kw) -> Cell:
    number = _num(value)
    return Cell(format_number(number) if number is not None else "", repr(number) if number is not None else "", **kw)


def _verdict_table(frame: pd.DataFrame, stem: str) -> Table:
    columns = [
        Column("Metric"), Column("Subset"), Column("Verdict"),
        Column("Discriminability", title="between-architecture share of variance (nested ANOVA) and Welch ANOVA p"),
        Column("Validity", title="Spearman ρ with the ground-truth metric across submissions"),
        Column("Rank stability", title="mean Kendall τ-b between the rankings of every two task seeds"),
        Column("σ eval", numeric=True, title="evaluation noise: std of a shown score over task seeds (pooled)"),
        Column("CV eval", numeric=True, title="σ_eval / |mean|"),
        Column("se seed", numeric=True, title="training-seed noise: standard error of a submission's mean over its seeds"),
        Column("MDD", numeric=True, title="minimum detectable difference of two shown scores: 1.96·√2·√(σ²_eval + se²_seed)"),
        Column("Share between", numeric=True, title="σ²_architecture / (σ²_architecture + σ²_seed + σ²_eval)"),
        Column("Pairs differing", numeric=True, title="pairs of submissions that differ beyond noise (Holm-adjusted Welch t)"),
    ]
    rows = []
    for r in frame.to_dict("records"):
        verdict = _text(r["verdict"])
        validity = _text(r["validity"])
        if r.get("validity_truth") and _num(r.get("validity_spearman")) is not None:
            validity += f" (ρ = {_fmt(r['validity_spearman'])} with {r['validity_truth']}, n = {int(r['validity_n'])})"
        discrim = _text(r["discriminability"])
        if _num(r.get("welch_p")) is not None:
            discrim += f" (share {_fmt(r['share_between'])}, p = {_fmt(r['welch_p'])})"
        stable = _text(r["rank_stability"])
        if _num(r.get("tau_mean")) is not None:
            stable += f" (τ = {_fmt(r['tau_mean'])}, {int(r['tau_pairs'])} task-seed pairs)"
        pairs = f"{int(r['pairs_differ'])} of {int(r['pairs'])}" if _num(r.get("pairs")) else ""
        rows.append([
            Cell(_text(r["metric"]), _text(r["metric"]), code=True), Cell(_text(r["subset"]), _text(r["subset"])),
            Cell(verdict, verdict, cls=f"verdict-{verdict}", title=_text(r["reasons"]) or None),
            Cell(discrim, discrim), Cell(validity, validity), Cell(stable, stable),
            _cell(r["eval_std"]), _cell(r["eval_cv"]), _cell(r["seed_se"]), _cell(r["mdd"]), _cell(r["share_between"]),
            Cell(pairs, repr(float(r["pairs_differ"])) if pairs else ""),
        ])
    return Table("reliability-verdict", "Verdict per metric (stored lens)", columns, rows, frame.reset_index(drop=True),
                 f"{stem}/reliability")


def _ranks_table(frame: pd.DataFrame, stem: str) -> Table:
    columns = [Column("Metric"), Column("Subset"), Column("Rank", numeric=True, title="1 + submissions better beyond noise"),
               Column("Submission"), Column("Shown score", numeric=True), Column("Within noise of"), Column("Why")]
    rows = []
    ordered = frame.sort_values(["metric", "subset", "rank", "submission"], kind="stable")
    for r in ordered.to_dict("records"):
        tied = ", ".join(json.loads(_text(r["tied_with"]) or "[]"))
        shared = int(r["rank_group_size"]) > 1
        rows.append([
            Cell(_text(r["metric"]), _text(r["metric"]), code=True), Cell(_text(r["subset"]), _text(r["subset"])),
            Cell(f"{int(r['rank'])}{'=' if shared else ''}", repr(float(r["rank"])), title=_text(r["reason"])),
            Cell(_text(r["submission"]), _text(r["submission"]), href=f"submissions/{slug(_text(r['submission']))}.html"),
            _cell(r["value"], title=f"task seed {int(r['task_seed'])}"), Cell(tied, tied), Cell(_text(r["reason"]), _text(r["reason"])),
        ])
    return Table("reliability-ranks", "Rank groups of the shown scores (ties = within noise)", columns, rows,
                 frame.reset_index(drop=True), f"{stem}/reliability-ranks")


def _thresholds(frame: pd.DataFrame | None, spec_description: str) -> list[dict[str, str]]:
    """The thresholds the stored verdicts were computed with (from the table itself)."""
    if frame is None or not len(frame):
        return [{"label": "declared", "value": spec_description}]
    stored = json.loads(_text(frame["thresholds"].iloc[0]) or "{}")
    order = list(THRESHOLD_LABELS) + sorted(set(stored) - set(THRESHOLD_LABELS))
    return [{"label": THRESHOLD_LABELS.get(k, k), "value": f"{stored[k]:g}" if isinstance(stored[k], (int, float)) else str(stored[k])}
            for k in order if k in stored]


def reliability_section(task: TaskInfo, stem: str) -> dict[str, Any] | None:
    """The section's content, or None when the task declares no reliability lens. ``figures`` carry
    their data (to be offered as downloads by the caller)."""
    specs = {spec.role: spec for spec in task.meta.summaries if getattr(spec, "role", "") in ROLES}
    if "reliability" not in specs:
        return None
    verdict = role_table(task, "reliability")
    out: dict[str, Any] = {"command": command_for(task), "computed": verdict is not None and len(verdict) > 0,
                           "thresholds": _thresholds(verdict, specs["reliability"].description), "sentences": [],
                           "figures": [], "tables": [], "computed_at": "", "version": specs["reliability"].version}
    if not out["computed"]:
        return out
    out["computed_at"] = _text(verdict["computed_at"].iloc[0]) if "computed_at" in verdict else ""
    for r in verdict.to_dict("records"):
        out["sentences"].append({"verdict": _text(r["verdict"]), "text": _text(r["sentence"]), "reasons": _text(r["reasons"])})
    out["verdict_table"] = _verdict_table(verdict, stem)
    pairs = role_table(task, "reliability_pairs")
    for r in verdict.to_dict("records"):
        if _text(r["direction"]) not in ("higher", "lower"):
            continue
        metric, subset = _text(r["metric"]), _text(r["subset"])
        picked = None
        if pairs is not None and len(pairs):
            picked = pairs[(pairs["metric"] == metric) & (pairs["subset"] == subset)]
        names = sorted(set(picked["a"]) | set(picked["b"])) if picked is not None and len(picked) else []
        fid = f"reliability-pairs-{slug(metric)}-{slug(subset)}"
        out["figures"].append(plots.pair_matrix(
            picked, names=names, figure_id=fid, title=f"Which submissions differ beyond noise? {metric} ({subset})",
            mdd=_num(r["mdd"]),
            note=(f"Evidence: {_text(r['replicate_kind'])}. The matrix tests the architectures (means over their "
                  "seeds, small-sample t and Holm over all pairs); the rank groups compare two single shown scores "
                  "with the MDD, so the two can disagree near the threshold.")))
    ranks = role_table(task, "reliability_ranks")
    if ranks is not None and len(ranks):
        out["tables"].append(_ranks_table(ranks, stem))
    noise = role_table(task, "reliability_noise")
    if noise is not None:
        out["tables"].append(frame_table(noise.reset_index(drop=True), table_id="reliability-noise",
                                         caption="Noise per submission (evaluation: over task seeds; training: over seeds)",
                                         stem=f"{stem}/reliability-noise"))
    if pairs is not None:
        out["tables"].append(frame_table(pairs.reset_index(drop=True), table_id="reliability-pairs",
                                         caption="Pair tests (Welch t, Holm-adjusted)", stem=f"{stem}/reliability-pairs"))
    return out


def main_metric_flag(task: TaskInfo) -> str | None:
    """A short warning for the overview when the task's main metric fails the stored lens, else None."""
    verdict = role_table(task, "reliability")
    if verdict is None or not len(verdict):
        return None
    failing = verdict[(verdict["metric"] == task.meta.main_metric.name) & (verdict["verdict"] == "fails")]
    if not len(failing):
        return None
    return "; ".join(f"{r['subset']}: {r['reasons']}" for r in failing.to_dict("records"))


__all__ = ["ROLES", "command_for", "main_metric_flag", "reliability_section"]
