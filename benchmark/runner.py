"""Plans (submission × task × run spec) units, skips finished ones, runs the rest and reports.

A unit's identity is its submission, task, task version, run spec hash and inputs hash (see
:mod:`benchmark.spec`, :mod:`benchmark.submission.identity`): a stored unit is reused only when all
of them match, so a ``--limit`` preview never stands in for a full run, two task seeds are two units,
and changed checkpoint files are recomputed (with a warning; the stale unit moves to ``superseded/``
once the new one is stored). Inputs are prepared by :mod:`benchmark.provision` before the task's
clock starts. A failing unit is recorded with its reason and the run goes on with the others; the
exit code says that something failed.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from benchmark.cache import TaskCache
from benchmark.errors import CanonBenchError, TaskError
from benchmark.provision import SubmissionInputs
from benchmark.results import ResultStore, UnitProvenance, make_rows
from benchmark.spec import RunSpec, build_config, make_spec
from benchmark.submission.identity import inputs_hash
from benchmark.submission.manifest import LoadedManifest
from benchmark.version import BENCHMARK_VERSION, git_sha

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(".canonbench") / "cache"


@dataclass
class UnitOutcome:
    submission: str
    task: str
    status: str  # done | cached | not-applicable | would-run | failed | lost-race | interrupted
    detail: str = ""
    runtime_s: float = 0.0


OOM_HINT = "try a smaller --batch-size, or another --device (cuda for host memory, cpu for GPU memory)"
MAX_DETAIL = 300  # characters of a failure reason in the summary; the log has it whole


@dataclass
class RunSummary:
    run_id: str
    outcomes: list[UnitOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[UnitOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def render(self) -> str:
        """A plain-text summary: what ran, what was cached, what failed and why."""
        lines = [f"run {self.run_id}:"]
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
            detail = " ".join(o.detail.split())  # one line per unit, whatever the exception said
            if len(detail) > MAX_DETAIL:
                detail = detail[: MAX_DETAIL - 1] + "…"
            extra = f" ({detail})" if detail else ""
            took = f" {o.runtime_s:.1f}s" if o.status == "done" else ""
            lines.append(f"  {o.status:<15} {o.submission} × {o.task}{took}{extra}")
        lines.append("  " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if counts else "  nothing to do")
        if self.failed:
            lines.append("  failed units stored nothing; fix the cause and rerun (finished units are skipped)")
        return "\n".join(lines)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGINT) during a run; ``summary`` says what finished before it."""

    def __init__(self, summary: RunSummary, *, terminated: bool = False):
        super().__init__("interrupted")
        self.summary = summary
        self.terminated = terminated


