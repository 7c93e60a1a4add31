"""Task ``synthetic``: ground-truth recovery and seed consistency on model organisms.

What is evaluated:

* a **recipe** (``kind = "recipe"``, ``recipe.trains_on = "synthetic"``, ``recipe.presets = [...]``)
  is trained by the runner on each preset with every listed seed (seeds differ in initialisation
  only; the data order is the same), all seeds as one batched module, through the one trained-SAE
  cache (:mod:`benchmark.training.cache`), before this task's clock starts;
* a **checkpoints** submission trained on data written by ``canonbench synthetic export PRESET``
  says which preset through its model name ``synthetic:<preset>`` (optionally ``@<version>``) or a
  tag ``preset:<preset>``; its SAEs are evaluated as they are.

Rows (``subset = "preset=<name>"``; per-seed GT-MCC rows use ``"preset=<name>,seed=<s>"``):
``gt_mcc`` (main; mean over seeds, std over seeds), ``decoder_pw_mcc`` (mean and std over seed pairs;
per-pair rows ``"preset=<name>,pair=<a>-<b>"``, as is ``shared_fraction``),
``gt_mcc_chance`` and ``chance_mcc`` (MCC of independent random unit dictionaries of the same
shapes), ``shared_fraction`` (the benchmark's one definition, :mod:`benchmark.metrics.seed_pairs`),
``gt_mean_max_cosine``, ``gt_recovered_fraction`` (true features whose best latent has cos > 0.9),
and on held-out samples ``l0``, ``explained_variance`` and ``never_fired_fraction``. Matching is
signed-cosine and one-to-one, averaged over the smaller dictionary (:mod:`benchmark.metrics.matching`).

Why GT-MCC is the main metric: on a model organism the truth is known, and recovering it is what
the benchmark wants to reward; PW-MCC is the proxy one must use on real models, and this task is
where its validity as a proxy is measured: the summary ``proxy_validity`` (stored by
``canonbench summarize``) correlates the two across submissions, and the reliability lens
(:mod:`tasks.reliability`) stores PW-MCC's validity against GT-MCC beside its noise and discriminability.

The task seed draws the chance baselines' random dictionaries (seed 0: the draws of version 2). Every
other number is a deterministic function of the SAEs and the preset's held-out data, so its
evaluation noise is exactly zero: all of its noise is training-seed noise.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from benchmark.errors import TaskError
from benchmark.metrics import definitions as defs
from benchmark.metrics.matching import chance_mcc, match_dictionaries, row_max_cosines
from benchmark.metrics.reconstruction import reconstruction_stats
from benchmark.metrics.seed_pairs import SHARED_THRESHOLD, compare_pair
from benchmark.metrics.stats import mean_std
from benchmark.results import MetricValue
from tasks import register_task
from tasks.base import ArtifactSpec, PlotSpec, SummarySpec, Task, TaskInputs, TaskMetadata, TaskOutput, UnitResources, metric_spec
from tasks.reliability import reliability_summaries
from tasks.citations import CHANIN_GARRIGA_ALONSO_2026, PAULO_BELROSE_2025, SONG_2025, join

log = logging.getLogger(__name__)

CHANCE_SEED = 20250526  # + 2·task seed (GT-MCC chance) and + 2·task seed + 1 (PW-MCC chance)
CITATION = join(SONG_2025, CHANIN_GARRIGA_ALONSO_2026, PAULO_BELROSE_2025)


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of the synthetic task (part of every run spec)."""

    eval_samples: int | None = None  # held-out samples for L0 / explained variance (None: the preset's own; --limit caps it)
    chance_trials: int = 5  # random dictionary pairs per chance baseline (1 above 4M cosine entries)
    recovered_threshold: float = 0.9  # a true feature counts as recovered when its best latent exceeds this cosine


METRICS = (
    metric_spec("gt_mcc", "MCC between the true dictionary and each seed's decoder (mean over seeds)", "higher", -1, 1, main=True),
    metric_spec("gt_mcc_chance", "GT-MCC of independent random unit dictionaries of the same shapes", "none", -1, 1),
    defs.DECODER_PW_MCC,
    defs.CHANCE_MCC,
    defs.SHARED_FRACTION,
    metric_spec("gt_mean_max_cosine", "Mean over true features of the best cosine with any latent", "higher", -1, 1),
    metric_spec("gt_recovered_fraction", "True features whose best latent has cos > 0.9", "higher", 0, 1),
    defs.L0,
    defs.EXPLAINED_VARIANCE,
    defs.NEVER_FIRED_FRACTION,
)


