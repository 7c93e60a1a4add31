"""Collecting what the pages show: the shown units of the results store, the manifests, the tasks'
metadata and their stored summaries, as one :class:`Site` model (no metric is computed here)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from benchmark.results import ResultStore, choose_shown_units
from benchmark.submission.manifest import LoadedManifest, collect_manifests
from benchmark.summaries import read_summaries
from leaderboard.cells import NOT_RUN, Cell, Table, metric_cell, slug, subset_cell

log = logging.getLogger(__name__)

#: Metric (subset "all") giving a submission's L0 for every "vs L0" plot and the overview's L0
#: column; taken from the first task (in registry order) whose shown rows report it.
L0_METRIC = "l0"


@dataclass
class SubmissionInfo:
    name: str
    slug: str
    manifest: LoadedManifest | None
    title: str
    kind: str
    local: bool
    model: str
    hook: str
    architecture: str
    width: int | None
    seeds: list[int]


@dataclass
class TaskInfo:
    name: str
    slug: str
    cls: type
    meta: Any  # TaskMetadata
    rows: pd.DataFrame  # the shown unit's rows of each submission, current version
    all_rows: pd.DataFrame  # every stored row of this task (all versions, specs and units)
    summaries: dict[str, pd.DataFrame] = field(default_factory=dict)  # summary name → stored table


@dataclass
class Site:
    results: pd.DataFrame  # every stored row (the downloads)
    tasks: dict[str, TaskInfo]
    submissions: dict[str, SubmissionInfo]
    l0: dict[str, tuple[float, float | None, str]]
    unregistered_tasks: list[str]
    store: ResultStore
    #: (submission, task) → the shown unit's rows (of every task version) as plain tuples
    index: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    applicable: dict[tuple[str, str], str | None] = field(default_factory=dict)
    #: (task, metric, subset, submission) → the stored rank-group record (reliability lens)
    ranks: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    #: task → measures whose stored rank groups no longer match the shown scores (not shown; run summarize)
    stale_ranks: dict[str, list[str]] = field(default_factory=dict)
    pages: dict[str, str] = field(default_factory=dict)  # relative path → HTML
    downloads: list[Table] = field(default_factory=list)
    figure_data: list[tuple[str, pd.DataFrame]] = field(default_factory=list)


def load_manifest_map(submissions_dir: Path | str | list[Path | str] | tuple | None) -> dict[str, LoadedManifest]:
    """The manifests under one or several folders (or files), by name. A folder that does not exist
    and a manifest that does not load are reported (one warning line each) and left out: those
    submissions are described from their result rows only. A name found twice keeps the first."""
    if submissions_dir is None:
        return {}
    paths = [Path(p) for p in (submissions_dir if isinstance(submissions_dir, (list, tuple)) else [submissions_dir])]
    present = []
    for folder in paths:
        if folder.exists():
            present.append(folder)
        else:
            log.warning("submissions folder %s not found: submissions are described from their result rows only", folder)
    if not present:
        return {}
    manifests, problems = collect_manifests(present)
    for problem in problems:
        log.warning("%s (left out: that submission is described from its result rows only)", " ".join(str(problem).split()))
    return {m.name: m for m in manifests}


def collect(store: ResultStore, manifests: dict[str, LoadedManifest], registry: Mapping[str, type]) -> Site:
    """The site model: every stored row for the downloads, one shown unit per (submission, task)
    for the tables (:func:`benchmark.results.choose_shown_units`), and the stored summaries."""
    results = store.read()
    shown = choose_shown_units(results)
    summaries = read_summaries(store, dict(registry))
    task_infos: dict[str, TaskInfo] = {}
    for name, cls in registry.items():
        meta = cls.metadata
        all_rows = results[results["task"] == name].reset_index(drop=True)
        rows = shown[(shown["task"] == name) & (shown["task_version"] == meta.version)].reset_index(drop=True)
        task_summaries = {spec.name: summaries[(name, spec.name)] for spec in meta.summaries if (name, spec.name) in summaries}
        task_infos[name] = TaskInfo(name, slug(name), cls, meta, rows, all_rows, task_summaries)
    unregistered = sorted(set(results["task"].dropna()) - set(task_infos))
    names = sorted(set(manifests) | set(results["submission"].dropna()))
    submissions = {n: _submission_info(n, manifests.get(n), results[results["submission"] == n]) for n in names}
    site = Site(results, task_infos, submissions, _l0_by_submission(task_infos, shown, unregistered), unregistered, store)
    for row in shown.itertuples(index=False):
        site.index.setdefault((row.submission, row.task), []).append(row)
    for task in task_infos.values():
        ranks = role_table(task, "reliability_ranks")
        if ranks is None:
            continue
        for (metric, subset), group in ranks.groupby(["metric", "subset"], sort=True):
            records = group.to_dict("records")
            if _ranks_are_current(task, str(metric), str(subset), records):
                for record in records:
                    site.ranks[(task.name, str(metric), str(subset), str(record["submission"]))] = record
            else:
                site.stale_ranks.setdefault(task.name, []).append(f"{metric} ({subset})")
    return site


def _ranks_are_current(task: TaskInfo, metric: str, subset: str, records: list[dict[str, Any]]) -> bool:
    """Stored rank groups apply only while the shown scores are exactly the ones they were computed
    from (same submissions, same values): a rerun or a new submission after ``summarize`` makes
    every rank of that measure stale, since one changed score can move the others' ranks."""
    shown = task.rows[(task.rows["metric"] == metric) & (task.rows["subset"] == subset) & task.rows["value"].notna()]
    current = {str(r.submission): float(r.value) for r in shown.itertuples(index=False)}
    stored = {str(r["submission"]): float(r["value"]) for r in records if not pd.isna(r["value"])}
    return current == stored