def _release_memory() -> None:
    """After an out-of-memory failure: free what the failed unit held before the next one starts."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _failure_detail(exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0][:200]
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory ({type(exc).__name__}: {first_line}); {OOM_HINT}"
    return f"{type(exc).__name__}: {exc}"


def _model_fields(manifest: LoadedManifest) -> dict[str, Any]:
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


@dataclass
class RunSettings:
    """Run-wide settings that are not part of any spec (where files go, what to show)."""

    results_dir: Path
    cache_dir: Path = DEFAULT_CACHE_DIR
    device: str = "cpu"
    overwrite: bool = False
    quiet: bool = False
    dry_run: bool = False
    skip_activations: bool = False
    activations_factory: Any = None


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
) -> RunSummary:
    """Run every requested task on every manifest, skipping finished units (same spec, same inputs).

    ``seed``, ``limit``, ``dtype``, ``batch_size`` and ``task_options`` make the run spec of each
    task (see :func:`benchmark.spec.make_spec`); ``device`` contributes its class (cpu/cuda).
    ``task_seeds`` (instead of ``seed``) runs each task once per task seed, all seeds of one
    submission in a row so that its SAEs are prepared once (the reruns of the reliability lens).
    ``activations_factory(manifest, cache_dir=, device=, quiet=, dtype=)`` replaces the default
    activation provider (:func:`benchmark.data.activations.provider_for_manifest`).
    """
    from tasks import all_tasks

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
                           activations_factory=activations_factory)
    run_id = f"{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"
    summary = RunSummary(run_id=run_id)
    store = ResultStore(settings.results_dir)
    units = [(m, registry[n], s) for m in manifests for n in names for s in seeds]
    if not dry_run:
        stale = store.remove_stale_temp_files()
        if stale:
            log.info("removed %d temporary file(s) left by an interrupted run", stale)
    bar = tqdm(units, desc="units", disable=quiet, unit="unit")
    current: dict[str, Any] = {}  # the unit in progress, for the interrupt report
    try:
        _run_units(bar, current, summary, store, specs, settings, run_id=run_id)
    except KeyboardInterrupt as stop:
        # finished units are already on disk; report them, and mark the unit that was cut short
        manifest, task_cls, key = current.get("unit", (None, None, None))
        if manifest is not None and len(summary.outcomes) == current.get("outcomes_before"):
            meta = task_cls.metadata
            stored = key is not None and _stored_by(store, manifest.name, meta, key, run_id)
            if stored:  # Ctrl-C came just after the write
                outcome = UnitOutcome(manifest.name, meta.name, "done", "stored just before Ctrl-C")
            else:
                outcome = UnitOutcome(manifest.name, meta.name, "interrupted",
                                      "stopped by Ctrl-C; nothing of this run was stored for this unit")
            summary.outcomes.append(outcome)
        raise RunInterrupted(summary, terminated=type(stop).__name__ == "_Terminated") from None
    finally:
        bar.close()
    return summary


def _stored_by(store: ResultStore, submission: str, meta, key: str, run_id: str) -> bool:
    """Whether the stored unit ``key`` holds rows of this run (not an older result it would replace)."""
    path = store.unit_path(submission, meta.name, meta.version, key)
    if not path.exists():
        return False
    frame = store.read_unit(path)
    return frame is not None and (frame["run_id"] == run_id).all()


def _run_units(bar, current, summary: RunSummary, store: ResultStore, specs: dict[tuple[str, int], RunSpec],
               settings: RunSettings, *, run_id: str) -> None:
    inputs: dict[str, SubmissionInputs] = {}
    fingerprints: dict[str, tuple[str, dict[str, Any]] | CanonBenchError] = {}
    for manifest, task_cls, task_seed in bar:
        meta = task_cls.metadata
        spec = specs[(meta.name, task_seed)]
        current["unit"] = (manifest, task_cls, None)
        current["outcomes_before"] = len(summary.outcomes)  # no outcome yet: the unit Ctrl-C would cut short
        bar.set_postfix_str(f"{manifest.name} × {meta.name}")
        try:
            reason = task_cls.not_applicable(manifest)
        except Exception as exc:  # a buggy check fails its unit, not the run
            summary.outcomes.append(UnitOutcome(manifest.name, meta.name, "failed",
                                                f"applicability check raised {type(exc).__name__}: {exc}"))
            log.error("%s × %s failed: applicability check raised %r", manifest.name, meta.name, exc)
            continue
        if reason:
            summary.outcomes.append(UnitOutcome(manifest.name, meta.name, "not-applicable", reason))
            continue
        if manifest.name not in fingerprints:
            try:
                fingerprints[manifest.name] = inputs_hash(manifest, cache_dir=settings.cache_dir)
            except CanonBenchError as exc:
                fingerprints[manifest.name] = exc
        fingerprint = fingerprints[manifest.name]
        if isinstance(fingerprint, CanonBenchError):
            summary.outcomes.append(UnitOutcome(manifest.name, meta.name, "failed", str(fingerprint)))
            log.error("%s × %s failed: %s", manifest.name, meta.name, fingerprint)
            continue
        in_hash, in_record = fingerprint
        key = f"{spec.hash}-{in_hash}"
        current["unit"] = (manifest, task_cls, key)
        if store.has_unit(manifest.name, meta.name, meta.version, key) and not settings.overwrite:
            summary.outcomes.append(UnitOutcome(manifest.name, meta.name, "cached", spec.describe()))
            continue
        stale = [k for k in store.units_of(manifest.name, meta.name, meta.version) if k.startswith(spec.hash + "-") and k != key]
        if stale:
            log.warning("%s × %s: the submission's inputs changed since the stored result (checkpoint files, recipe "
                        "or model); recomputing", manifest.name, meta.name)
        if settings.dry_run:
            summary.outcomes.append(UnitOutcome(manifest.name, meta.name, "would-run",
                                                spec.describe() + ("; inputs changed" if stale else "")))
            continue
        if manifest.name not in inputs:
            inputs.clear()  # units come grouped by submission: drop the previous one's SAEs before loading more
        sub_inputs = inputs.setdefault(
            manifest.name, SubmissionInputs(manifest, cache_dir=settings.cache_dir, device=settings.device,
                                            dtype=spec.dtype, quiet=settings.quiet,
                                            provider_factory=settings.activations_factory)
        )
        started = time.perf_counter()
        try:
            outcome = _run_unit(manifest, task_cls, spec, sub_inputs, store, settings, run_id=run_id,
                                inputs_hash=in_hash, inputs_record=in_record)
            if outcome.status == "done" and stale:
                moved = store.supersede_units(manifest.name, meta.name, meta.version, key, spec_hash=spec.hash, run_id=run_id)
                outcome.detail = f"inputs changed: recomputed, {len(moved)} stale unit(s) moved to superseded/"
        except KeyboardInterrupt:
            raise
        except CanonBenchError as exc:
            outcome = UnitOutcome(manifest.name, meta.name, "failed", str(exc))
        except Exception as exc:  # one broken unit (MemoryError included) must not lose the others' results
            log.debug("unit %s × %s failed:\n%s", manifest.name, meta.name, traceback.format_exc())
            outcome = UnitOutcome(manifest.name, meta.name, "failed", _failure_detail(exc))
            if outcome.detail.startswith("out of memory"):
                inputs.clear()
                _release_memory()
        if not outcome.runtime_s:
            outcome.runtime_s = time.perf_counter() - started
        if outcome.status == "failed":
            log.error("%s × %s failed: %s", manifest.name, meta.name, outcome.detail)
        summary.outcomes.append(outcome)


def _run_unit(manifest, task_cls, spec: RunSpec, sub_inputs: SubmissionInputs, store: ResultStore,
              settings: RunSettings, *, run_id: str, inputs_hash: str, inputs_record: dict[str, Any]) -> UnitOutcome:
    from tasks.base import TaskInputs, TaskOutput

    meta = task_cls.metadata
    prepared, records, setup_s = sub_inputs.prepare(meta, skip_activations=settings.skip_activations)
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
    fields = _model_fields(manifest)
    extra_prov = dict(output.provenance)
    provenance = UnitProvenance(
        run_id=run_id, submission=manifest.name, submission_kind=manifest.submission.kind,
        local=bool(manifest.submission.is_local), task=meta.name, task_version=meta.version,
        benchmark_version=BENCHMARK_VERSION, git_sha=git_sha(), device=settings.device, dtype=spec.dtype,
        spec=spec.canonical(), spec_hash=spec.hash, inputs=inputs_record, inputs_hash=inputs_hash,
        seeds=list(manifest.submission.seeds), checkpoints=extra_prov.pop("checkpoints", None) or records,
        data_hash=output.data_hash, setup_s=setup_s, **{**fields, **{k: v for k, v in extra_prov.items() if k in fields}},
    )
    rows = make_rows(
        output.metrics, provenance, meta.directions,
        timestamp=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), runtime_s=runtime,
    )
    written = store.write_unit(rows, output.artifacts, overwrite=settings.overwrite)
    status = "done" if written else "lost-race"
    detail = spec.describe() if written else "another run stored this unit first; its rows were kept"
    if written and setup_s >= 1.0:
        detail += f"; inputs prepared in {setup_s:.1f}s"
    return UnitOutcome(manifest.name, meta.name, status, detail, runtime_s=runtime)


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