def evaluate_preset(saes: dict[int, Any], organism, *, device: str = "cpu", eval_samples: int | None = None,
                    chance_trials: int = 5, recovered_threshold: float = 0.9, task_seed: int = 0,
                    ) -> tuple[list[MetricValue], dict[str, pd.DataFrame]]:
    """All metrics of one preset for ``{seed: SAE}``; returns rows and drill-down tables.
    ``task_seed`` draws the chance baselines (the only randomness of the task)."""
    preset = organism.preset.name
    subset = f"preset={preset}"
    truth = organism.true_dictionary()
    seeds = sorted(saes)
    decoders = {s: saes[s].decoder_directions() for s in seeds}
    d_sae = {saes[s].d_sae for s in seeds}
    if len(d_sae) != 1 or any(saes[s].d_in != organism.d_in for s in seeds):
        raise TaskError(f"SAEs for {preset} must share one width and have d_in={organism.d_in}")
    width = d_sae.pop()
    x_eval = organism.eval_data(eval_samples)
    per_seed, features = [], []
    for s in seeds:
        match = match_dictionaries(truth, decoders[s], device=device)
        best = row_max_cosines(truth, decoders[s], device=device)
        stats = reconstruction_stats(saes[s], x_eval, device=device)
        per_seed.append({"preset": preset, "seed": s, "gt_mcc": match.value, "certified": match.certified,
                         "matching_kernel": match.kernel or "dense",
                         "gt_mean_max_cosine": float(best.mean()),
                         "gt_recovered_fraction": float((best > recovered_threshold).mean()), **stats})
        matched = np.full(organism.n_features, np.nan)
        matched[match.rows_a] = match.cosines
        features.append(pd.DataFrame({"preset": preset, "seed": s, "feature": np.arange(organism.n_features),
                                      "matched_cosine": matched, "best_cosine": best,
                                      "firing_probability": organism.firing_probabilities.numpy()}))
    seed_frame = pd.DataFrame(per_seed)
    trials = chance_trials if organism.n_features * width <= 4_000_000 else 1
    chance_gt = chance_mcc(organism.n_features, width, organism.d_in, seed=CHANCE_SEED + 2 * task_seed, trials=trials)
    chance_pw = chance_mcc(width, width, organism.d_in, seed=CHANCE_SEED + 2 * task_seed + 1, trials=trials)
    metrics: list[MetricValue] = []
    mean, std = mean_std(seed_frame["gt_mcc"])
    metrics.append(MetricValue("gt_mcc", mean, std=std, n=len(seeds), subset=subset,
                               extra={"chance": chance_gt.mean, "per_seed": dict(zip(map(str, seeds), seed_frame["gt_mcc"])),
                                      "averaged_over": "true features" if organism.n_features <= width else "latents",
                                      "certified": bool(seed_frame["certified"].all())}))
    for s, value in zip(seeds, seed_frame["gt_mcc"]):
        metrics.append(MetricValue("gt_mcc", float(value), n=1, subset=f"{subset},seed={s}"))
    metrics.append(MetricValue("gt_mcc_chance", chance_gt.mean, std=chance_gt.std if trials > 1 else None, n=trials,
                               subset=subset, extra={"shapes": [organism.n_features, width, organism.d_in]}))
    metrics.append(MetricValue("chance_mcc", chance_pw.mean, std=chance_pw.std if trials > 1 else None, n=trials,
                               subset=subset, extra={"shapes": [width, width, organism.d_in]}))
    pair_rows = []
    for a, b in itertools.combinations(seeds, 2):
        pair = compare_pair(a, saes[a], b, saes[b], device=device)
        kernels = sorted({m.kernel or "dense" for m in (pair.decoder, pair.encoder)})
        pair_rows.append({"preset": preset, "seed_a": a, "seed_b": b, "decoder_pw_mcc": pair.decoder.mcc,
                          "encoder_mcc": pair.encoder.mcc, "shared_fraction": float(pair.shared_a.mean()),
                          "matching_kernel": ",".join(kernels)})
    pairs = pd.DataFrame(pair_rows, columns=["preset", "seed_a", "seed_b", "decoder_pw_mcc", "encoder_mcc", "shared_fraction",
                                             "matching_kernel"])
    if len(pairs):
        for name in ("decoder_pw_mcc", "shared_fraction"):
            mean, std = mean_std(pairs[name])
            extra = {"chance": chance_pw.mean} if name == "decoder_pw_mcc" else {"threshold": SHARED_THRESHOLD}
            metrics.append(MetricValue(name, mean, std=std, n=len(pairs), subset=subset, extra=extra))
            for row in pairs.itertuples(index=False):
                metrics.append(MetricValue(name, float(getattr(row, name)), n=1, subset=f"{subset},pair={row.seed_a}-{row.seed_b}"))
    else:
        for name in ("decoder_pw_mcc", "shared_fraction"):
            metrics.append(MetricValue(name, None, subset=subset, note="needs at least two seeds"))
    for name in ("gt_mean_max_cosine", "gt_recovered_fraction", "l0", "explained_variance", "never_fired_fraction"):
        mean, std = mean_std(seed_frame[name])
        metrics.append(MetricValue(name, mean, std=std, n=len(seeds), subset=subset))
    return metrics, {"per_seed": seed_frame, "pairs": pairs, "features": pd.concat(features, ignore_index=True)}


