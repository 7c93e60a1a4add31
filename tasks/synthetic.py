"""Task ``synthetic``: ground-truth recovery and seed consistency on model organisms.

What is evaluated:

* a **recipe** (``kind = "recipe"``, ``recipe.trains_on = "synthetic"``, ``recipe.presets = [...]``)
  is trained here on each preset with every listed seed (seeds differ in initialisation only; the
  data order is the same), all seeds as one batched module (:func:`benchmark.training.train_batched`).
  Trained SAEs are cached under ``<cache>/trained/<key>/seed-<s>`` (key: hash of the recipe minus
  its seeds, the preset configuration and the trainer version), so a rerun never retrains;
* a **checkpoints** submission trained on data written by ``canonbench synthetic export PRESET``
  says which preset through its model name ``synthetic:<preset>`` (optionally ``@<version>``) or a
  tag ``preset:<preset>``; its SAEs are evaluated as they are.

Rows (``subset = "preset=<name>"``; per-seed GT-MCC rows use ``"preset=<name>,seed=<s>"``):
``gt_mcc`` (main; mean over seeds, std over seeds), ``pw_mcc`` (mean and std over seed pairs),
``gt_mcc_chance`` and ``pw_mcc_chance`` (MCC of independent random unit dictionaries of the same
shapes), ``shared_fraction`` (decoder and encoder matches both above cos 0.7), ``gt_mean_max_cosine``,
``gt_recovered_fraction`` (true features whose best latent has cos > 0.9), and on held-out samples
``l0``, ``explained_variance`` and ``dead_fraction``. Matching is signed-cosine and one-to-one,
averaged over the smaller dictionary (:mod:`benchmark.metrics.matching`).

Why GT-MCC is the main metric: on a model organism the truth is known, and recovering it is what
the benchmark wants to reward; PW-MCC is the proxy one must use on real models, and this task is
where its validity as a proxy is measured. :func:`proxy_validity` computes that across submissions
from the stored rows (a statistic over the results table; the leaderboard calls it as a pure function).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmark.errors import TaskError
from benchmark.results import MetricValue
from tasks import register_task
from tasks.citations import CHANIN_GARRIGA_ALONSO_2026, PAULO_BELROSE_2025, SONG_2025, join
from tasks.base import MetricSpec, Task, TaskContext, TaskMetadata, TaskOutput

log = logging.getLogger(__name__)

MODEL_PREFIX = "synthetic:"
TAG_PREFIX = "preset:"
SHARED_THRESHOLD = 0.7
RECOVERED_THRESHOLD = 0.9
CHANCE_SEED = 20250526
EVAL_BATCH = 4096

CITATION = join(SONG_2025, CHANIN_GARRIGA_ALONSO_2026, PAULO_BELROSE_2025)

METRICS = (
    MetricSpec("gt_mcc", "MCC between the true dictionary and each seed's decoder (mean over seeds)", "higher", (-1.0, 1.0), main=True),
    MetricSpec("gt_mcc_chance", "GT-MCC of independent random unit dictionaries of the same shapes", "none", (-1.0, 1.0)),
    MetricSpec("pw_mcc", "MCC between decoders of every pair of seeds (mean over pairs)", "higher", (-1.0, 1.0)),
    MetricSpec("pw_mcc_chance", "PW-MCC of independent random unit dictionaries of the same shape", "none", (-1.0, 1.0)),
    MetricSpec("shared_fraction", "Latents whose decoder and encoder matches across two seeds both exceed cos 0.7", "higher", (0.0, 1.0)),
    MetricSpec("gt_mean_max_cosine", "Mean over true features of the best cosine with any latent", "higher", (-1.0, 1.0)),
    MetricSpec("gt_recovered_fraction", "True features whose best latent has cos > 0.9", "higher", (0.0, 1.0)),
    MetricSpec("l0", "Mean number of active latents per held-out sample", "none", (0.0, None), unit="latents"),
    MetricSpec("explained_variance", "1 - residual / total variance on held-out samples", "higher", (None, 1.0)),
    MetricSpec("dead_fraction", "Latents never active on the held-out samples", "lower", (0.0, 1.0)),
)


# --- which presets a submission is about ------------------------------------------------------------
def submission_presets(manifest) -> list[str]:
    """Preset names (with optional ``@version``) a manifest asks this task to evaluate."""
    sub = manifest.submission
    if sub.kind == "recipe":
        return list(sub.recipe.presets) if sub.recipe.trains_on == "synthetic" else []
    names: list[str] = []
    if sub.model.name.startswith(MODEL_PREFIX):
        names.append(sub.model.name[len(MODEL_PREFIX):])
    names += [t[len(TAG_PREFIX):] for t in sub.tags if t.startswith(TAG_PREFIX)]
    unique = list(dict.fromkeys(n.partition("@")[0] for n in names))
    return names[:1] if len(unique) == 1 else names


# --- training with a cache ------------------------------------------------------------------------
def training_cache_key(recipe, organism) -> str:
    """Hash of what determines the trained weights apart from the seed."""
    from benchmark.training import TRAINER_VERSION

    spec = recipe.model_dump(mode="json")
    spec.pop("seeds", None)
    spec.pop("presets", None)
    payload = {"recipe": spec, "preset": organism.preset.card(), "data_seed": organism.seed, "trainer": TRAINER_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _checkpoint_io():
    """``(save_native, load_sae)`` from :mod:`benchmark.sae.checkpoints`, or None while it is missing."""
    try:
        from benchmark.sae.checkpoints import load_sae
        from benchmark.sae.checkpoints.native import save_native
    except ImportError:
        return None
    return save_native, load_sae


def train_or_load(recipe, organism, *, cache_dir: Path | None, device: str, quiet: bool, file=None):
    """``({seed: SAE}, records, training_log)`` for a synthetic recipe on one organism.

    Seeds already in the cache are loaded; the rest train together in one batched run and are
    saved (one folder per seed, written to a temporary name and renamed, so a crash leaves none torn).
    """
    from benchmark.training import check_recipe, train_batched

    check_recipe(recipe, file=file)
    key = training_cache_key(recipe, organism)
    io = _checkpoint_io()
    folder = Path(cache_dir) / "trained" / key if cache_dir is not None else None
    saes, records, train_log = {}, [], {}
    missing = []
    for seed in recipe.seeds:
        seed_dir = folder / f"seed-{seed}" if folder else None
        if io and seed_dir is not None and seed_dir.is_dir():
            saes[seed] = io[1](seed_dir, device="cpu")
            records.append({"seed": seed, "trained": key, "path": str(seed_dir), "cached": True})
        else:
            missing.append(seed)
    if missing:
        hp = recipe.hyperparameters
        if hp.effective_batch_size is not None and organism.preset.n_samples is not None and hp.effective_batch_size > organism.preset.n_samples:
            raise TaskError(f"batch size {hp.batch_size} exceeds the {organism.preset.n_samples} samples of {organism.preset.name}",
                            file=file, field="recipe.hyperparameters.batch_size")
        result = train_batched(recipe, organism.batches(hp.effective_batch_size, hp.steps), d_in=organism.d_in, device=device,
                               quiet=quiet, seeds=missing)
        train_log = result.log
        for seed, sae in result.saes.items():
            sae.config.metadata.update({"preset": organism.preset.name, "preset_version": organism.preset.version})
            saes[seed] = sae
            record = {"seed": seed, "trained": key, "cached": False, "wall_s": result.log["wall_s"]}
            if io and folder is not None:
                seed_dir = folder / f"seed-{seed}"
                tmp = folder / f".seed-{seed}.tmp"
                folder.mkdir(parents=True, exist_ok=True)
                io[0](sae, tmp, extra_metadata={"preset": organism.preset.name, "cache_key": key, "seed": seed})
                if not seed_dir.exists():
                    tmp.replace(seed_dir)
                record["path"] = str(seed_dir)
            records.append(record)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"log-{'-'.join(map(str, missing))}.json").write_text(json.dumps(train_log, indent=2))
        if io is None:
            log.warning("benchmark.sae.checkpoints is not available: trained SAEs are not cached")
    return {s: saes[s] for s in recipe.seeds}, records, train_log


# --- metrics --------------------------------------------------------------------------------------
def row_max_cosines(a: torch.Tensor, b: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """For each row of ``a [m, d]``, the largest cosine with any row of ``b [n, d]`` (``[m]``, fp64)."""
    from benchmark.sae.model import unit_rows

    ua, ub = unit_rows(a.double()), unit_rows(b.double())
    return torch.cat([(ua[i:i + block] @ ub.T).max(dim=1).values for i in range(0, ua.shape[0], block)])


@torch.no_grad()
def reconstruction_stats(sae, x: torch.Tensor, device: str = "cpu", batch: int = EVAL_BATCH) -> dict[str, float]:
    """L0, explained variance and dead fraction of ``sae`` on ``x [n, d_in]``."""
    sae = sae.to(device)
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=device)
    l0_sum, resid, n = 0.0, 0.0, x.shape[0]
    centred_total = (x.double() - x.double().mean(0)).pow(2).sum().item()
    for i in range(0, n, batch):
        xb = x[i:i + batch].to(device)
        x_norm, state = sae.normalise_input(xb)
        z = sae._encode_normalised(x_norm)
        x_hat = sae.denormalise_output(sae.decode(z), state)
        active = z > 0
        fired |= active.any(0)
        l0_sum += active.sum().item()
        resid += (xb.double() - x_hat.double()).pow(2).sum().item()
    return {
        "l0": l0_sum / n,
        "explained_variance": 1.0 - resid / centred_total if centred_total > 0 else float("nan"),
        "dead_fraction": 1.0 - fired.float().mean().item(),
    }


def _spread(values: list[float]) -> tuple[float, float | None]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def evaluate_preset(saes: dict[int, Any], organism, *, device: str = "cpu", eval_samples: int | None = None,
                    chance_trials: int = 5) -> tuple[list[MetricValue], dict[str, pd.DataFrame]]:
    """All metrics of one preset for ``{seed: SAE}``; returns rows and drill-down tables."""
    from benchmark.metrics.matching import chance_mcc, match_dictionaries

    preset = organism.preset.name
    subset = f"preset={preset}"
    truth = organism.true_dictionary()
    seeds = sorted(saes)
    decoders = {s: saes[s].decoder_directions() for s in seeds}
    encoders = {s: saes[s].encoder_directions() for s in seeds}
    d_sae = {saes[s].d_sae for s in seeds}
    if len(d_sae) != 1 or any(saes[s].d_in != organism.d_in for s in seeds):
        raise TaskError(f"SAEs for {preset} must share one width and have d_in={organism.d_in}")
    width = d_sae.pop()
    x_eval = organism.eval_data(eval_samples)
    per_seed, features = [], []
    for s in seeds:
        match = match_dictionaries(truth, decoders[s], device=device)
        best = row_max_cosines(truth, decoders[s])
        stats = reconstruction_stats(saes[s], x_eval, device=device)
        per_seed.append({"preset": preset, "seed": s, "gt_mcc": match.value, "certified": match.certified,
                         "gt_mean_max_cosine": float(best.mean()),
                         "gt_recovered_fraction": float((best > RECOVERED_THRESHOLD).double().mean()), **stats})
        matched = np.full(organism.n_features, np.nan)
        true_rows = match.rows_a
        matched[true_rows] = match.cosines
        features.append(pd.DataFrame({"preset": preset, "seed": s, "feature": np.arange(organism.n_features),
                                      "matched_cosine": matched, "best_cosine": best.numpy(),
                                      "firing_probability": organism.firing_probabilities.numpy()}))
    seed_frame = pd.DataFrame(per_seed)
    trials = chance_trials if organism.n_features * width <= 4_000_000 else 1
    chance_gt = chance_mcc(organism.n_features, width, organism.d_in, seed=CHANCE_SEED, trials=trials)
    chance_pw = chance_mcc(width, width, organism.d_in, seed=CHANCE_SEED + 1, trials=trials)
    metrics: list[MetricValue] = []
    mean, std = _spread(seed_frame["gt_mcc"])
    metrics.append(MetricValue("gt_mcc", mean, std=std, n=len(seeds), subset=subset,
                               extra={"chance": chance_gt.mean, "per_seed": dict(zip(map(str, seeds), seed_frame["gt_mcc"])),
                                      "averaged_over": "true features" if organism.n_features <= width else "latents",
                                      "certified": bool(seed_frame["certified"].all())}))
    for s, value in zip(seeds, seed_frame["gt_mcc"]):
        metrics.append(MetricValue("gt_mcc", float(value), n=1, subset=f"{subset},seed={s}"))
    metrics.append(MetricValue("gt_mcc_chance", chance_gt.mean, std=chance_gt.std if trials > 1 else None, n=trials,
                               subset=subset, extra={"shapes": [organism.n_features, width, organism.d_in]}))
    metrics.append(MetricValue("pw_mcc_chance", chance_pw.mean, std=chance_pw.std if trials > 1 else None, n=trials,
                               subset=subset, extra={"shapes": [width, width, organism.d_in]}))
    pair_rows = []
    for a, b in itertools.combinations(seeds, 2):
        dec = match_dictionaries(decoders[a], decoders[b], device=device)
        enc = match_dictionaries(encoders[a], encoders[b], device=device)
        # Shared (Paulo & Belrose): a latent of seed a whose decoder match and encoder match both exceed 0.7.
        dec_cos = np.zeros(width)
        dec_cos[dec.rows_a] = dec.cosines
        enc_cos = np.zeros(width)
        enc_cos[enc.rows_a] = enc.cosines
        shared = float(np.mean((dec_cos > SHARED_THRESHOLD) & (enc_cos > SHARED_THRESHOLD)))
        pair_rows.append({"preset": preset, "seed_a": a, "seed_b": b, "pw_mcc": dec.value, "encoder_mcc": enc.value,
                          "shared_fraction": shared})
    pairs = pd.DataFrame(pair_rows, columns=["preset", "seed_a", "seed_b", "pw_mcc", "encoder_mcc", "shared_fraction"])
    if len(pairs):
        for name in ("pw_mcc", "shared_fraction"):
            mean, std = _spread(pairs[name])
            extra = {"chance": chance_pw.mean} if name == "pw_mcc" else {"threshold": SHARED_THRESHOLD}
            metrics.append(MetricValue(name, mean, std=std, n=len(pairs), subset=subset, extra=extra))
    else:
        for name in ("pw_mcc", "shared_fraction"):
            metrics.append(MetricValue(name, None, subset=subset, note="needs at least two seeds"))
    for name in ("gt_mean_max_cosine", "gt_recovered_fraction", "l0", "explained_variance", "dead_fraction"):
        mean, std = _spread(seed_frame[name])
        metrics.append(MetricValue(name, mean, std=std, n=len(seeds), subset=subset))
    return metrics, {"per_seed": seed_frame, "pairs": pairs, "features": pd.concat(features, ignore_index=True)}


# --- the task -------------------------------------------------------------------------------------
@register_task
class SyntheticTask(Task):
    metadata = TaskMetadata(
        name="synthetic",
        version="1",
        title="Ground-truth recovery on model organisms",
        description=(
            "SAEs trained (recipes: by the benchmark, S seeds batched) on synthetic data with a known dictionary. "
            "GT-MCC: how well each seed recovers the true features; PW-MCC: how consistent seeds are; "
            "chance baselines beside both. Proxy validity (correlation of PW-MCC with GT-MCC across submissions) "
            "is computed from stored rows by tasks.synthetic.proxy_validity."
        ),
        metrics=METRICS,
        accepts=("recipe", "checkpoints"),
        min_seeds=1,
        citation=CITATION,
        references=(
            "https://arxiv.org/abs/2505.20254",
            "https://github.com/xiangchensong/sae-feature-consistency",
            "https://github.com/decoderesearch/SAELens (sae_lens.synthetic, SynthSAEBench)",
        ),
    )

    def not_applicable(self, manifest) -> str | None:
        reason = super().not_applicable(manifest)
        if reason:
            return reason
        sub = manifest.submission
        if sub.kind == "recipe" and sub.recipe.trains_on != "synthetic":
            return "recipe trains on a model, not on a synthetic preset"
        if sub.kind == "checkpoints" and not submission_presets(manifest):
            return f"checkpoints not trained on a synthetic preset (model name '{MODEL_PREFIX}<preset>' or tag '{TAG_PREFIX}<preset>')"
        return None

    def run(self, ctx: TaskContext) -> TaskOutput:
        from benchmark.data.organisms import Organism, get_preset

        manifest = ctx.manifest
        sub = manifest.submission
        names = submission_presets(manifest)
        field = "recipe.presets" if sub.kind == "recipe" else "model.name"
        if sub.kind == "checkpoints" and len({n.partition("@")[0] for n in names}) > 1:
            raise TaskError(f"checkpoints name several presets {names}; a checkpoint is trained on one", file=manifest.path, field=field)
        presets = [get_preset(n, file=manifest.path, field=f"{field}[{i}]" if sub.kind == "recipe" else field) for i, n in enumerate(names)]
        limit = ctx.options.get("limit")
        metrics: list[MetricValue] = []
        artifacts: dict[str, list[pd.DataFrame]] = {}
        records: list[dict[str, Any]] = []
        hashes = []
        for preset in presets:
            organism = Organism(preset)
            hashes.append(organism.data_hash)
            if sub.kind == "recipe":
                saes, recs, train_log = train_or_load(sub.recipe, organism, cache_dir=ctx.cache_dir, device=ctx.device,
                                                      quiet=ctx.quiet, file=manifest.path)
                records += [{**r, "preset": preset.name} for r in recs]
            else:
                saes = ctx.saes()
                bad = [s for s, sae in saes.items() if sae.d_in != preset.d_in]
                if bad:
                    raise TaskError(f"checkpoint d_in={saes[bad[0]].d_in} but preset {preset.name} has d_in={preset.d_in}",
                                    file=manifest.path, field="sae.d_in")
            eval_n = min(limit, preset.eval_samples) if limit else None
            rows, tables = evaluate_preset(saes, organism, device=ctx.device, eval_samples=eval_n)
            if limit:
                for row in rows:
                    row.note = (row.note + "; " if row.note else "") + f"--limit {limit}"
            metrics += rows
            for name, table in tables.items():
                artifacts.setdefault(name, []).append(table)
        provenance: dict[str, Any] = {
            "model": ",".join(f"{MODEL_PREFIX}{p.name}" for p in presets),
            "model_revision": ",".join(f"{p.name}@{p.version}:{p.key}" for p in presets),
            "hook": "x",
        }
        if records:
            provenance["checkpoints"] = records
        data_hash = hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()[:16]
        return TaskOutput(metrics=metrics, artifacts={k: pd.concat(v, ignore_index=True) for k, v in artifacts.items()},
                          data_hash=data_hash, provenance=provenance)


# --- proxy validity -------------------------------------------------------------------------------
def proxy_validity(results: pd.DataFrame, *, min_points: int = 3) -> pd.DataFrame:
    """Does PW-MCC track GT-MCC? Correlations across submissions, per preset, from stored rows.

    Takes the results table (``ResultStore.read()``), keeps the ``synthetic`` task's per-preset
    ``pw_mcc`` and ``gt_mcc`` rows (the newest row of each submission × metric × preset) and returns,
    per preset, one row for all submissions together (``group="all"``) and one per architecture
    (e.g. a sparsity sweep of one architecture), each with ``n`` (submissions), ``pearson``,
    ``spearman`` and their two-sided p-values. Groups with fewer than ``min_points`` submissions, or
    where either metric is constant, get NaN correlations and a ``note``. A pure function of the table.
    """
    from scipy import stats

    columns = ["preset", "group", "n", "pearson", "pearson_p", "spearman", "spearman_p", "submissions", "note"]
    if results is None or len(results) == 0:
        return pd.DataFrame(columns=columns)
    frame = results[(results["task"] == "synthetic") & results["metric"].isin(["pw_mcc", "gt_mcc"])].copy()
    frame = frame[frame["subset"].astype(str).str.match(r"^preset=[^,]+$") & frame["value"].notna()]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    frame["preset"] = frame["subset"].astype(str).str.slice(len("preset="))
    frame = frame.sort_values("timestamp").groupby(["submission", "metric", "preset"], as_index=False).last()
    wide = frame.pivot_table(index=["preset", "submission", "architecture"], columns="metric", values="value", aggfunc="last",
                             dropna=False).reset_index()
    wide = wide.dropna(subset=[c for c in ("pw_mcc", "gt_mcc") if c in wide]) if {"pw_mcc", "gt_mcc"} <= set(wide.columns) else wide.iloc[0:0]
    out = []
    for preset, group_frame in wide.groupby("preset"):
        groups = [("all", group_frame)] + [(f"architecture={a}", g) for a, g in group_frame.groupby("architecture")]
        for name, g in groups:
            pw, gt = g["pw_mcc"].astype(float).to_numpy(), g["gt_mcc"].astype(float).to_numpy()
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
