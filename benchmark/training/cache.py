"""One trained-SAE cache for every recipe, whatever it trains on.

A recipe trains on a :class:`TrainingData`: a synthetic organism's samples or a model's cached
activations. The cache key is a sha256 over the recipe (every field except its seed list and
preset list), the data's identity (preset card and data seed, or the activation cache key and the
model record), the trainer version and :data:`CACHE_VERSION`, so a cached SAE is reused exactly
when it would train to the same weights, and a seed added to a recipe trains only that seed.

Layout: ``<cache_dir>/trained/<key>/seed-<seed>/`` in the native checkpoint format; its cfg.json
``metadata`` holds the key's fields, the seed and the training log. Each folder is written to a
temporary name and renamed, so a crash leaves none torn. Every SAE comes back with one provenance
record in one schema (:func:`train_or_load`), for synthetic and model recipes alike.

Several processes may ask for one key at once (workers of a cluster run sharing the cache folder):
the check-train-save step holds an exclusive ``flock`` on ``trained/<key>.lock``, so one process
trains and the others wait and then load its SAEs. Where the file system refuses locks, both may
train; the first saved folder wins and the other process loads it, so nothing fails or tears.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from benchmark.errors import CanonBenchError, CheckpointError

try:
    import fcntl
except ImportError:  # pragma: no cover - not Linux/macOS: unlocked, still race-safe (see the module docstring)
    fcntl = None

log = logging.getLogger(__name__)

#: Bumped when the layout or the key's fields change.
CACHE_VERSION = "2"


@dataclass(frozen=True)
class TrainingData:
    """What a recipe trains on.

    ``identity``: JSON fields that determine the data (hashed into the cache key). ``d_in``: the
    width of a sample. ``batches(batch_size, steps, data_seed)``: a callable ``step -> x [batch, d_in]``
    (``batch_size=None``: full batch); ``data_seed`` (derived from the key) orders the batches where
    the data has no order of its own. ``n_samples``: the size of a finite training set, else None.
    """

    identity: dict[str, Any]
    d_in: int
    batches: Callable[[int | None, int, int], Callable[[int], torch.Tensor]]
    n_samples: int | None = None


def organism_data(organism) -> TrainingData:
    """A synthetic organism's training stream (its order is fixed by the organism's data seed)."""
    return TrainingData(
        identity={"preset": organism.preset.card(), "data_seed": organism.seed},
        d_in=organism.d_in,
        batches=lambda batch_size, steps, _seed: organism.batches(batch_size, steps),
        n_samples=organism.preset.n_samples,
    )


def activation_data(provider) -> TrainingData:
    """A model's cached corpus activations (epochs in a seeded random order)."""
    acts = provider.activations()
    return TrainingData(
        identity={"activations_key": provider.key, "model": provider.model_info},
        d_in=int(acts.shape[1]),
        batches=lambda batch_size, steps, seed: epoch_batches(acts, batch_size, seed=seed),
        n_samples=int(acts.shape[0]),
    )


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


def training_key(recipe, data: TrainingData) -> tuple[str, dict[str, Any]]:
    """The cache key of ``recipe`` on ``data`` and the fields hashed into it."""
    from benchmark.training.batched import TRAINER_VERSION

    fields = {
        "cache_version": CACHE_VERSION,
        "trainer_version": TRAINER_VERSION,
        # ``widths`` is left out: a ladder trains each width as its own recipe (RecipeSpec.at_width),
        # so a rung shares its cache entry with the same recipe written at that width alone.
        "recipe": recipe.model_dump(mode="json", exclude={"seeds", "presets", "widths"}),
        "data": data.identity,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24], fields


def train_or_load(recipe, data: TrainingData, *, cache_dir: Path | str | None, device: str = "cpu",
                  quiet: bool = False, file: Any = None, seeds: list[int] | None = None,
                  sae_metadata: dict[str, Any] | None = None) -> tuple[dict[int, Any], list[dict[str, Any]]]:
    """``({seed: SAE}, [provenance record per seed])`` for ``recipe`` on ``data``.

    Seeds already in the cache are loaded; the others train together in one batched run and are
    saved before being returned. ``sae_metadata`` (e.g. model name and hook) is set on the SAEs'
    configs. Without ``cache_dir`` nothing is saved. Records: ``source="trained"``, ``seed``,
    ``training_key``, ``path``, ``trained_now``, ``files`` (bytes and sha256 of each file) and
    ``training`` (the seed's part of the training log, with the kernel that trained it)."""
    from benchmark.data.models import file_sha256
    from benchmark.sae.checkpoints import load_sae
    from benchmark.training import check_recipe

    check_recipe(recipe, file=file)
    seeds = list(recipe.seeds if seeds is None else seeds)
    key, fields = training_key(recipe, data)
    root = Path(cache_dir) / "trained" / key if cache_dir is not None else None
    folders = {seed: root / f"seed-{seed}" for seed in seeds} if root is not None else {}
    with _key_lock(root):  # another process training this key: wait, then load what it saved
        missing = [s for s in seeds if root is None or not (folders[s] / "cfg.json").exists()]
        trained, train_log = _train_missing(recipe, data, missing, key=key, fields=fields, folders=folders,
                                            device=device, quiet=quiet, file=file, sae_metadata=sae_metadata)
    saes, records = {}, []
    for seed in seeds:
        folder = folders.get(seed)
        if folder is not None:
            try:
                sae = load_sae(folder, format="native", device=device)
            except CanonBenchError as exc:
                raise CheckpointError(f"cached trained SAE is unreadable ({exc.detail}); delete {folder} to retrain",
                                      file=folder) from None
            files = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(folder.iterdir()) if p.is_file()}
        else:
            sae, files = trained[seed].to(device), {}
        saes[seed] = sae
        records.append({
            "source": "trained", "seed": seed, "training_key": key, "path": str(folder) if folder else None,
            "local": True, "trained_now": seed in missing, "files": files,
            "training": _seed_log(train_log, seed) if seed in missing else _saved_log(folder),
        })
    return saes, records


