"""Computing one planned unit and storing it: the same steps for every executor.

:func:`compute_unit` prepares the unit's inputs (outside the task's clock), runs the task and turns
its output into result rows with full provenance; it writes nothing. :func:`store_unit` hands the
rows to the results store's atomic, first-writer-wins :meth:`~benchmark.results.ResultStore.write_unit`
and moves stale units aside. The local executor calls both in one process; the Ray executor computes
on a worker and stores on the driver.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from benchmark.errors import TaskError
from benchmark.executors.outcome import UnitOutcome
from benchmark.executors.plan import PlannedUnit, RunSettings
from benchmark.provision import SubmissionInputs
from benchmark.results import ResultStore, UnitProvenance, make_rows
from benchmark.spec import build_config
from benchmark.submission.manifest import LoadedManifest
from benchmark.version import BENCHMARK_VERSION, git_sha


@dataclass
class ComputedUnit:
    """A unit's result rows and artifacts, computed and not yet stored."""

    rows: pd.DataFrame
    artifacts: dict[str, pd.DataFrame]
    runtime_s: float  # the task's computation only
    setup_s: float  # preparing its inputs


def model_fields(manifest: LoadedManifest) -> dict[str, Any]:
    """The model and SAE columns of a unit's rows, from its manifest."""
    sub = manifest.submission
    model = getattr(sub, "model", None)
    if sub.kind == "checkpoints":
        arch, width = sub.sae.architecture, sub.sae.width
    else:
        arch, width = sub.recipe.architecture, sub.recipe.width
    return {
        "model": model.name if model else None,
        "model_revision": (model.revision or (f"package:{model.package}" if model.package else f"local:{model.local}")) if model else None,
        "hook": model.hook if model else None,
        "architecture": arch,
        "width": width,
    }


def compute_unit(unit: PlannedUnit, sub_inputs: SubmissionInputs, settings: RunSettings, *, run_id: str) -> ComputedUnit:
    """Prepare ``unit``'s inputs through ``sub_inputs``, run its task and build its rows.

    Raises whatever preparing or the task raised; :class:`TaskError` when the task returned no metrics."""
    from benchmark.cache import TaskCache  # imports torch: a cluster driver that only plans and stores needs none
    from tasks.base import TaskInputs, TaskOutput

    task_cls, manifest, spec = unit.task_cls, unit.manifest, unit.spec
    meta = task_cls.metadata
    prepared, records, setup_s = sub_inputs.prepare(meta, skip_activations=settings.skip_activations,
                                                    download_models=settings.download_models)
    task = task_cls()
    config = build_config(task_cls.config_class, spec.config, task=meta.name)
    secrets = {name: os.environ[name] for name in meta.secrets if os.environ.get(name)}
    task_inputs = TaskInputs(
        manifest=manifest, spec=spec, config=config, device=settings.device, quiet=settings.quiet,
        cache=TaskCache(settings.cache_dir / "tasks", meta.name), secrets=secrets, **prepared,
    )
    started = time.perf_counter()
    output = task.run(task_inputs)
    runtime = time.perf_counter() - started
    if not isinstance(output, TaskOutput) or not output.metrics:
        raise TaskError(f"task {meta.name} v{meta.version} returned no metric values (got {type(output).__name__})")
    fields = model_fields(manifest)
    extra_prov = dict(output.provenance)
    checkpoints = extra_prov.pop("checkpoints", None)
    # model fields the task knows better (synthetic organisms) override the manifest's; any other key
    # (kernels chosen at run time, ...) is kept with the rows instead of being dropped
    computation = {k: v for k, v in extra_prov.items() if k not in fields}
    provenance = UnitProvenance(
        run_id=run_id, submission=manifest.name, submission_kind=manifest.submission.kind,
        local=bool(manifest.submission.is_local), task=meta.name, task_version=meta.version,
        benchmark_version=BENCHMARK_VERSION, git_sha=git_sha(),
        device=settings.device, dtype=spec.dtype, spec=spec.canonical(), spec_hash=spec.hash,
        inputs=unit.inputs_record, inputs_hash=unit.inputs_hash, seeds=list(manifest.submission.seeds),
        checkpoints=checkpoints or records, data_hash=output.data_hash, setup_s=setup_s, computation=computation,
        **{**fields, **{k: v for k, v in extra_prov.items() if k in fields}},
    )
    rows = make_rows(
        output.metrics, provenance, meta.directions,
        timestamp=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), runtime_s=runtime,
    )
    return ComputedUnit(rows, dict(output.artifacts), runtime, setup_s)


def store_unit(computed: ComputedUnit, unit: PlannedUnit, store: ResultStore, settings: RunSettings, *,
               run_id: str) -> UnitOutcome:
    """Store a computed unit (first writer wins unless ``overwrite``) and move the units it makes
    stale to ``superseded/``; returns the unit's outcome (done or lost-race)."""
    meta = unit.meta
    written = store.write_unit(computed.rows, computed.artifacts, overwrite=settings.overwrite)
    status = "done" if written else "lost-race"
    detail = unit.spec.describe() if written else "another run stored this unit first; its rows were kept"
    if written and computed.setup_s >= 1.0:
        detail += f"; inputs prepared in {computed.setup_s:.1f}s"
    outcome = UnitOutcome(unit.manifest.name, meta.name, status, detail, runtime_s=computed.runtime_s)
    if written and unit.stale:
        moved = store.supersede_units(unit.manifest.name, meta.name, meta.version, unit.key, spec_hash=unit.spec.hash,
                                      run_id=run_id)
        outcome.detail = f"inputs changed: recomputed, {len(moved)} stale unit(s) moved to superseded/"
    return outcome


def stored_by(store: ResultStore, submission: str, meta, key: str, run_id: str) -> bool:
    """Whether the stored unit ``key`` holds rows of this run (not an older result it would replace)."""
    path = store.unit_path(submission, meta.name, meta.version, key)
    if not path.exists():
        return False
    frame = store.read_unit(path)
    return frame is not None and (frame["run_id"] == run_id).all()


def release_memory() -> None:
    """After an out-of-memory failure: free what the failed unit held before the next one starts."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["ComputedUnit", "compute_unit", "model_fields", "release_memory", "store_unit", "stored_by"]