def role_table(task: TaskInfo, role: str) -> pd.DataFrame | None:
    """The stored summary table the task declares with ``role`` (e.g. ``reliability``), or None."""
    for spec in task.meta.summaries:
        if getattr(spec, "role", "") == role:
            return task.summaries.get(spec.name)
    return None


def rank_for(site: Site, task: TaskInfo, metric: str, subset: str, submission: str, row: Any) -> tuple[str, str, bool] | None:
    """(label, hover text, shared) of the stored rank group of a shown score, or None (no lens stored,
    or a stale one: see :func:`_ranks_are_current`)."""
    record = site.ranks.get((task.name, metric, subset, submission))  # only current measures are kept (collect)
    if record is None or row is None or pd.isna(row.value) or pd.isna(record.get("value")):
        return None
    size = int(record["rank_group_size"]) if not pd.isna(record["rank_group_size"]) else 1
    shared = size > 1
    label = f"#{int(record['rank'])}{'=' if shared else ''}"
    return label, f"{record['reason']} (reliability lens, stored by canonbench summarize)", shared


def _submission_info(name: str, manifest: LoadedManifest | None, rows: pd.DataFrame) -> SubmissionInfo:
    if manifest is not None:
        sub = manifest.submission
        model = getattr(sub, "model", None)
        if sub.kind == "checkpoints":
            arch, width = sub.sae.architecture, sub.sae.width
        else:
            arch, width = sub.recipe.architecture, sub.recipe.width
        return SubmissionInfo(
            name=name, slug=slug(name), manifest=manifest, title=sub.title, kind=sub.kind, local=bool(sub.is_local),
            model=model.name if model else "synthetic data", hook=model.hook if model else "",
            architecture=arch, width=width, seeds=sorted(sub.seeds),
        )
    first = rows.iloc[0] if len(rows) else None

    def get(column: str, default: Any = "") -> Any:
        if first is None or pd.isna(first[column]):
            return default
        return first[column]

    try:
        seeds = sorted(int(s) for s in json.loads(get("seeds", "[]")))
    except (TypeError, ValueError):
        seeds = []
    return SubmissionInfo(
        name=name, slug=slug(name), manifest=None, title="", kind=str(get("submission_kind")), local=bool(get("local", False)),
        model=str(get("model")), hook=str(get("hook")), architecture=str(get("architecture")),
        width=int(get("width")) if get("width", None) is not None else None, seeds=seeds,
    )


def _l0_by_submission(tasks: dict[str, TaskInfo], results: pd.DataFrame, unregistered: list[str]) -> dict[str, tuple[float, float | None, str]]:
    """submission → (L0, std, task): the stored metric ``l0`` (subset "all") from the first task in
    registry order (then unregistered tasks by name) that reports it."""
    sources = [(t.name, t.rows) for t in tasks.values()]
    sources += [(name, results[results["task"] == name]) for name in unregistered]  # shown rows of other tasks
    found: dict[str, tuple[float, float | None, str]] = {}
    for task_name, rows in sources:
        picked = rows[(rows["metric"] == L0_METRIC) & (rows["subset"] == "all")]
        for row in picked.itertuples(index=False):
            if row.submission in found or pd.isna(row.value):
                continue
            found[row.submission] = (float(row.value), None if pd.isna(row.std) else float(row.std), task_name)
    return found


def _not_applicable(site: Site, task: TaskInfo, info: SubmissionInfo) -> str | None:
    if info.manifest is None:
        return None
    key = (info.name, task.name)
    if key not in site.applicable:
        try:
            site.applicable[key] = task.cls.not_applicable(info.manifest)
        except Exception as exc:  # a task that cannot say is treated as "not run", never hidden
            log.warning("task %s could not tell whether it applies to %s: %s", task.name, info.name, exc)
            site.applicable[key] = None
    return site.applicable[key]


def task_status(site: Site, task: TaskInfo, info: SubmissionInfo, metric: str) -> tuple[str, Cell, Any]:
    """(status, cell, stored row or None) of ``metric`` of ``task`` for one submission."""
    stored = site.index.get((info.name, task.name), [])
    rows = [r for r in stored if r.task_version == task.meta.version and r.metric == metric]
    overall = [r for r in rows if r.subset == "all"]
    if overall:
        row = overall[0]
        cell = metric_cell(row)
        rank = rank_for(site, task, metric, "all", info.name, row)
        if rank is not None:
            cell.rank, cell.rank_title, cell.rank_tied = rank
        return ("ok" if not pd.isna(row.value) else "undefined"), cell, row
    if rows:
        return "slices only", subset_cell(rows), None
    older = [r for r in stored if r.task_version != task.meta.version]
    if older:
        versions = ", ".join(f"v{v}" for v in sorted({r.task_version for r in older}))
        return NOT_RUN, Cell(NOT_RUN, "", title=f"not run at v{task.meta.version}; stored results are for {versions}", cls="missing"), None
    reason = _not_applicable(site, task, info)
    if reason:
        return "not applicable", Cell("n/a", "", title=reason, cls="missing"), None
    return NOT_RUN, Cell(NOT_RUN, "", title="no result stored for this submission and task", cls="missing"), None

