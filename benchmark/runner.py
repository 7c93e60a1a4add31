"""Plans (submission × task) units, skips finished ones, runs the rest and reports.

A failing unit is recorded with its reason and the run goes on with the others; the exit code says
that something failed. Finished units are never recomputed unless ``overwrite`` is asked for.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from benchmark.errors import CanonBenchError, TaskError
from benchmark.submission.manifest import LoadedManifest
from benchmark.results import ResultStore, UnitProvenance, make_rows
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

    def __init__(self, summary: RunSummary):
        super().__init__("interrupted")
        self.summary = summary


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


class SubmissionInputs:
    """Loads a submission's SAEs (and their provenance) once, on first use, for every task."""

    def __init__(self, manifest: LoadedManifest, *, device: str, cache_dir: Path, quiet: bool):
        self.manifest = manifest
        self.device = device
        self.cache_dir = cache_dir
        self.quiet = quiet
        self._saes: dict[int, Any] | None = None
        self.checkpoint_records: list[dict[str, Any]] = []

    def load_saes(self) -> dict[int, Any]:
        if self._saes is None:
            self._saes, self.checkpoint_records = load_submission_saes(
                self.manifest, device=self.device, cache_dir=self.cache_dir, quiet=self.quiet
            )
        return self._saes


def load_submission_saes(
    manifest: LoadedManifest, *, device: str, cache_dir: Path, quiet: bool
) -> tuple[dict[int, Any], list[dict[str, Any]]]:
    """``{seed: SAE}`` plus one provenance record per checkpoint.

    Checkpoints submissions are resolved through :mod:`benchmark.submission.sources` and loaded through
    :mod:`benchmark.sae.checkpoints`; recipes that train on a model are trained (cached) by
    :mod:`benchmark.training.model_recipes`. Synthetic recipes have no SAEs outside the synthetic task.
    """
    sub = manifest.submission
    if sub.kind == "checkpoints":
        from benchmark.sae.checkpoints import load_sae
        from benchmark.submission.sources import resolve_checkpoint

        saes, records = {}, []
        for spec in sub.checkpoints:
            resolved = resolve_checkpoint(manifest, spec, cache_dir=cache_dir)
            fmt = None if sub.sae.format == "auto" else sub.sae.format
            sae = load_sae(resolved.path, format=fmt, device=device)
            _check_against_manifest(sae, manifest, resolved.path)
            saes[spec.seed] = sae
            records.append(resolved.record())
        return saes, records
    if sub.recipe.trains_on == "model":
        from benchmark.training.model_recipes import train_recipe_saes

        return train_recipe_saes(manifest, cache_dir=cache_dir, device=device, quiet=quiet)
    raise TaskError("synthetic recipes are trained inside the synthetic task only", file=manifest.path, field="recipe.trains_on")


def _check_against_manifest(sae: Any, manifest: LoadedManifest, path: Path) -> None:
    spec = manifest.submission.sae
    if sae.d_sae != spec.width:
        raise CanonBenchError(f"checkpoint has d_sae={sae.d_sae} but the manifest says {spec.width}", file=manifest.path, field="sae.width")
    if spec.d_in is not None and sae.d_in != spec.d_in:
        raise CanonBenchError(f"checkpoint has d_in={sae.d_in} but the manifest says {spec.d_in}", file=manifest.path, field="sae.d_in")


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


def run_benchmark(
    manifests: list[LoadedManifest],
    task_names: list[str] | None,
    *,
    results_dir: Path,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    overwrite: bool = False,
    quiet: bool = False,
    dry_run: bool = False,
    options: dict[str, Any] | None = None,
    activations_factory: Callable[[LoadedManifest], Any] | None = None,
) -> RunSummary:
    """Run every requested task on every manifest, skipping finished units.

    ``activations_factory(manifest)`` builds the activation provider for tasks that need one; by
    default :func:`benchmark.data.activations.provider_for_manifest` is used.
    """
    from tasks import all_tasks

    registry = all_tasks()
    names = list(registry) if not task_names else task_names
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise CanonBenchError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(registry)}", field="--tasks")
    run_id = f"{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"
    summary = RunSummary(run_id=run_id)
    store = ResultStore(results_dir)
    cache_dir = Path(cache_dir)
    units = [(m, registry[n]()) for m in manifests for n in names]
    if not dry_run:
        stale = store.remove_stale_temp_files()
        if stale:
            log.info("removed %d temporary file(s) left by an interrupted run", stale)
    bar = tqdm(units, desc="units", disable=quiet, unit="unit")
    current: dict[str, Any] = {}  # the unit in progress, for the interrupt report
    try:
        _run_units(bar, current, summary, store, run_id=run_id, device=device, dtype=dtype, seed=seed, quiet=quiet,
                   cache_dir=cache_dir, overwrite=overwrite, dry_run=dry_run, options=options,
                   activations_factory=activations_factory)
    except KeyboardInterrupt:
        # finished units are already on disk; report them, and mark the unit that was cut short
        manifest, task = current.get("unit", (None, None))
        if manifest is not None and not any(
            o.submission == manifest.name and o.task == task.metadata.name for o in summary.outcomes
        ):
            meta = task.metadata
            if store.has_unit(manifest.name, meta.name, meta.version):  # Ctrl-C came just after the write
                outcome = UnitOutcome(manifest.name, meta.name, "done", "stored just before Ctrl-C")
            else:
                outcome = UnitOutcome(manifest.name, meta.name, "interrupted", "stopped by Ctrl-C; nothing of this unit was stored")
            summary.outcomes.append(outcome)
        raise RunInterrupted(summary) from None
    finally:
        bar.close()
    return summary


