"""Task ``meta-sae``: are SAE latents atomic, or combinations of other latents?

A BatchTopK *meta-SAE* is trained on the decoder rows of each SAE (Leask et al. 2025), with SAEBench's
``meta_structure`` settings as the comparable default: meta width 0.25 × the SAE's live latents, k = 4,
1,500 Adam steps (lr 5e-4) of 1,024 rows drawn with replacement. Several meta-seeds (different
initialisations) train as one batched module (:mod:`benchmark.metrics.meta_sae`, the benchmark's own
trainer); trained meta-SAEs are kept in the task cache, keyed by the decoder rows and the settings.

Metrics (subset ``all``: the submission's primary width; ``width=<w>``: each width of a width ladder):

* ``meta_variance_explained`` (main): the fraction of the decoder rows' variance the meta-SAE
  reconstructs; mean over SAE seeds × meta-seeds, spread over meta-seeds;
* ``meta_l0``: mean active meta-latents per decoder row;
* **are decompositions consistent across training seeds?** For latents of two SAE seeds matched
  one-to-one by decoder cosine (the cross-seed matching), the cosine between their meta-codes, with the
  second seed's meta-latents re-indexed by a one-to-one matching of the two meta-decoders
  (``meta_code_similarity_matched``), against the same for random pairs of latents
  (``meta_code_similarity_unmatched``); ``meta_dictionary_mcc``: how alike the two meta-dictionaries are;
* on a synthetic organism with a feature hierarchy: ``meta_parent_recovery``, the best cosine of each
  planted parent feature with any meta-latent, against ``meta_control_recovery`` for features outside
  the hierarchy with the parents' range of firing probabilities.

Cost (choice): meta-SAEs are trained for the first ``sae_seeds`` seeds of the primary width (two, the
fewest the consistency metric needs) and the first ``ladder_seeds`` seed of every other ladder width.
The task applies to published checkpoints and to width ladders; a single-width *recipe* is skipped,
because at the comparable setting its meta-SAEs cost more on a CPU than training the recipe itself
(the benchmark's reference recipes are deliberately small).
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

from benchmark.errors import TaskError
from benchmark.metrics.meta_sae import MetaFit, MetaSAESettings, code_similarity, derived_seed, fit_meta_saes, parent_recovery
from benchmark.metrics.seed_pairs import match_rows
from benchmark.metrics.stats import mean_std
from benchmark.results import MetricValue
from tasks import register_task
from tasks.base import ArtifactSpec, PlotSpec, Task, TaskInputs, TaskMetadata, TaskOutput, UnitResources, metric_spec
from tasks.citations import KARVONEN_2025, LEASK_2025, join
from tasks.reliability import reliability_summaries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetaSAEConfig:
    """Settings of the meta-sae task (part of every run spec); defaults: SAEBench's meta_structure."""

    width_ratio: float = 0.25  # meta-SAE width as a fraction of the SAE's live latents
    k: int = 4  # mean active meta-latents per row (BatchTopK)
    steps: int = 1500  # Adam steps (a --limit preview trains at most that many)
    batch_rows: int = 1024  # decoder rows per step, drawn with replacement
    lr: float = 5e-4
    meta_seeds: int = 3  # meta-SAE initialisations per SAE (one meta-seed is noisy)
    sae_seeds: int = 2  # SAE seeds of the primary width given meta-SAEs (at least 2 for the consistency metric)
    ladder_seeds: int = 1  # SAE seeds of every other ladder width given meta-SAEs
    shared_threshold: float = 0.7  # the consistency metric is also reported over matched latents above this cosine