@register_task
class SyntheticTask(Task):
    config_class = SyntheticConfig
    metadata = TaskMetadata(
        name="synthetic",
        version="3",
        title="Ground-truth recovery on model organisms",
        description=(
            "SAEs trained (recipes: by the benchmark, S seeds batched) on synthetic data with a known dictionary. "
            "GT-MCC: how well each seed recovers the true features; PW-MCC: how consistent seeds are; "
            "chance baselines beside both. Proxy validity (the correlation of PW-MCC with GT-MCC across "
            "submissions) is a stored summary of this task."
        ),
        metrics=METRICS,
        accepts=("recipe", "checkpoints"),
        min_seeds=1,
        needs_organisms=True,
        # small organisms; the recipes train before the unit (provisioning), the task matches small dictionaries
        resources=UnitResources(cpus=1.0, memory_gb=2.0, gpu=False),
        chance_metric="gt_mcc_chance",
        artifacts=(
            ArtifactSpec("per_seed", "one row per (preset, seed): GT-MCC, certification, max-cosine recovery, L0, "
                         "explained variance, never-fired fraction",
                         ("preset", "seed", "gt_mcc", "certified", "matching_kernel", "gt_mean_max_cosine",
                          "gt_recovered_fraction", "l0", "explained_variance", "never_fired_fraction")),
            ArtifactSpec("pairs", "one row per (preset, seed pair): decoder and encoder MCC and shared fraction",
                         ("preset", "seed_a", "seed_b", "decoder_pw_mcc", "encoder_mcc", "shared_fraction",
                          "matching_kernel")),
            ArtifactSpec("features", "one row per (preset, seed, true feature): matched and best cosine, firing probability",
                         ("preset", "seed", "feature", "matched_cosine", "best_cosine", "firing_probability")),
        ),
        plots=(
            PlotSpec("metric_pair", "gt-vs-pw", "gt_mcc vs decoder_pw_mcc (proxy check), by preset",
                     x_metric="decoder_pw_mcc", y_metric="gt_mcc", subset_prefix="preset=", diagonal=True,
                     x_range=(-1.0, 1.0), y_range=(-1.0, 1.0), note="Dashed line: y = x. Error bars: stored std."),
        ),
        summaries=(
            SummarySpec("proxy_validity", "1", "Does PW-MCC track GT-MCC?",
                        "Pearson and Spearman correlation of decoder_pw_mcc with gt_mcc across submissions, per preset, "
                        "for all submissions and per architecture (fewer than 3 submissions: not computed).",
                        ("preset", "group", "n", "pearson", "pearson_p", "spearman", "spearman_p", "submissions", "note"),
                        lambda rows: proxy_validity(rows)),
        ) + reliability_summaries(("gt_mcc", "decoder_pw_mcc", "chance_mcc"), validity={"decoder_pw_mcc": "gt_mcc"},
                                  ground_truth=("gt_mcc",)),
        citation=CITATION,
        references=(
            "https://arxiv.org/abs/2505.20254",
            "https://github.com/xiangchensong/sae-feature-consistency",
            "https://github.com/decoderesearch/SAELens (sae_lens.synthetic, SynthSAEBench)",
        ),
        superseded=("v2: the chance baselines ignored the task seed (every seed drew the same random dictionaries), and "
                    "decoder_pw_mcc and shared_fraction had no per-pair rows (the reliability lens needs them)",
                    "v1: pw_mcc, pw_mcc_chance and dead_fraction are now decoder_pw_mcc, chance_mcc and "
                    "never_fired_fraction (one meaning per name across tasks); shared_fraction now needs the same "
                    "partner in both assignments, as in cross-seed",),
    )

    @classmethod
    def not_applicable(cls, manifest) -> str | None:
        from benchmark.data.organisms import MODEL_PREFIX, TAG_PREFIX, submission_presets

        reason = super().not_applicable(manifest)
        if reason:
            return reason
        sub = manifest.submission
        if sub.kind == "recipe" and sub.recipe.trains_on != "synthetic":
            return "recipe trains on a model, not on a synthetic preset"
        if sub.kind == "checkpoints" and not submission_presets(manifest):
            return f"checkpoints not trained on a synthetic preset (model name '{MODEL_PREFIX}<preset>' or tag '{TAG_PREFIX}<preset>')"
        return None

    def run(self, inputs: TaskInputs) -> TaskOutput:
        cfg: SyntheticConfig = inputs.config
        metrics: list[MetricValue] = []
        artifacts: dict[str, list[pd.DataFrame]] = {}
        records: list[dict[str, Any]] = []
        hashes = []
        organisms = inputs.organisms or {}
        for name, prepared in organisms.items():
            organism = prepared.organism
            hashes.append(organism.data_hash)
            records += prepared.records
            eval_n = cfg.eval_samples
            if inputs.limit:
                eval_n = min(inputs.limit, eval_n or organism.preset.eval_samples)
            rows, tables = evaluate_preset(prepared.saes, organism, device=inputs.device, eval_samples=eval_n,
                                           chance_trials=cfg.chance_trials, recovered_threshold=cfg.recovered_threshold,
                                           task_seed=inputs.seed)
            metrics += rows
            for table_name, table in tables.items():
                artifacts.setdefault(table_name, []).append(table)
        presets = [p.organism.preset for p in organisms.values()]
        provenance: dict[str, Any] = {
            "model": ",".join(f"synthetic:{p.name}" for p in presets),
            "model_revision": ",".join(f"{p.name}@{p.version}:{p.key}" for p in presets),
            "hook": "x",
        }
        if records:
            provenance["checkpoints"] = records
        # kernels the exact matcher chose at run time (self-check and timing on this machine)
        kernels = {k for table in artifacts.get("per_seed", []) + artifacts.get("pairs", [])
                   for cell in table["matching_kernel"] for k in str(cell).split(",")}
        provenance["matching_kernels"] = sorted(kernels)
        data_hash = hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()[:16]
        return TaskOutput(metrics=metrics, artifacts={k: pd.concat(v, ignore_index=True) for k, v in artifacts.items()},
                          data_hash=data_hash, provenance=provenance)


