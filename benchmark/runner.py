"""Plans (submission × task × run spec) units, skips finished ones, runs the rest and reports.

A unit's identity is its submission, task, task version, run spec hash and inputs hash (see
:mod:`benchmark.spec`, :mod:`benchmark.submission.identity`): a stored unit is reused only when all
of them match, so a ``--limit`` preview never stands in for a full run, two task seeds are two units,
and changed checkpoint files are recomputed (with a warning; the stale unit moves to ``superseded/``
once the new one is stored). Inputs are prepared by :mod:`benchmark.provision` before the task's
clock starts. A failing unit is recorded with its reason and the run goes on with the others; the
exit code says that something failed.

The planning is shared (:mod:`benchmark.executors.plan`); an executor runs the planned units: the
local one in this process (default), the Ray one on a cluster (:mod:`benchmark.executors.ray`).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from benchmark.errors import CanonBenchError
from benchmark.executors import EXECUTORS
from benchmark.executors.outcome import MAX_DETAIL, OOM_HINT, RunInterrupted, RunSummary, UnitOutcome
from benchmark.executors.plan import DEFAULT_CACHE_DIR, Planner, RunSettings
from benchmark.results import ResultStore
from benchmark.spec import RunSpec, make_spec
from benchmark.submission.manifest import LoadedManifest

log = logging.getLogger(__name__)

#: How often the Ray executor reruns a unit whose worker died (a crash, a kill, a lost node).
DEFAULT_MAX_RETRIES = 2


def build_specs(registry: dict[str, type], names: list[str], *, seed: int = 0, limit: int | None = None,
                dtype: str = "float32", device: str = "cpu", batch_size: int | None = None,
                task_options: dict[str, dict[str, Any]] | None = None) -> dict[str, RunSpec]:
    """One :class:`RunSpec` per task name; ``task_options`` maps task name → config overrides."""
    task_options = dict(task_options or {})
    unknown = sorted(set(task_options) - set(registry))
    if unknown:
        raise CanonBenchError(f"options for unknown task(s) {', '.join(unknown)}", field="--task-option")
    return {n: make_spec(registry[n], seed=seed, limit=limit, dtype=dtype, device=device, batch_size=batch_size,
                         overrides=task_options.get(n)) for n in names}


def run_benchmark(
    manifests: list[LoadedManifest],
    task_names: list[str] | None,
    *,
    results_dir: Path,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    task_seeds: list[int] | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    task_options: dict[str, dict[str, Any]] | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    dry_run: bool = False,
    skip_activations: bool = False,
    activations_factory=None,
    download_models: bool = False,
    executor: str = "local",
    address: str | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> RunSummary:
    """Run every requested task on every manifest, skipping finished units (same spec, same inputs).

    ``seed``, ``limit``, ``dtype``, ``batch_size`` and ``task_options`` make the run spec of each
    task (see :func:`benchmark.spec.make_spec`); ``device`` contributes its class (cpu/cuda).
    ``task_seeds`` (instead of ``seed``) runs each task once per task seed, all seeds of one
    submission in a row so that its SAEs are prepared once (the reruns of the reliability lens).
    ``activations_factory(manifest, cache_dir=, device=, quiet=, dtype=)`` replaces the default
    activation provider (:func:`benchmark.data.activations.provider_for_manifest`).

    ``executor``: ``"local"`` runs the units one after another in this process; ``"ray"`` submits
    them to a Ray cluster (``address``: ``None`` starts a local one or joins ``RAY_ADDRESS``,
    ``"auto"`` joins the cluster this node belongs to, ``"ray://host:port"`` a remote one), rerunning
    a unit whose worker died up to ``max_retries`` times. Both store the same rows.
    """
    from tasks import all_tasks

    if executor not in EXECUTORS:
        raise CanonBenchError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}", field="--executor")
    if address is not None and executor != "ray":
        raise CanonBenchError("--address names a Ray cluster; add --executor ray", field="--address")
    if max_retries < 0:
        raise CanonBenchError(f"must be 0 or more, got {max_retries}", field="--max-retries")
    if executor == "ray" and not dry_run:  # before anything is planned or shown: Ray is an optional extra
        from benchmark.executors.ray import import_ray

        import_ray()
    registry = all_tasks()
    names = list(registry) if not task_names else task_names
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise CanonBenchError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(registry)}", field="--tasks")
    seeds = list(task_seeds) if task_seeds else [seed]
    specs = {(name, s): spec for s in seeds
             for name, spec in build_specs(registry, names, seed=s, limit=limit, dtype=dtype, device=device,
                                           batch_size=batch_size, task_options=task_options).items()}
    settings = RunSettings(results_dir=Path(results_dir), cache_dir=Path(cache_dir), device=device, overwrite=overwrite,
                           quiet=quiet, dry_run=dry_run, skip_activations=skip_activations,
                           activations_factory=activations_factory, download_models=download_models)
    run_id = f"{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"
    summary = RunSummary(run_id=run_id)
    store = ResultStore(settings.results_dir)
    # all task seeds of one submission in a row, so that its SAEs are prepared once
    units = [(m, registry[n], s) for m in manifests for n in names for s in seeds]
    if not dry_run:
        stale = store.remove_stale_temp_files()
        if stale:
            log.info("removed %d temporary file(s) left by an interrupted run", stale)
    planner = Planner(store, specs, settings)
    bar = tqdm(total=len(units), desc="units", disable=quiet, unit="unit")
    try:
        if executor == "ray" and not dry_run:  # a dry run only plans: no cluster needed
            from benchmark.executors.ray import run_ray

            run_ray(units, planner, store, settings, summary, run_id=run_id, bar=bar, address=address,
                    max_retries=max_retries)
        else:
            from benchmark.executors.local import run_local

            run_local(units, planner, store, settings, summary, run_id=run_id, bar=bar)
    finally:
        bar.close()
    return summary


def parse_task_seeds(text: str) -> list[int]:
    """``"0-4"`` → [0, 1, 2, 3, 4]; ``"0,2,7-8"`` → [0, 2, 7, 8] (sorted, unique, non-negative)."""
    seeds: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        try:
            if dash:
                a, b = int(low), int(high)
                if b < a:
                    raise ValueError
                seeds.update(range(a, b + 1))
            else:
                seeds.add(int(part))
        except ValueError:
            raise CanonBenchError(f"expected seeds like 0-4 or 0,1,5, got {text!r}", field="--task-seeds") from None
    if not seeds or min(seeds) < 0:
        raise CanonBenchError(f"expected non-negative seeds like 0-4, got {text!r}", field="--task-seeds")
    return sorted(seeds)



__all__ = ["DEFAULT_CACHE_DIR", "DEFAULT_MAX_RETRIES", "MAX_DETAIL", "OOM_HINT", "RunInterrupted", "RunSettings",
           "RunSummary", "UnitOutcome", "build_specs", "parse_task_seeds", "run_benchmark"]