def _run_units(bar, current, summary, store, *, run_id, device, dtype, seed, quiet, cache_dir, overwrite, dry_run,
               options, activations_factory) -> None:
    inputs: dict[str, SubmissionInputs] = {}
    for manifest, task in bar:
        meta = task.metadata
        current["unit"] = (manifest, task)
        bar.set_postfix_str(f"{manifest.name} × {meta.name}")
        try:
            reason = task.not_applicable(manifest)
        except Exception as exc:  # a buggy check fails its unit, not the run
            summary.outcomes.append(UnitOutcome(manifest.name, meta.name, "failed",
                                                f"applicability check raised {type(exc).__name__}: {exc}"))
            log.error("%s × %s failed: applicability check raised %r", manifest.name, meta.name, exc)
            continue
        if reason:
            summary.outcomes.append(UnitOutcome(manifest.name, meta.name, "not-applicable", reason))
            continue
        if store.has_unit(manifest.name, meta.name, meta.version) and not overwrite:
            summary.outcomes.append(UnitOutcome(manifest.name, meta.name, "cached"))
            continue
        if dry_run:
            summary.outcomes.append(UnitOutcome(manifest.name, meta.name, "would-run"))
            continue
        if manifest.name not in inputs:
            inputs.clear()  # units come grouped by submission: drop the previous one's SAEs before loading more
        sub_inputs = inputs.setdefault(
            manifest.name, SubmissionInputs(manifest, device=device, cache_dir=cache_dir, quiet=quiet)
        )
        started = time.perf_counter()
        try:
            outcome = _run_unit(
                manifest, task, sub_inputs, store,
                run_id=run_id, device=device, dtype=dtype, seed=seed, quiet=quiet,
                cache_dir=cache_dir, overwrite=overwrite, options=options or {},
                activations_factory=activations_factory,
            )
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
        outcome.runtime_s = time.perf_counter() - started
        if outcome.status == "failed":
            log.error("%s × %s failed: %s", manifest.name, meta.name, outcome.detail)
        summary.outcomes.append(outcome)


def _run_unit(manifest, task, sub_inputs, store, *, run_id, device, dtype, seed, quiet, cache_dir,
              overwrite, options, activations_factory) -> UnitOutcome:
    from tasks.base import TaskContext, TaskOutput

    meta = task.metadata
    sub = manifest.submission
    activations = None
    optional_activations = getattr(meta, "uses_activations", False) and getattr(sub, "model", None) is not None
    if meta.needs_activations:
        if activations_factory is None:
            from benchmark.data.activations import provider_for_manifest as activations_factory
        activations = activations_factory(manifest, cache_dir=cache_dir, device=device, quiet=quiet)
    elif optional_activations:
        try:
            if activations_factory is None:
                from benchmark.data.activations import provider_for_manifest as activations_factory
            activations = activations_factory(manifest, cache_dir=cache_dir, device=device, quiet=quiet)
        except Exception as exc:  # optional input: the task runs on weights alone
            log.warning("%s × %s: no activations (%s); running without them", manifest.name, meta.name, exc)
            activations = None
    has_saes = sub.kind == "checkpoints" or sub.recipe.trains_on == "model"
    ctx = TaskContext(
        manifest=manifest, device=device, dtype=dtype, seed=seed, quiet=quiet, cache_dir=cache_dir,
        options=dict(options), load_saes=sub_inputs.load_saes if has_saes else None, activations=activations,
    )
    started = time.perf_counter()
    output = task.run(ctx)
    runtime = time.perf_counter() - started
    if not isinstance(output, TaskOutput) or not output.metrics:
        raise TaskError(f"task {meta.name} v{meta.version} returned no metric values (got {type(output).__name__})")
    fields = _model_fields(manifest)
    extra_prov = dict(output.provenance)
    provenance = UnitProvenance(
        run_id=run_id, submission=manifest.name, submission_kind=sub.kind, local=bool(sub.is_local),
        task=meta.name, task_version=meta.version, benchmark_version=BENCHMARK_VERSION, git_sha=git_sha(),
        device=device, dtype=dtype, seeds=list(sub.seeds),
        checkpoints=extra_prov.pop("checkpoints", None) or sub_inputs.checkpoint_records,
        data_hash=output.data_hash, **{**fields, **{k: v for k, v in extra_prov.items() if k in fields}},
    )
    rows = make_rows(
        output.metrics, provenance, meta.directions,
        timestamp=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), runtime_s=runtime,
    )
    written = store.write_unit(rows, output.artifacts, overwrite=overwrite)
    status = "done" if written else "lost-race"
    detail = "" if written else "another run stored this unit first; its rows were kept"
    return UnitOutcome(manifest.name, meta.name, status, detail)