# --- proxy validity (a declared summary) ------------------------------------------------------------
def proxy_validity(results: pd.DataFrame, *, min_points: int = 3) -> pd.DataFrame:
    """Does PW-MCC track GT-MCC? Correlations across submissions, per preset, from stored rows.

    Takes the results table (``ResultStore.read()``), keeps the ``synthetic`` task's per-preset
    ``decoder_pw_mcc`` and ``gt_mcc`` rows (the newest row of each submission × metric × preset) and returns,
    per preset, one row for all submissions together (``group="all"``) and one per architecture
    (e.g. a sparsity sweep of one architecture), each with ``n`` (submissions), ``pearson``,
    ``spearman`` and their two-sided p-values. Groups with fewer than ``min_points`` submissions, or
    where either metric is constant, get NaN correlations and a ``note``. A pure function of the table.
    """
    from scipy import stats

    columns = ["preset", "group", "n", "pearson", "pearson_p", "spearman", "spearman_p", "submissions", "note"]
    if results is None or len(results) == 0:
        return pd.DataFrame(columns=columns)
    frame = results[(results["task"] == "synthetic") & results["metric"].isin(["decoder_pw_mcc", "gt_mcc"])].copy()
    frame = frame[frame["subset"].astype(str).str.match(r"^preset=[^,]+$") & frame["value"].notna()]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    frame["preset"] = frame["subset"].astype(str).str.slice(len("preset="))
    frame = frame.sort_values("timestamp").groupby(["submission", "metric", "preset"], as_index=False).last()
    wide = frame.pivot_table(index=["preset", "submission", "architecture"], columns="metric", values="value", aggfunc="last",
                             dropna=False).reset_index()
    wide = wide.dropna(subset=["decoder_pw_mcc", "gt_mcc"]) if {"decoder_pw_mcc", "gt_mcc"} <= set(wide.columns) else wide.iloc[0:0]
    out = []
    for preset, group_frame in wide.groupby("preset"):
        groups = [("all", group_frame)] + [(f"architecture={a}", g) for a, g in group_frame.groupby("architecture")]
        for name, g in groups:
            pw, gt = g["decoder_pw_mcc"].astype(float).to_numpy(), g["gt_mcc"].astype(float).to_numpy()
            row = {"preset": preset, "group": name, "n": len(g), "submissions": ",".join(sorted(g["submission"])),
                   "pearson": np.nan, "pearson_p": np.nan, "spearman": np.nan, "spearman_p": np.nan, "note": ""}
            if len(g) < min_points:
                row["note"] = f"fewer than {min_points} submissions"
            elif np.ptp(pw) == 0 or np.ptp(gt) == 0:
                row["note"] = "a metric is constant across submissions"
            else:
                pearson = stats.pearsonr(pw, gt)
                spearman = stats.spearmanr(pw, gt)
                row.update(pearson=float(pearson[0]), pearson_p=float(pearson[1]),
                           spearman=float(spearman[0]), spearman_p=float(spearman[1]))
            out.append(row)
    return pd.DataFrame(out, columns=columns)