def _train_missing(recipe, data: TrainingData, missing: list[int], *, key: str, fields: dict[str, Any],
                   folders: dict[int, Path], device: str, quiet: bool, file: Any,
                   sae_metadata: dict[str, Any] | None) -> tuple[dict[int, Any], dict[str, Any]]:
    """Train the ``missing`` seeds in one batched run and save each to its folder (when cached);
    returns ``({seed: SAE}, training log)``. A folder another process saved first is kept."""
    from benchmark.sae.checkpoints.native import save_native
    from benchmark.training import train_batched

    trained: dict[int, Any] = {}
    train_log: dict[str, Any] = {}
    if not missing:
        return trained, train_log
    hp = recipe.hyperparameters
    if hp.effective_batch_size is not None and data.n_samples is not None and hp.effective_batch_size > data.n_samples:
        raise CanonBenchError(f"batch size {hp.effective_batch_size} exceeds the {data.n_samples} training samples",
                              file=file, field="recipe.hyperparameters.batch_size")
    log.info("training %s (%d seeds) on %s", recipe.architecture, len(missing), _describe(data))
    result = train_batched(recipe, data.batches(hp.effective_batch_size, hp.steps, int(key[:8], 16)),
                           d_in=data.d_in, device=device, quiet=quiet, seeds=missing)
    train_log = result.log
    for seed in missing:
        sae = result.saes[seed].cpu()
        for name, value in (sae_metadata or {}).items():
            setattr(sae.config, name, value)
        trained[seed] = sae
        if seed in folders:
            meta = {"training_key": key, "key_fields": fields, "seed": seed, "training": _seed_log(train_log, seed)}
            try:
                save_native(sae, folders[seed], extra_metadata=meta)
            except (CheckpointError, OSError):  # "already exists" or a refused rename: kept if another saved it
                if not (folders[seed] / "cfg.json").exists():  # not a lost race: a real failure
                    raise
    return trained, train_log


@contextmanager
def _key_lock(root: Path | None):
    """An exclusive ``flock`` on ``<root>.lock`` while held (nothing when ``root`` is None or the
    file system refuses locks)."""
    if root is None or fcntl is None:
        yield
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_name(root.name + ".lock"), "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except OSError as exc:  # e.g. a network file system without lock support
            log.debug("no lock on %s (%s); training unlocked", handle.name, exc)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def train_ladder(recipe, data: TrainingData, *, cache_dir: Path | str | None, device: str = "cpu", quiet: bool = False,
                 file: Any = None, sae_metadata: dict[str, Any] | None = None,
                 ) -> tuple[dict[int, dict[int, Any]], list[dict[str, Any]]]:
    """``({width: {seed: SAE}}, records)``: :func:`train_or_load` of the recipe at every width of its
    ladder (``recipe.widths``; just ``recipe.width`` without one). Each width is its own recipe
    (:meth:`~benchmark.submission.manifest.RecipeSpec.at_width`) with its own cache entry, so the
    primary width is the very SAE a single-width task loads. Records carry ``width``."""
    from benchmark.training import check_recipe

    check_recipe(recipe, file=file)  # the whole ladder is checked before any width trains
    ladder: dict[int, dict[int, Any]] = {}
    records: list[dict[str, Any]] = []
    for width in recipe.ladder_widths:
        saes, rung_records = train_or_load(recipe.at_width(width), data, cache_dir=cache_dir, device=device,
                                           quiet=quiet, file=file, sae_metadata=sae_metadata)
        ladder[width] = saes
        records += [{**r, "width": width} for r in rung_records]
    return ladder, records


def _describe(data: TrainingData) -> str:
    ident = data.identity
    if "preset" in ident:
        return f"preset {ident['preset'].get('name')}"
    return f"activations {str(ident.get('activations_key', ''))[:12]}"


def _seed_log(train_log: dict[str, Any], seed: int) -> dict[str, Any]:
    """The part of a batched training log that concerns one seed."""
    if not train_log:
        return {}
    i = train_log["seeds"].index(seed)
    # "kernel": which implementation computed the steps (torch path or fused C++ kernel, chosen at run
    # time): equal to float32 rounding, not bit for bit, so a stored number must say which one it was
    out = {k: train_log[k] for k in ("steps", "wall_s", "device", "dtype", "trainer_version", "path", "kernel")
           if k in train_log}
    out["batched_seeds"] = train_log["seeds"]
    out["final"] = {name: values[i] for name, values in train_log.get("final", {}).items()}
    if "threshold" in train_log:
        out["threshold"] = train_log["threshold"][i]
    return out


def _saved_log(folder: Path | None) -> dict[str, Any]:
    if folder is None:
        return {}
    try:
        cfg = json.loads((folder / "cfg.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return (cfg.get("metadata") or {}).get("training", {})


__all__ = ["CACHE_VERSION", "TrainingData", "activation_data", "epoch_batches", "organism_data", "train_ladder",
           "train_or_load", "training_key"]