METRICS = (
    metric_spec("meta_variance_explained", "fraction of the variance of the SAE's unit decoder rows reconstructed by a "
                "BatchTopK meta-SAE trained on them (mean over SAE seeds and meta-seeds; Leask et al., SAEBench)",
                "none", None, 1, main=True),
    metric_spec("meta_l0", "mean number of active meta-latents per decoder row", "none", 0, None, unit="meta-latents"),
    metric_spec("meta_code_similarity_matched", "cosine between the meta-codes of latents of two SAE seeds matched by "
                "decoder cosine, meta-latents re-indexed by matching the two meta-decoders", "higher", 0, 1),
    metric_spec("meta_code_similarity_unmatched", "the same for random pairs of latents of the two seeds (baseline)",
                "none", 0, 1),
    metric_spec("meta_dictionary_mcc", "MCC (one-to-one signed decoder cosine) between the meta-SAEs of two SAE seeds",
                "higher", -1, 1),
    metric_spec("meta_parent_recovery", "organisms: mean over planted parent features of their best cosine with any "
                "meta-latent decoder row", "higher", -1, 1),
    metric_spec("meta_control_recovery", "organisms: the same for features outside the hierarchy with the parents' "
                "range of firing probabilities (baseline)", "none", -1, 1),
)

FIT_COLUMNS = ("source", "width", "seed", "meta_seed", "rows", "meta_width", "variance_explained",
               "variance_explained_batch", "l0", "train_s")
LATENT_COLUMNS = ("source", "width", "seed", "latent", "meta_seed", "active_meta_latents", "top_meta_latent",
                  "top_meta_activation", "matched_latent", "code_similarity")


@dataclass
class _Fits:
    source: str
    width: int
    seed: int
    fits: list[MetaFit]
    alive: np.ndarray
    sae: Any


def settings_of(cfg: MetaSAEConfig, limit: int | None) -> MetaSAESettings:
    steps = min(cfg.steps, limit) if limit else cfg.steps
    return MetaSAESettings(width_ratio=cfg.width_ratio, k=cfg.k, steps=steps, batch_rows=cfg.batch_rows, lr=cfg.lr)


def chosen_seeds(ladder: dict[int, dict[int, Any]], primary: int, cfg: MetaSAEConfig) -> dict[int, list[int]]:
    """``{width: seeds}`` given meta-SAEs (module docstring)."""
    return {w: sorted(saes)[: (cfg.sae_seeds if w == primary else cfg.ladder_seeds)] for w, saes in ladder.items()}


def fit_ladder(ladder: dict[int, dict[int, Any]], primary: int, cfg: MetaSAEConfig, settings: MetaSAESettings, *,
               task_seed: int, source: str, device: str, quiet: bool, cache: Any) -> list[_Fits]:
    from tqdm.auto import tqdm

    meta_seeds = [derived_seed(task_seed, "meta-seed", i) for i in range(cfg.meta_seeds)]
    jobs = [(w, s) for w, seeds in sorted(chosen_seeds(ladder, primary, cfg).items()) for s in seeds]
    out = []
    for width, seed in tqdm(jobs, desc="meta-SAEs", disable=quiet, unit="SAE"):
        sae = ladder[width][seed]
        fits, alive = fit_meta_saes(sae, settings, meta_seeds, data_seed=derived_seed(task_seed, "rows", width, seed),
                                    device=device, quiet=True, cache=cache)
        log.info("%s width %d seed %d: variance explained %s", source, width, seed,
                 ", ".join(f"{f.variance_explained:.4f}" for f in fits))
        out.append(_Fits(source, width, seed, fits, alive, sae))
    return out


def _pooled(groups: list[list[float]]) -> tuple[float, float | None, float | None]:
    """(mean of all values, pooled within-group std (ddof=1), std of the group means)."""
    values = [v for g in groups for v in g]
    within = [np.var(g, ddof=1) for g in groups if len(g) > 1]
    means = [float(np.mean(g)) for g in groups]
    return (float(np.mean(values)), float(math.sqrt(np.mean(within))) if within else None,
            float(np.std(means, ddof=1)) if len(means) > 1 else None)


