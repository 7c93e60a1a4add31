"""The local executor: every planned unit, one after another, in this process (the default).

Units come grouped by submission, and one :class:`~benchmark.provision.SubmissionInputs` serves all
the tasks of a submission, so its SAEs and activations are prepared once; the previous submission's
inputs are dropped before the next one's are loaded. A failing unit is recorded with its reason and
the run goes on; Ctrl-C stops the run with the finished units stored and the cut-short one reported.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from benchmark.errors import CanonBenchError
from benchmark.executors.outcome import RunInterrupted, RunSummary, UnitOutcome, failure_detail
from benchmark.executors.plan import PlannedUnit, Planner, RunSettings
from benchmark.executors.unit import compute_unit, release_memory, store_unit, stored_by
from benchmark.provision import SubmissionInputs
from benchmark.results import ResultStore

log = logging.getLogger(__name__)


def run_local(units: list[tuple[Any, type, int]], planner: Planner, store: ResultStore, settings: RunSettings,
              summary: RunSummary, *, run_id: str, bar) -> None:
    """Plan and run ``units`` (manifest, task class, task seed) in order, appending an outcome per unit to
    ``summary``; raises :class:`RunInterrupted` on Ctrl-C (or SIGTERM through the CLI)."""
    current: dict[str, Any] = {}  # the unit in progress, for the interrupt report
    try:
        _run_units(units, planner, store, settings, summary, current, run_id=run_id, bar=bar)
    except KeyboardInterrupt as stop:
        # finished units are already on disk; report them, and mark the unit that was cut short
        manifest, task_cls, key = current.get("unit", (None, None, None))
        if manifest is not None and len(summary.outcomes) == current.get("outcomes_before"):
            meta = task_cls.metadata
            if key is not None and stored_by(store, manifest.name, meta, key, run_id):  # Ctrl-C came just after the write
                outcome = UnitOutcome(manifest.name, meta.name, "done", "stored just before Ctrl-C")
            else:
                outcome = UnitOutcome(manifest.name, meta.name, "interrupted",
                                      "stopped by Ctrl-C; nothing of this run was stored for this unit")
            summary.outcomes.append(outcome)
        raise RunInterrupted(summary, terminated=type(stop).__name__ == "_Terminated") from None


def _run_units(units, planner: Planner, store: ResultStore, settings: RunSettings, summary: RunSummary,
               current: dict[str, Any], *, run_id: str, bar) -> None:
    inputs: dict[str, SubmissionInputs] = {}
    for manifest, task_cls, task_seed in units:
        current["unit"] = (manifest, task_cls, None)
        current["outcomes_before"] = len(summary.outcomes)  # no outcome yet: the unit Ctrl-C would cut short
        bar.set_postfix_str(f"{manifest.name} × {task_cls.metadata.name}")
        planned = planner.plan(manifest, task_cls, task_seed)
        if not isinstance(planned, PlannedUnit):
            summary.outcomes.append(planned)
            bar.update(1)
            continue
        current["unit"] = (manifest, task_cls, planned.key)
        if manifest.name not in inputs:
            inputs.clear()  # units come grouped by submission: drop the previous one's SAEs before loading more
        sub_inputs = inputs.setdefault(
            manifest.name, SubmissionInputs(manifest, cache_dir=settings.cache_dir, device=settings.device,
                                            dtype=planned.spec.dtype, quiet=settings.quiet,
                                            provider_factory=settings.activations_factory)
        )
        started = time.perf_counter()
        try:
            computed = compute_unit(planned, sub_inputs, settings, run_id=run_id)
            outcome = store_unit(computed, planned, store, settings, run_id=run_id)
        except KeyboardInterrupt:
            raise
        except CanonBenchError as exc:
            outcome = UnitOutcome(manifest.name, task_cls.metadata.name, "failed", str(exc))
        except Exception as exc:  # one broken unit (MemoryError included) must not lose the others' results
            log.debug("unit %s failed:\n%s", planned.label, traceback.format_exc())
            outcome = UnitOutcome(manifest.name, task_cls.metadata.name, "failed", failure_detail(exc))
            if outcome.detail.startswith("out of memory"):
                inputs.clear()
                release_memory()
        if not outcome.runtime_s:
            outcome.runtime_s = time.perf_counter() - started
        if outcome.status == "failed":
            log.error("%s failed: %s", planned.label, outcome.detail)
        summary.outcomes.append(outcome)
        bar.update(1)


__all__ = ["run_local"]
