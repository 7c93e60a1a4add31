"""Recipe submissions that train on a model: trained here (all seeds batched), cached on disk.

A recipe with ``trains_on = "model"`` is trained on its model's cached corpus activations (see
:mod:`benchmark.data.activations`) by :func:`benchmark.training.train_batched`. Each trained seed is saved
in the native checkpoint format under ``<cache_dir>/reference/<recipe key>/seed-<seed>/``; the key
is a hash of the recipe (minus its seed list), the activation cache key, the trainer version and
this module's version, so a cached SAE is reused exactly when it would train to the same weights,
and a new seed added to a recipe trains only that seed.

Batches: rows drawn without replacement from the activations, reshuffled each epoch by a generator
seeded from the recipe key; every seed sees the same batches in the same order (the trainer's
contract), so seeds differ only in initialisation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch

from benchmark.errors import CanonBenchError, CheckpointError, TaskError
from benchmark.data.models import file_sha256

log = logging.getLogger(__name__)

REFERENCE_VERSION = "1"


def recipe_key(manifest, activation_key: str) -> tuple[str, dict[str, Any]]:
    """The cache key (and the fields hashed into it) of a model-trained recipe."""
    from benchmark.training import TRAINER_VERSION

    recipe = manifest.submission.recipe
    fields = {
        "reference_version": REFERENCE_VERSION,
        "trainer_version": TRAINER_VERSION,
        "recipe": recipe.model_dump(mode="json", exclude={"seeds"}),
        "activations_key": activation_key,
        "model": manifest.submission.model.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24], fields


def epoch_batches(acts: torch.Tensor, batch_size: int | None, *, seed: int) -> Callable[[int], torch.Tensor]:
    """``step -> [batch, d_in]`` float32 rows of ``acts``: without replacement within an epoch, a
    fresh permutation per epoch from ``torch.Generator().manual_seed(seed + epoch)``."""
    n = acts.shape[0]
    size = n if batch_size is None else min(batch_size, n)
    per_epoch = max(n // size, 1)
    cache: dict[int, torch.Tensor] = {}

    def batch(step: int) -> torch.Tensor:
        epoch, within = divmod(step, per_epoch)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        rows = cache[epoch][within * size:(within + 1) * size]
        return acts[rows.sort().values].float()  # sorted rows: sequential reads from the memory map

    return batch


def train_recipe_saes(manifest, *, cache_dir: Path | str, device: str = "cpu", quiet: bool = False,
                      provider=None) -> tuple[dict[int, Any], list[dict[str, Any]]]:
    """``({seed: SAE}, [provenance record per seed])`` for a recipe with ``trains_on = "model"``.

    Seeds already in the cache are loaded; the others train together in one batched run and are
    saved (native format) before being returned.
    """
    from benchmark.data.activations import provider_for_manifest
    from benchmark.sae.checkpoints import load_sae, save_native

    sub = manifest.submission
    if sub.kind != "recipe" or sub.recipe.trains_on != "model":
        raise TaskError("only recipes with trains_on = \"model\" are trained here", file=manifest.path, field="recipe.trains_on")
    recipe = sub.recipe
    if provider is None:
        provider = provider_for_manifest(manifest, cache_dir=cache_dir, device=device, quiet=quiet)
    key, fields = recipe_key(manifest, provider.key)
    root = Path(cache_dir) / "reference" / key
    folders = {seed: root / f"seed-{seed}" for seed in recipe.seeds}
    missing = [seed for seed, folder in folders.items() if not (folder / "cfg.json").exists()]
    train_log: dict[str, Any] = {}
    if missing:
        train_log = _train_and_save(manifest, provider, missing, folders, key, fields, device=device, quiet=quiet,
                                    save_native=save_native)
    saes, records = {}, []
    for seed, folder in folders.items():
        try:
            sae = load_sae(folder, format="native", device=device)
        except CanonBenchError as exc:
            raise CheckpointError(f"cached reference SAE is unreadable ({exc.detail}); delete {folder} to retrain",
                                  file=folder) from None
        saes[seed] = sae
        records.append({
            "source": "trained", "seed": seed, "recipe_key": key, "path": str(folder),
            "activations_key": provider.key, "local": True,
            "trained_now": seed in missing,
            "files": {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(folder.iterdir()) if p.is_file()},
            "training": _seed_log(train_log, seed) if seed in missing else _saved_log(folder),
        })
    return saes, records


def _train_and_save(manifest, provider, seeds, folders, key, fields, *, device, quiet, save_native) -> dict[str, Any]:
    from benchmark.training import train_batched

    sub = manifest.submission
    acts = provider.activations()
    hp = sub.recipe.hyperparameters
    data_seed = int(key[:8], 16)
    log.info("training %s (%s, %d seeds) on %d activations of %s", manifest.name, sub.recipe.architecture,
             len(seeds), acts.shape[0], provider.hook)
    result = train_batched(sub.recipe, epoch_batches(acts, hp.batch_size, seed=data_seed), d_in=acts.shape[1],
                           device=device, quiet=quiet, seeds=seeds)
    for seed in seeds:
        sae = result.saes[seed]
        sae.config.model_name = sub.model.name
        sae.config.hook_name = sub.model.hook
        meta = {"submission": manifest.name, "recipe_key": key, "recipe": fields["recipe"], "seed": seed,
                "activations_key": provider.key, "training": _seed_log(result.log, seed)}
        try:
            save_native(sae.cpu(), folders[seed], extra_metadata=meta)
        except CheckpointError:
            if not (folders[seed] / "cfg.json").exists():  # not a lost race: a real failure
                raise
    return result.log


def _seed_log(train_log: dict[str, Any], seed: int) -> dict[str, Any]:
    """The part of a batched training log that concerns one seed."""
    if not train_log:
        return {}
    i = train_log["seeds"].index(seed)
    out = {k: train_log[k] for k in ("steps", "wall_s", "device", "dtype", "trainer_version") if k in train_log}
    out["batched_seeds"] = train_log["seeds"]
    out["final"] = {name: values[i] for name, values in train_log.get("final", {}).items()}
    if "threshold" in train_log:
        out["threshold"] = train_log["threshold"][i]
    return out


def _saved_log(folder: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((folder / "cfg.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return (cfg.get("metadata") or {}).get("training", {})