def variance_rows(fits: list[_Fits], *, subset: str, settings: MetaSAESettings) -> list[MetricValue]:
    rows = []
    for name, pick in (("meta_variance_explained", lambda f: f.variance_explained), ("meta_l0", lambda f: f.l0)):
        groups = [[pick(f) for f in g.fits] for g in fits]
        mean, within, between = _pooled(groups)
        extra = {"spread": "pooled std over meta-seeds", "std_over_sae_seeds": between,
                 "per_seed": {str(g.seed): float(np.mean(v)) for g, v in zip(fits, groups)},
                 "widths": sorted({g.width for g in fits}), "meta_width": [settings.width(len(g.alive)) for g in fits],
                 "settings": {"width_ratio": settings.width_ratio, "k": settings.k, "steps": settings.steps,
                              "batch_rows": settings.batch_rows, "lr": settings.lr}}
        if name == "meta_variance_explained":
            extra["variance_explained_batch"] = float(np.mean([f.variance_explained_batch for g in fits for f in g.fits]))
        rows.append(MetricValue(name, mean, std=within, n=sum(len(v) for v in groups), subset=subset, extra=extra))
    return rows


def consistency_rows(fits: list[_Fits], *, subset: str, task_seed: int, threshold: float, device: str,
                     ) -> tuple[list[MetricValue], list[pd.DataFrame]]:
    """Code similarity of matched and random latent pairs for every pair of SAE seeds (same width)."""
    names = ("meta_code_similarity_matched", "meta_code_similarity_unmatched", "meta_dictionary_mcc")
    if len(fits) < 2:
        note = "needs meta-SAEs of at least two SAE seeds of one width"
        return [MetricValue(n, None, subset=subset, note=note) for n in names], []
    matched, unmatched, mccs, above = [], [], [], []
    tables = []
    for a, b in itertools.combinations(fits, 2):
        match = match_rows(a.sae.decoder_directions(), b.sae.decoder_directions(), device=device)
        pos_a = np.full(a.sae.d_sae, -1)
        pos_a[a.alive] = np.arange(len(a.alive))
        pos_b = np.full(b.sae.d_sae, -1)
        pos_b[b.alive] = np.arange(len(b.alive))
        i = np.nonzero(match.partner_a >= 0)[0]
        j = match.partner_a[i]
        keep = (pos_a[i] >= 0) & (pos_b[j] >= 0)
        i, j = i[keep], j[keep]
        cos = match.cos_a[i]
        rng = np.random.default_rng(derived_seed(task_seed, "unmatched", a.seed, b.seed) % (2**32))
        shuffled = j[rng.permutation(len(j))]
        moved = shuffled != j
        for fa, fb in zip(a.fits, b.fits):
            meta_match = match_rows(fa.decoder, fb.decoder, device=device)
            sims = code_similarity(fa.codes, fb.codes, meta_match.partner_a, pos_a[i], pos_b[j])
            base = code_similarity(fa.codes, fb.codes, meta_match.partner_a, pos_a[i][moved], pos_b[shuffled][moved])
            matched.append(_nanmean(sims))
            unmatched.append(_nanmean(base))
            above.append(_nanmean(sims[cos > threshold]))
            mccs.append(meta_match.mcc)
            tables.append(pd.DataFrame({"width": np.int64(a.width), "seed": np.int64(a.seed), "latent": i.astype(np.int64),
                                        "meta_seed": np.int64(fa.meta_seed),
                                        "matched_latent": j.astype(np.int64), "code_similarity": sims}))
    pairs = [f"{a.seed}-{b.seed}" for a, b in itertools.combinations(fits, 2)]
    info = {"spread": "std over (seed pair, meta-seed)", "seed_pairs": pairs}
    rows = []
    for name, values, extra in (("meta_code_similarity_matched", matched,
                                 {"above_threshold": _finite_mean(above), "threshold": threshold}),
                                ("meta_code_similarity_unmatched", unmatched, {"what": "matched pairs with the partner shuffled"}),
                                ("meta_dictionary_mcc", mccs, {})):
        finite = [v for v in values if v is not None and math.isfinite(v)]
        if not finite:
            rows.append(MetricValue(name, None, subset=subset, note="no latent pair had non-empty meta-codes"))
            continue
        mean, std = mean_std(finite)
        rows.append(MetricValue(name, mean, std=std, n=len(finite), subset=subset, extra={**info, **extra}))
    return rows, tables


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def _finite_mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def hierarchy_features(organism) -> tuple[np.ndarray, np.ndarray]:
    """``(parents, controls)`` of an organism with a hierarchy: the planted parent features, and the
    features outside the hierarchy whose firing probability lies within the parents' range."""
    parents_levels = organism.hierarchy_parents
    if not parents_levels:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    parents = np.unique(np.concatenate([p.numpy() for p in parents_levels]))
    forest = np.unique(np.concatenate([parents] + [k.reshape(-1).numpy() for k in organism.hierarchy]))
    probs = organism.firing_probabilities.numpy()
    lo, hi = probs[parents].min(), probs[parents].max()
    outside = np.setdiff1d(np.arange(organism.n_features), forest)
    controls = outside[(probs[outside] >= lo) & (probs[outside] <= hi)]
    return parents, controls


