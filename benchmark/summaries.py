"""Cross-submission summaries: statistics over the stored rows, computed once and stored as results.

A task declares its summaries in its metadata (:class:`tasks.base.SummarySpec`: name, version,
columns and a pure function of the task's rows). :func:`summarize` runs every declared summary
over the rows it asks for: the rows the leaderboard shows (one unit per submission and task, see
:func:`benchmark.results.choose_shown_units`), or, for ``rows="task_seeds"``, every stored unit that
differs from a shown one only in its task seed (:func:`benchmark.results.task_seed_family`: what the
reliability lens needs to measure evaluation noise). A summary that declares ``inputs``
(:class:`tasks.base.SummaryInput`) is also given the stored artifacts it names, of its own task or of
another task for the same submissions (the shown unit of each submission, read-only), so two tasks'
results are joined here and never inside a task. It stores each table under
``summaries/<task>/<name>/v<version>.parquet`` with provenance columns (``summary``,
``summary_version``, ``task_version``, ``run_id``, ``computed_at``, ``git_sha``, ``units``: the
unit keys it was computed from, those whose artifacts it read included). The leaderboard reads the
stored table; it never computes one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import pandas as pd

from benchmark.errors import CanonBenchError
from benchmark.results import ResultStore, choose_shown_units, task_seed_family
from benchmark.version import git_sha

log = logging.getLogger(__name__)

PROVENANCE_COLUMNS = ("summary", "summary_version", "task", "task_version", "run_id", "computed_at", "git_sha", "units")


@dataclass
class SummaryOutcome:
    task: str
    name: str
    version: str
    rows: int
    path: Path | None = None
    error: str | None = None


def summarize(results_dir: Path | str, *, registry: dict[str, type] | None = None,
              tasks: list[str] | None = None) -> list[SummaryOutcome]:
    """Compute and store every declared summary (of ``tasks``, default all) from the store."""
    if registry is None:
        from tasks import all_tasks

        registry = all_tasks()
    store = ResultStore(results_dir)
    stored = store.read()
    shown = choose_shown_units(stored)
    family = task_seed_family(stored, shown).copy()
    family["shown_unit"] = family["unit_key"].isin(set(shown["unit_key"]))  # which rerun the leaderboard shows
    run_id = f"summary-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"
    selections = {"shown": shown, "task_seeds": family}
    loaded: dict[tuple[str, str], tuple[pd.DataFrame, list[str]]] = {}  # each stored input read once
    outcomes = []
    for name, cls in registry.items():
        if tasks and name not in tasks:
            continue
        meta = cls.metadata
        for spec in meta.summaries:
            source = selections[spec.rows]
            rows = source[(source["task"] == name) & (source["task_version"] == meta.version)].reset_index(drop=True)
            try:
                units = set(rows["unit_key"].astype(str))
                if spec.inputs:
                    artifacts = {}
                    for item in spec.inputs:
                        key = (item.task, item.artifact)
                        if key not in loaded:
                            loaded[key] = read_input_artifact(store, shown, item.task, item.artifact, registry)
                        artifacts[key] = loaded[key][0].copy()
                        units |= set(loaded[key][1])
                    table = spec.compute(rows.copy(), MappingProxyType(artifacts))
                else:
                    table = spec.compute(rows.copy())
                missing = [c for c in spec.columns if c not in table.columns]
                if missing:
                    raise CanonBenchError(f"returned no column(s) {', '.join(missing)}", field=f"{name}.{spec.name}")
                table = table[list(spec.columns)].copy()
                provenance = {
                    "summary": spec.name, "summary_version": spec.version, "task": name, "task_version": meta.version,
                    "run_id": run_id, "computed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "git_sha": git_sha() or "", "units": json.dumps(sorted(units)),
                }
                for column, value in provenance.items():
                    table[column] = value
                path = store.write_summary(name, spec.name, spec.version, table, run_id=run_id)
                outcomes.append(SummaryOutcome(name, spec.name, spec.version, len(table), path=path))
            except Exception as exc:  # one broken summary must not stop the others
                log.error("summary %s/%s failed: %s", name, spec.name, exc)
                outcomes.append(SummaryOutcome(name, spec.name, spec.version, 0, error=f"{type(exc).__name__}: {exc}"))
    return outcomes


def read_input_artifact(store: ResultStore, shown: pd.DataFrame, task: str, artifact: str,
                        registry: Mapping[str, type] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The artifact ``artifact`` of every submission's shown unit of ``task`` (its current version in
    ``registry``, else in :func:`tasks.all_tasks`), stacked with ``submission`` and ``unit_key`` first,
    and the keys of the units consulted. No rows (with the declared columns) when none is stored; a
    task or artifact that no registered task declares raises."""
    cls: Any = (registry or {}).get(task)
    if cls is None:
        from tasks import all_tasks

        cls = all_tasks().get(task)
    if cls is None:
        raise CanonBenchError(f"reads artifact {artifact!r} of task {task!r}, which is not registered", field="inputs")
    meta = cls.metadata
    try:
        declared = meta.artifact(artifact).columns
    except KeyError:
        raise CanonBenchError(f"reads artifact {artifact!r}, which task {task!r} does not declare",
                              field="inputs") from None
    units = shown[(shown["task"] == task) & (shown["task_version"] == meta.version)].drop_duplicates("unit_key")
    frames = []
    for row in units.sort_values(["submission", "unit_key"]).itertuples(index=False):
        frame = store.read_artifact(row, artifact)
        if frame is None:
            continue
        clash = {"submission", "unit_key"} & set(frame.columns)
        if clash:
            raise CanonBenchError(f"artifact {artifact!r} of task {task!r} has column(s) {sorted(clash)} that the "
                                  "stacked table adds", field="inputs")
        frame = frame.copy()
        frame.insert(0, "unit_key", str(row.unit_key))
        frame.insert(0, "submission", str(row.submission))
        frames.append(frame)
    columns = ["submission", "unit_key", *declared]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return table, sorted(units["unit_key"].astype(str))


def render_outcomes(outcomes: list[SummaryOutcome]) -> str:
    lines = []
    for o in outcomes:
        if o.error:
            lines.append(f"  failed   {o.task}/{o.name} v{o.version}: {o.error}")
        else:
            lines.append(f"  stored   {o.task}/{o.name} v{o.version}: {o.rows} row(s)")
    return "summaries:\n" + ("\n".join(lines) if lines else "  none declared")


def read_summaries(store: ResultStore, registry: dict[str, type]) -> dict[tuple[str, str], pd.DataFrame]:
    """``{(task, summary name): stored table}`` for the current versions (absent ones left out)."""
    out = {}
    for name, cls in registry.items():
        for spec in cls.metadata.summaries:
            table = store.read_summary(name, spec.name, spec.version)
            if table is not None:
                out[(name, spec.name)] = table
    return out


__all__ = ["PROVENANCE_COLUMNS", "SummaryOutcome", "read_input_artifact", "read_summaries", "render_outcomes",
           "summarize"]
