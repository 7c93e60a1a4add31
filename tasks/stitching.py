"""Task ``stitching``: are SAEs complete? Does a wider SAE only refine a narrower one, or find new latents?

Input: a submission's **width ladder** (``recipe.widths``, or checkpoints that declare a ``width``;
see :mod:`benchmark.submission.manifest`): SAEs of two or more widths on the same model and hook.
Each *rung* is two consecutive widths; within a rung the narrow and wide SAE of the same training
seed are stitched (every narrow × wide seed when the widths share no seed).

Per rung and seed (:func:`benchmark.metrics.stitching.stitch_rung`, Leask et al. 2025):

* the **insertion test** on held-out inputs: each latent of the wider SAE is added to the narrower
  one; it is *novel* when the reconstruction error falls, a *reconstruction* latent when it rises or
  stays (a latent keeps the activation it has in its own SAE; see the kernel's docstring);
* the cheap **max-cosine proxy** (best decoder cosine with any narrower latent): its ROC AUC for the
  novel latents and its agreement with the insertion test at thresholds 0.5-0.9;
* the **stitched curve**: the fraction of variance unexplained as novel latents are inserted and
  groups of reconstruction latents are swapped for their parents, from the narrow SAE to the wide one,
  and whether it is monotone;
* the ``stitch_*`` comparisons of the two dictionaries that cross-seed reported for unequal widths
  until its version 3 (one-to-one decoder and encoder matching, shared latents, max cosines).

Inputs: a synthetic organism's held-out samples (recipes on presets, or checkpoints trained on an
exported preset), where ground truth also says whether novel latents are the true features the
narrower SAE missed; else a token sample of the model's corpus activations.

**Why the unit is one submission (choice).** A rung compares SAEs that must share model, hook and
training data; a ladder inside one manifest states that once, and the unit's identity (its inputs
fingerprint) covers every width. To stitch two existing submissions, write a ladder manifest that
lists both's checkpoints (each with its ``width``): the same pinned files, one unit, no unit that
depends on another submission's inputs.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmark.data.activations import sample_token_rows
from benchmark.errors import TaskError
from benchmark.metrics.seed_pairs import chance_baseline, compare_pair
from benchmark.metrics.stats import mean_std, pair_summary
from benchmark.metrics.stitching import PROXY_THRESHOLDS, ground_truth_novelty, proxy_agreement, proxy_auc, stitch_rung
from benchmark.results import MetricValue
from tasks import register_task
from tasks.base import ArtifactSpec, PlotSpec, Task, TaskInputs, TaskMetadata, TaskOutput, UnitResources, metric_spec
from tasks.citations import LEASK_2025, PAULO_BELROSE_2025, SONG_2025, join
from tasks.reliability import reliability_summaries

log = logging.getLogger(__name__)

DEFAULT_INPUTS = 16_384


@dataclass(frozen=True)
class StitchingConfig:
    """Settings of the stitching task (part of every run spec)."""

    n_inputs: int = DEFAULT_INPUTS  # held-out inputs (organism eval samples or corpus tokens); --limit caps it
    group_threshold: float = 0.7  # decoder cosine above which a reconstruction latent and a narrow latent are linked
    proxy_threshold: float = 0.7  # the max-cosine proxy calls a latent novel below this (Leask et al.'s value)
    max_curve_points: int = 1024  # stitching steps at which the curve is evaluated (every step when fewer)
    curve_grid: int = 33  # points per rung of the stitched_curve artifact (seeds interpolated onto one grid)
    gt_threshold: float = 0.9  # organisms: a latent matches a true feature, and an SAE recovers it, above this cosine


METRICS = (
    metric_spec("novel_fraction", "fraction of the wider SAE's latents whose insertion into the narrower SAE lowers "
                "its reconstruction error on held-out inputs (Leask et al.'s novel latents; mean over rungs and seeds)",
                "none", 0, 1, main=True),
    metric_spec("novel_max_cosine", "mean best decoder cosine of novel latents with any narrower latent", "none", -1, 1),
    metric_spec("reconstruction_max_cosine", "mean best decoder cosine of reconstruction (non-novel) latents with any "
                "narrower latent", "none", -1, 1),
    metric_spec("proxy_auc", "ROC AUC of 1 - max decoder cosine for the insertion test's novel latents (how well the "
                "cheap proxy finds them)", "higher", 0, 1),
    metric_spec("proxy_agreement", "fraction of wider latents where the max-cosine proxy (novel below a threshold; "
                "subset threshold=t, else the configured threshold) agrees with the insertion test", "higher", 0, 1),
    metric_spec("stitched_monotone", "fraction of stitched curves (rung x seed) whose reconstruction error never rises "
                "from the narrow SAE to the wide one", "higher", 0, 1),
    metric_spec("stitched_max_increase", "largest rise of the fraction of variance unexplained between consecutive "
                "points of a stitched curve (mean over curves; 0 when monotone)", "lower", 0, None),
    metric_spec("novel_share_of_gain", "share of the narrow-to-wide drop in unexplained variance delivered by "
                "inserting the novel latents alone", "none", None, None),
    metric_spec("novel_gt_missed", "organisms: fraction of novel latents matching a true feature (cosine >= gt_threshold, "
                "default 0.9) whose feature no narrower latent reaches that cosine with", "higher", 0, 1),
    metric_spec("reconstruction_gt_missed", "organisms: the same fraction for reconstruction latents", "lower", 0, 1),
    metric_spec("stitch_decoder_mcc", "ladder rung: mean matched decoder cosine over the narrower SAE's latents "
                "(one-to-one)", "higher", -1, 1),
    metric_spec("stitch_encoder_mcc", "ladder rung: the same for encoder directions", "higher", -1, 1),
    metric_spec("stitch_shared_fraction", "ladder rung: fraction of the narrower SAE's latents matched to the same "
                "wider latent by decoder and encoder, both with cosine > 0.7", "higher", 0, 1),
    metric_spec("stitch_shared_fraction_decoder", "ladder rung: fraction of the narrower SAE's latents whose decoder "
                "match has cosine > 0.7", "higher", 0, 1),
    metric_spec("stitch_max_cosine_large_to_small", "ladder rung: mean best decoder cosine of the wider SAE's latents "
                "with the narrower's (low = novel latents, Leask et al.)", "none", -1, 1),
    metric_spec("stitch_max_cosine_small_to_large", "ladder rung: mean best decoder cosine of the narrower SAE's "
                "latents with the wider's", "higher", -1, 1),
    metric_spec("stitch_activation_correlation", "ladder rung: mean Pearson correlation of decoder-matched latents' "
                "activations on the held-out inputs", "higher", -1, 1),
    metric_spec("stitch_chance_mcc", "ladder rung: MCC of independent random unit dictionaries of the two widths",
                "none", -1, 1),
)

LATENT_COLUMNS = ("source", "narrow_width", "wide_width", "seed_narrow", "seed_wide", "latent", "insertion_delta_mse",
                  "novel", "max_cosine", "parent", "group", "step", "firing_frequency", "gt_match", "gt_missed")
STEP_COLUMNS = ("source", "narrow_width", "wide_width", "seed_narrow", "seed_wide", "step", "phase", "moved",
                "wide_latents", "narrow_latents", "l0", "isolated_delta_mse", "fvu")
CURVE_COLUMNS = ("source", "narrow_width", "wide_width", "progress", "log2_width", "fvu", "fvu_std", "n")


@dataclass
class _Rung:
    """One stitched pair and what was computed for it."""

    source: str
    seed_narrow: int
    seed_wide: int
    result: Any  # RungResult
    pair: Any  # PairResult (narrow = side A)
    gt_match: np.ndarray | None = None
    gt_missed: np.ndarray | None = None

    @property
    def widths(self) -> tuple[int, int]:
        return self.result.narrow_width, self.result.wide_width


def rung_seed_pairs(narrow: dict[int, Any], wide: dict[int, Any]) -> list[tuple[int, int]]:
    """Seeds stitched within a rung: the shared seeds, else every narrow × wide pair."""
    shared = sorted(set(narrow) & set(wide))
    if shared:
        return [(s, s) for s in shared]
    return list(itertools.product(sorted(narrow), sorted(wide)))


def stitch_ladder(ladder: dict[int, dict[int, Any]], x: torch.Tensor, cfg: StitchingConfig, *, source: str,
                  truth: torch.Tensor | None = None, device: str = "cpu") -> list[_Rung]:
    """Every rung × seed pair of ``ladder`` ``{width: {seed: SAE}}`` stitched on inputs ``x``."""
    widths = sorted(ladder)
    if len(widths) < 2:
        raise TaskError(f"stitching needs SAEs of at least two widths, got {widths}", field="recipe.widths")
    out = []
    for w_small, w_large in zip(widths, widths[1:]):
        for s_small, s_large in rung_seed_pairs(ladder[w_small], ladder[w_large]):
            narrow, wide = ladder[w_small][s_small], ladder[w_large][s_large]
            pair = compare_pair(s_small, narrow, s_large, wide, device=device)
            result = stitch_rung(narrow, wide, x, group_threshold=cfg.group_threshold, max_points=cfg.max_curve_points,
                                 partner=pair.decoder.partner_a)
            rung = _Rung(source, s_small, s_large, result, pair)
            if truth is not None:
                rung.gt_match, rung.gt_missed = ground_truth_novelty(
                    wide.decoder_directions(), narrow.decoder_directions(), truth, cfg.gt_threshold)
            log.info("%s: %dx%d seeds %s/%s: %.1f%% novel, FVU %.4f -> %.4f", source, w_small, w_large, s_small, s_large,
                     100 * result.novel_fraction, result.fvu_narrow, result.fvu_wide)
            out.append(rung)
    return out


# --------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------
def _label(rung: _Rung) -> str:
    return f"{rung.seed_narrow}-{rung.seed_wide}"


def _scalar(name: str, values: list[float | None], *, subset: str, note: str, extra: dict | None = None) -> MetricValue:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return MetricValue(name, None, subset=subset, note=note)
    mean, std = mean_std(finite)
    return MetricValue(name, mean, std=std, n=len(finite), subset=subset,
                       extra={"spread": "std over stitched pairs (rung x seed)", **(extra or {})})


def rung_metrics(rungs: list[_Rung], cfg: StitchingConfig, *, subset: str, seed: int) -> list[MetricValue]:
    """The metrics of a set of stitched pairs (a rung, a source, or everything)."""
    results = [r.result for r in rungs]
    labels = [f"{r.widths[0]}x{r.widths[1]}:{_label(r)}" for r in rungs]
    info = {"pairs": labels, "widths": sorted({w for r in rungs for w in r.widths})}
    rows = [pair_summary("novel_fraction", [res.novel.astype(float) for res in results], seed=seed, subset=subset,
                         extra={**info, "fvu_narrow": [res.fvu_narrow for res in results],
                                "fvu_wide": [res.fvu_wide for res in results],
                                "n_inputs": results[0].n_inputs,
                                "per_pair": {lab: res.novel_fraction for lab, res in zip(labels, results)}})]
    for name, pick in (("novel_max_cosine", lambda res: res.max_cosine[res.novel]),
                       ("reconstruction_max_cosine", lambda res: res.max_cosine[~res.novel])):
        parts = [pick(res) for res in results]
        if any(len(p) for p in parts):
            rows.append(pair_summary(name, [p for p in parts if len(p)], seed=seed, subset=subset, extra=info))
        else:
            rows.append(MetricValue(name, None, subset=subset, note="no latent of this kind"))
    rows.append(_scalar("proxy_auc", [proxy_auc(res.max_cosine, res.novel) for res in results], subset=subset,
                        note="every wider latent is of one kind, so the proxy cannot be scored", extra=info))
    rows.append(_scalar("proxy_agreement", [proxy_agreement(res.max_cosine, res.novel, cfg.proxy_threshold) for res in results],
                        subset=subset, note="no pairs", extra={**info, "threshold": cfg.proxy_threshold}))
    rows.append(_scalar("stitched_monotone", [float(res.monotone) for res in results], subset=subset, note="no pairs",
                        extra={**info, "curve_points": [res.extra["curve_points"] for res in results],
                               "steps": [res.extra["steps"] for res in results]}))
    rows.append(_scalar("stitched_max_increase", [res.max_increase for res in results], subset=subset, note="no pairs",
                        extra=info))
    rows.append(_scalar("novel_share_of_gain", [res.novel_share_of_gain for res in results], subset=subset,
                        note="the wider SAE reconstructs no better than the narrower one", extra=info))
    gt = [r for r in rungs if r.gt_match is not None]
    if gt:
        for name, kind in (("novel_gt_missed", True), ("reconstruction_gt_missed", False)):
            parts = [r.gt_missed[(r.result.novel == kind) & r.gt_match].astype(float) for r in gt]
            parts = [p for p in parts if len(p)]
            if parts:
                rows.append(pair_summary(name, parts, seed=seed, subset=subset,
                                         extra={**info, "gt_threshold": cfg.gt_threshold,
                                                "matched_latents": int(sum(len(p) for p in parts))}))
            else:
                rows.append(MetricValue(name, None, subset=subset, note=f"no latent of this kind matches a true feature "
                                        f"(cos >= {cfg.gt_threshold})"))
    per_latent = [r.pair.per_latent() for r in rungs]
    for key, name in (("decoder_mcc", "stitch_decoder_mcc"), ("encoder_mcc", "stitch_encoder_mcc"),
                      ("shared_fraction", "stitch_shared_fraction"), ("shared_fraction_decoder", "stitch_shared_fraction_decoder"),
                      ("max_cosine_large_to_small", "stitch_max_cosine_large_to_small"),
                      ("max_cosine_small_to_large", "stitch_max_cosine_small_to_large")):
        rows.append(pair_summary(name, [pl[key] for pl in per_latent], seed=seed, subset=subset, extra=info))
    correlations = [r.result.matched_activation_correlation for r in rungs]
    correlations = [c[r.pair.decoder.partner_a >= 0] for c, r in zip(correlations, rungs) if c is not None]
    rows.append(pair_summary("stitch_activation_correlation", correlations, seed=seed, subset=subset, extra=info))
    return rows


def chance_rows(rungs: list[_Rung], *, subset_of, seed: int, device: str) -> list[MetricValue]:
    rows = []
    for (source, widths), group in itertools.groupby(sorted(rungs, key=lambda r: (r.source, r.widths)),
                                                     key=lambda r: (r.source, r.widths)):
        d = next(group).result.extra.get("d_in")
        mean, std, trials = chance_baseline(widths[0], widths[1], d, seed=seed, device=device)
        rows.append(MetricValue("stitch_chance_mcc", mean, std=std, n=trials, subset=subset_of(source, widths),
                                extra={"shape": [widths[0], widths[1], d], "trials": trials}))
    return rows


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------
def latent_table(rungs: list[_Rung]) -> pd.DataFrame:
    frames = []
    for r in rungs:
        res = r.result
        m = res.wide_width
        frames.append(pd.DataFrame({
            "source": r.source, "narrow_width": np.int64(res.narrow_width), "wide_width": np.int64(m),
            "seed_narrow": np.int64(r.seed_narrow), "seed_wide": np.int64(r.seed_wide),
            "latent": np.arange(m, dtype=np.int64), "insertion_delta_mse": res.insertion_delta,
            "novel": res.novel.astype(bool), "max_cosine": res.max_cosine, "parent": res.parent.astype(np.int64),
            "group": res.group.astype(np.int64), "step": res.step_wide.astype(np.int64), "firing_frequency": res.frequency,
            "gt_match": r.gt_match if r.gt_match is not None else np.zeros(m, dtype=bool),
            "gt_missed": r.gt_missed if r.gt_missed is not None else np.zeros(m, dtype=bool),
        }))
    return pd.concat(frames, ignore_index=True)[list(LATENT_COLUMNS)]


def steps_table(rungs: list[_Rung]) -> pd.DataFrame:
    frames = []
    for r in rungs:
        frame = r.result.steps.copy()
        frame.insert(0, "seed_wide", np.int64(r.seed_wide))
        frame.insert(0, "seed_narrow", np.int64(r.seed_narrow))
        frame.insert(0, "wide_width", np.int64(r.result.wide_width))
        frame.insert(0, "narrow_width", np.int64(r.result.narrow_width))
        frame.insert(0, "source", r.source)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)[list(STEP_COLUMNS)]


def curve_table(rungs: list[_Rung], grid_points: int) -> pd.DataFrame:
    """The stitched curve per rung, each pair's FVU interpolated onto ``grid_points`` evenly spread
    values of progress (step / steps) and averaged; ``log2_width`` places rungs of a ladder end to end."""
    grid = np.linspace(0.0, 1.0, max(grid_points, 2))
    rows = []
    key = lambda r: (r.source, r.widths)  # noqa: E731
    for (source, (small, large)), group in itertools.groupby(sorted(rungs, key=key), key=key):
        curves = []
        for r in group:
            steps = r.result.steps
            progress = steps["step"].to_numpy() / max(int(r.result.extra["steps"]), 1)
            curves.append(np.interp(grid, progress, steps["fvu"].to_numpy()))
        stack = np.vstack(curves)
        std = stack.std(axis=0, ddof=1) if len(curves) > 1 else np.full(len(grid), np.nan)
        for g, mean, spread in zip(grid, stack.mean(axis=0), std):
            rows.append({"source": source, "narrow_width": small, "wide_width": large, "progress": float(g),
                         "log2_width": math.log2(small) + float(g) * (math.log2(large) - math.log2(small)),
                         "fvu": float(mean), "fvu_std": float(spread), "n": len(curves)})
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


# --------------------------------------------------------------------------------------------
# the task
# --------------------------------------------------------------------------------------------
@register_task
class StitchingTask(Task):
    config_class = StitchingConfig
    metadata = TaskMetadata(
        name="stitching",
        version="1",
        title="Completeness: stitching SAEs of different widths",
        description=(
            "Does a wider SAE only refine what a narrower one has, or find new things? For each rung of a "
            "submission's width ladder, every latent of the wider SAE is inserted into the narrower one on held-out "
            "inputs: novel when the reconstruction error falls, a reconstruction latent otherwise (Leask et al. 2025). "
            "Also: how well the cheap max-decoder-cosine proxy predicts the test, and the stitched curve of "
            "unexplained variance from the narrow SAE to the wide one (novel latents inserted, groups of reconstruction "
            "latents swapped for their parents). Anchor: about 35% novel latents when the width doubles (GPT-2)."
        ),
        metrics=METRICS,
        accepts=("checkpoints", "recipe"),
        min_seeds=1,
        needs_ladder=True,
        needs_organisms=True,
        uses_activations=True,
        # every width's SAEs, a held-out sample (16k inputs), one-to-one matching per rung (cross-seed's kernel on the
        # device) and the insertion test and curve on the CPU in float64 (sparse; bounded blocks)
        resources=UnitResources(cpus=1.0, memory_gb=8.0, gpu=True, gpu_share=0.25),
        artifacts=(
            ArtifactSpec("latents", "one row per (rung, seed pair, wider latent): insertion change of the mean squared "
                         "error, novel flag, max cosine, parent, swap group, stitching step, firing frequency, "
                         "ground-truth match",
                         LATENT_COLUMNS),
            ArtifactSpec("steps", "one row per evaluated stitching step: what moved, dictionary sizes, L0, the step's "
                         "isolated effect and the unexplained variance", STEP_COLUMNS),
            ArtifactSpec("stitched_curve", "unexplained variance along each rung's stitching, mean over seed pairs on a "
                         "common progress grid; log2_width places the rungs end to end", CURVE_COLUMNS),
        ),
        plots=(
            PlotSpec("artifact_curve", "stitched-curve", "Stitched curve: unexplained variance from narrow to wide",
                     artifact="stitched_curve", x="log2_width", y="fvu", x_label="log2 width (stitching progress between rungs)",
                     y_label="fraction of variance unexplained", y_range=(0.0, None),
                     note="Each rung runs from its narrow SAE (left) to its wide SAE (right): novel latents first, then "
                          "swap groups; mean over seed pairs."),
        ),
        summaries=reliability_summaries(("novel_fraction", "proxy_auc", "stitched_monotone")),
        citation=join(LEASK_2025, SONG_2025, PAULO_BELROSE_2025),
        references=("https://arxiv.org/abs/2502.04878",
                    "https://www.lesswrong.com/posts/baJyjpktzmcmRfosq/stitching-saes-of-different-sizes"),
        notes=(
            "A latent moved between SAEs keeps the activation it has in its own SAE (so TopK and BatchTopK SAEs stitch "
            "too); for ReLU SAEs this is Leask et al.'s insertion up to the pre-encoder bias.",
            "Model recipes train on the benchmark's corpus and are evaluated on a sample of the same tokens (the corpus "
            "has no held-out split); synthetic presets are evaluated on their held-out split.",
            "Stitch order (choice): novel latents by insertion effect, then swap groups (connected components of "
            "reconstruction latents, their most similar narrow latent and narrow latents above the group threshold) "
            "and narrow latents without a child by their isolated effect; a last step swaps the decoder bias.",
        ),
    )

    @classmethod
    def not_applicable(cls, manifest) -> str | None:
        reason = super().not_applicable(manifest)
        if reason:
            return reason
        widths = manifest.submission.ladder_widths
        if len(widths) < 2:
            return (f"declares one width ({widths[0]}); stitching needs a width ladder "
                    "(recipe.widths, or checkpoints that declare a width)")
        return None

    def run(self, inputs: TaskInputs) -> TaskOutput:
        cfg: StitchingConfig = inputs.config
        n_inputs = min(cfg.n_inputs, inputs.limit) if inputs.limit else cfg.n_inputs
        rungs: list[_Rung] = []
        hashes: list[str] = []
        records: list[dict[str, Any]] = []
        sources: list[str] = []
        organisms = inputs.organisms or {}
        for name, prepared in organisms.items():
            organism = prepared.organism
            if prepared.ladder is None:
                raise TaskError("the runner prepared no width ladder for this organism", field="recipe.widths")
            n = min(n_inputs, organism.preset.eval_samples)
            rungs += stitch_ladder(prepared.ladder, organism.eval_data(n), cfg, source=f"preset={name}",
                                   truth=organism.true_dictionary(), device=inputs.device)
            hashes.append(organism.data_hash)
            records += prepared.ladder_records
            sources.append(f"preset={name}")
        if not organisms:
            if inputs.ladder is None:
                raise TaskError("the runner prepared no width ladder", field="checkpoints")
            provider = inputs.activations
            if provider is None:
                raise TaskError("stitching needs held-out inputs: the submission's model activations were not prepared "
                                "(was --no-activations given?)", field="model")
            acts = provider.activations() if callable(getattr(provider, "activations", None)) else provider
            rows = sample_token_rows(int(acts.shape[0]), n_inputs, seed=inputs.seed)
            x = torch.as_tensor(np.asarray(acts[torch.as_tensor(rows)] if isinstance(acts, torch.Tensor) else acts[rows]))
            rungs += stitch_ladder(inputs.ladder, x.float(), cfg, source="model", device=inputs.device)
            hashes.append(str(getattr(provider, "key", "")))
            sources.append("model")

        single = len(sources) == 1

        def subset_of(source: str, widths: tuple[int, int] | None = None) -> str:
            parts = [] if single else [source]
            if widths is not None:
                parts.append(f"widths={widths[0]}x{widths[1]}")
            return ",".join(parts) or "all"

        metrics = rung_metrics(rungs, cfg, subset="all", seed=inputs.seed)
        for source in sources:
            of_source = [r for r in rungs if r.source == source]
            if not single:
                metrics += rung_metrics(of_source, cfg, subset=subset_of(source), seed=inputs.seed)
            for widths in sorted({r.widths for r in of_source}):
                metrics += rung_metrics([r for r in of_source if r.widths == widths], cfg,
                                        subset=subset_of(source, widths), seed=inputs.seed)
        for threshold in PROXY_THRESHOLDS:
            metrics.append(_scalar("proxy_agreement", [proxy_agreement(r.result.max_cosine, r.result.novel, threshold)
                                                       for r in rungs], subset=f"threshold={threshold:g}", note="no pairs"))
        metrics += chance_rows(rungs, subset_of=subset_of, seed=inputs.seed, device=inputs.device)
        data_hash = hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()[:16]
        provenance: dict[str, Any] = {}
        if records:
            provenance["checkpoints"] = records
        return TaskOutput(
            metrics=metrics,
            artifacts={"latents": latent_table(rungs), "steps": steps_table(rungs),
                       "stitched_curve": curve_table(rungs, cfg.curve_grid)},
            data_hash=data_hash or None, provenance=provenance,
        )