def recovery_rows(fits: list[_Fits], organism, *, subset: str, task_seed: int) -> list[MetricValue]:
    parents, controls = hierarchy_features(organism)
    truth = organism.true_dictionary()
    meta_width, d = fits[0].fits[0].decoder.shape
    gen = torch.Generator().manual_seed(derived_seed(task_seed, "recovery-chance") % (2**63))
    chance_dicts = [torch.nn.functional.normalize(torch.randn(meta_width, d, generator=gen), dim=1) for _ in range(3)]
    rows = []
    for name, features in (("meta_parent_recovery", parents), ("meta_control_recovery", controls)):
        if len(features) == 0:
            rows.append(MetricValue(name, None, subset=subset, note="the organism has no feature hierarchy"
                                    if name == "meta_parent_recovery" or len(parents) == 0 else
                                    "no feature outside the hierarchy has the parents' firing probabilities"))
            continue
        per_fit = [float(parent_recovery(f.decoder, truth, features).mean()) for g in fits for f in g.fits]
        # the SAE's own recovery of the same features: a meta-latent that only copies an SAE latent adds nothing
        by_sae = [float(parent_recovery(g.sae.decoder_directions(), truth, features).mean()) for g in fits]
        chance = float(np.mean([parent_recovery(c, truth, features).mean() for c in chance_dicts]))
        mean, std = mean_std(per_fit)
        rows.append(MetricValue(name, mean, std=std, n=len(per_fit), subset=subset,
                                extra={"features": int(len(features)), "spread": "std over (SAE seed, meta-seed)",
                                       "sae_recovery": float(np.mean(by_sae)), "lift": mean - float(np.mean(by_sae)),
                                       "chance": chance, "chance_what": "random unit dictionaries of the meta width, 3 draws"}))
    return rows


def fit_table(fits: list[_Fits], settings: MetaSAESettings) -> pd.DataFrame:
    rows = []
    for g in fits:
        for f in g.fits:
            rows.append({"source": g.source, "width": g.width, "seed": g.seed, "meta_seed": f.meta_seed,
                         "rows": len(g.alive), "meta_width": settings.width(len(g.alive)),
                         "variance_explained": f.variance_explained, "variance_explained_batch": f.variance_explained_batch,
                         "l0": f.l0, "train_s": float(f.train_log.get("wall_s", float("nan")))})
    return pd.DataFrame(rows, columns=list(FIT_COLUMNS))


def latent_table(fits: list[_Fits], similarity: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per (width, seed, latent, meta-seed): the latent's meta-code summary and, for the primary
    width's first seed, its matched latent in the next seed and their code similarity."""
    frames = []
    sims = pd.concat(similarity, ignore_index=True) if similarity else None
    for g in fits:
        for f in g.fits:
            codes = f.codes
            active = np.diff(codes.indptr)
            top = np.full(len(g.alive), -1, dtype=np.int64)
            top_value = np.zeros(len(g.alive))
            nonempty = np.nonzero(active)[0]
            if len(nonempty):
                dense_top = codes[nonempty].argmax(axis=1)
                top[nonempty] = np.asarray(dense_top).ravel()
                top_value[nonempty] = np.asarray(codes[nonempty].max(axis=1).todense()).ravel()
            frame = pd.DataFrame({"source": g.source, "width": np.int64(g.width), "seed": np.int64(g.seed),
                                  "latent": g.alive.astype(np.int64), "meta_seed": np.int64(f.meta_seed),
                                  "active_meta_latents": active.astype(np.int64), "top_meta_latent": top,
                                  "top_meta_activation": top_value})
            if sims is not None:
                mine = sims[(sims["width"] == g.width) & (sims["seed"] == g.seed) & (sims["meta_seed"] == f.meta_seed)]
                mine = mine.drop_duplicates("latent")[["latent", "matched_latent", "code_similarity"]]
                frame = frame.merge(mine, on="latent", how="left")
            else:
                frame["matched_latent"] = np.nan
                frame["code_similarity"] = np.nan
            frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out["matched_latent"] = out["matched_latent"].fillna(-1).astype(np.int64)
    return out[list(LATENT_COLUMNS)]


@register_task
class MetaSAETask(Task):
    config_class = MetaSAEConfig
    metadata = TaskMetadata(
        name="meta-sae",
        version="1",
        title="Atomicity: meta-SAEs on decoder rows",
        description=(
            "Are SAE latents atomic, or combinations of other latents? A BatchTopK meta-SAE is trained on each SAE's "
            "unit decoder rows (SAEBench's meta_structure settings: width 0.25x, k=4, 1,500 steps of 1,024 rows, Adam "
            "5e-4; three meta-seeds as one batched module) and the variance of the rows it explains is reported, per "
            "width of a width ladder. New here: whether latents matched across two training seeds decompose into "
            "the same meta-latents. Anchors: 55% for a 49,152-latent GPT-2 SAE with a 2,304-wide meta-SAE (Leask et "
            "al.); SAEBench's fixture 0.2434 for a Pythia-70M standard SAE."
        ),
        metrics=METRICS,
        accepts=("checkpoints", "recipe"),
        min_seeds=1,
        needs_ladder=True,
        needs_organisms=True,
        # meta-SAEs train on the device (all meta-seeds as one module); decoder rows and sparse codes of every width
        resources=UnitResources(cpus=1.0, memory_gb=4.0, gpu=True),
        artifacts=(
            ArtifactSpec("fits", "one row per (width, SAE seed, meta-seed): rows, meta width, variance explained (threshold "
                         "and batch top-k encoding), mean active meta-latents, training seconds", FIT_COLUMNS),
            ArtifactSpec("latents", "one row per (width, SAE seed, latent, meta-seed): active meta-latents, the strongest "
                         "one, and for SAE seed pairs the matched latent and meta-code similarity", LATENT_COLUMNS),
        ),
        plots=(
            PlotSpec("metric_vs_slice", "variance-vs-width", "Decoder variance explained by the meta-SAE vs width",
                     metric="meta_variance_explained", subset_prefix="width=", log2_x=True, x_label="log2 SAE width",
                     y_label="meta_variance_explained", y_range=(0.0, 1.0),
                     note="One line per submission (its architecture in the legend); error bars: spread over meta-seeds."),
            PlotSpec("metric_vs_l0", "variance-vs-l0", "meta_variance_explained vs L0, by architecture",
                     metric="meta_variance_explained"),
        ),
        summaries=reliability_summaries(("meta_variance_explained", "meta_code_similarity_matched")),
        citation=join(LEASK_2025, KARVONEN_2025),
        references=("https://arxiv.org/abs/2502.04878", "https://github.com/adamkarvonen/SAEBench (evals/meta_structure)"),
        notes=(
            "Trained on unit-norm decoder rows (SAEBench uses raw W_dec rows; equal for unit-norm SAELens checkpoints).",
            "Codes use the meta-SAE's inference rule (its estimated BatchTopK threshold), so a latent's decomposition "
            "does not depend on the other rows; SAEBench's batch top-k evaluation is kept in the row's extra and the "
            "fits table.",
            "Meta-SAEs are trained for the first two SAE seeds of the primary width and the first seed of every other "
            "ladder width (sae_seeds, ladder_seeds).",
            "Applies to published checkpoints and to width ladders; single-width recipes are skipped for cost: on a 2-core "
            "CPU the SAEBench setting (3 meta-seeds x 1,500 steps x 1,024 rows) takes about 2.5x the training of a MiniLM "
            "reference recipe per SAE seed. On a GPU it takes seconds.",
        ),
    )

    @classmethod
    def not_applicable(cls, manifest) -> str | None:
        reason = super().not_applicable(manifest)
        if reason:
            return reason
        sub = manifest.submission
        if sub.kind == "recipe" and len(sub.ladder_widths) < 2:
            return ("runs on published checkpoints and on width ladders; a single-width recipe is skipped (at SAEBench's "
                    "setting its meta-SAEs would cost more than training the recipe; declare recipe.widths to compare widths)")
        return None

    def run(self, inputs: TaskInputs) -> TaskOutput:
        cfg: MetaSAEConfig = inputs.config
        if cfg.meta_seeds < 1 or cfg.sae_seeds < 1 or cfg.ladder_seeds < 1:
            raise TaskError("meta_seeds, sae_seeds and ladder_seeds must be at least 1", field="--task-option")
        settings = settings_of(cfg, inputs.limit)
        sub = inputs.submission
        primary = sub.sae.width if sub.kind == "checkpoints" else sub.recipe.width
        sources: list[tuple[str, dict[int, dict[int, Any]], Any]] = []
        hashes: list[str] = []
        records: list[dict[str, Any]] = []
        for name, prepared in (inputs.organisms or {}).items():
            if prepared.ladder is None:
                raise TaskError("the runner prepared no width ladder for this organism", field="recipe.widths")
            sources.append((f"preset={name}", prepared.ladder, prepared.organism))
            hashes.append(prepared.organism.data_hash)
            records += prepared.ladder_records
        if not sources:
            if inputs.ladder is None:
                raise TaskError("the runner prepared no SAEs", field="checkpoints")
            sources.append(("model", inputs.ladder, None))
        single = len(sources) == 1
        metrics: list[MetricValue] = []
        fit_tables, latent_tables = [], []
        for source, ladder, organism in sources:
            if primary not in ladder:
                raise TaskError(f"the primary width {primary} is missing from the prepared SAEs", field="sae.width")
            fits = fit_ladder(ladder, primary, cfg, settings, task_seed=inputs.seed, source=source,
                              device=inputs.device, quiet=inputs.quiet, cache=inputs.cache)
            prefix = "" if single else f"{source},"
            at_primary = [g for g in fits if g.width == primary]
            metrics += variance_rows(at_primary, subset=(prefix.rstrip(",") or "all"), settings=settings)
            for width in sorted(ladder):
                metrics += variance_rows([g for g in fits if g.width == width], subset=f"{prefix}width={width}",
                                         settings=settings)
            rows, similarity = consistency_rows(at_primary, subset=prefix.rstrip(",") or "all", task_seed=inputs.seed,
                                                threshold=cfg.shared_threshold, device=inputs.device)
            metrics += rows
            if organism is not None:
                metrics += recovery_rows(at_primary, organism, subset=prefix.rstrip(",") or "all", task_seed=inputs.seed)
            fit_tables.append(fit_table(fits, settings))
            latent_tables.append(latent_table(fits, similarity))
        if not single:
            for name in ("meta_variance_explained", "meta_l0"):
                values = [m for m in metrics if m.metric == name and "," not in m.subset and m.subset.startswith("preset=")]
                mean, std = mean_std(v.value for v in values)
                metrics.append(MetricValue(name, mean, std=std, n=len(values), extra={"spread": "std over presets"}))
        data_hash = None
        if hashes:
            data_hash = hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()[:16]
        provenance: dict[str, Any] = {"checkpoints": records} if records else {}
        return TaskOutput(metrics=metrics,
                          artifacts={"fits": pd.concat(fit_tables, ignore_index=True),
                                     "latents": pd.concat(latent_tables, ignore_index=True)},
                          data_hash=data_hash, provenance=provenance)
