"""What the overview adds to each main score: its stored chance level and the ``≈ chance`` flag, and
the submissions that have no result yet (listed apart, never ranked). Kept apart from
:mod:`leaderboard.pages`, which lays the table out; nothing here computes a metric."""

from __future__ import annotations

import dataclasses
from typing import Any

from leaderboard.cells import Cell
from leaderboard.chance import ChanceLevel, chance_for
from leaderboard.collect import Site, SubmissionInfo, TaskInfo

FLAG_TEXT = "\u2248 chance"


def split_not_run_yet(site: Site) -> tuple[list[SubmissionInfo], list[SubmissionInfo]]:
    """``(ranked, waiting)``: submissions with at least one stored result (of any task or version),
    and those with none, which the overview lists apart instead of on top of the ranking."""
    stored = {name for name, _ in site.index}
    ranked = [info for info in site.submissions.values() if info.name in stored]
    waiting = [info for info in site.submissions.values() if info.name not in stored]
    return ranked, waiting


def not_run_yet_entries(site: Site, waiting: list[SubmissionInfo]) -> list[dict[str, Any]]:
    """One entry per waiting submission, with the tasks that apply to it (from the manifest)."""
    entries = []
    for info in waiting:
        applicable = []
        for task in site.tasks.values():
            reason = None
            if info.manifest is not None:
                try:
                    reason = task.cls.not_applicable(info.manifest)
                except Exception:  # noqa: BLE001 - a task that cannot say is listed as applicable
                    reason = None
            if not reason:
                applicable.append(task.name)
        entries.append({"info": info, "href": f"submissions/{info.slug}.html", "tasks": applicable,
                        "command": f"canonbench run {info.manifest.path.as_posix()}" if info.manifest is not None else ""})
    return entries


def chance_of(site: Site, task: TaskInfo, info: SubmissionInfo, row: Any) -> ChanceLevel | None:
    """The stored chance level of a stored main-metric row (None when the task names none)."""
    return chance_for(site.index.get((info.name, task.name), []), task.meta, row)


def with_chance(site: Site, task: TaskInfo, info: SubmissionInfo, cell: Cell, row: Any) -> Cell:
    """``cell`` with the stored chance level below the value and the ``≈ chance`` flag where
    :data:`leaderboard.chance.RULE` says so; per-slice cells get the same per slice."""
    if task.meta.chance_metric is None:
        return cell
    if row is not None:
        chance = chance_of(site, task, info, row)
        if chance is None:
            return cell
        return dataclasses.replace(cell, sub=chance.text, title=f"{cell.title}; {chance.title}" if cell.title else chance.title,
                                   flag=FLAG_TEXT if chance.indistinguishable else "",
                                   flag_title=chance.title if chance.indistinguishable else "")
    if not cell.slices:
        return cell
    rows = site.index.get((info.name, task.name), [])
    main = task.meta.main_metric.name
    slices = []
    for entry in cell.slices:
        stored = next((r for r in rows if r.metric == main and r.subset == entry.subset
                       and r.task_version == task.meta.version), None)
        chance = chance_for(rows, task.meta, stored) if stored is not None else None
        if chance is None:
            slices.append(entry)
            continue
        slices.append(dataclasses.replace(entry, sub=chance.text, flag=FLAG_TEXT if chance.indistinguishable else "",
                                          flag_title=chance.title if chance.indistinguishable else "",
                                          title=f"{entry.title}; {chance.title}"))
    return dataclasses.replace(cell, slices=tuple(slices))


def chance_record(site: Site, task: TaskInfo, info: SubmissionInfo, row: Any) -> dict[str, Any]:
    """The download columns of a score's chance level: value, metric and flag (as stored and judged)."""
    chance = chance_of(site, task, info, row) if row is not None else None
    key = f"{task.name}.{task.meta.main_metric.name}"
    return {f"{key}.chance": chance.value if chance else None,
            f"{key}.chance_metric": chance.metric if chance else None,
            f"{key}.near_chance": chance.indistinguishable if chance else None}


def chance_columns(task: TaskInfo) -> list[str]:
    key = f"{task.name}.{task.meta.main_metric.name}"
    return [f"{key}.chance", f"{key}.chance_metric", f"{key}.near_chance"]


__all__ = ["FLAG_TEXT", "chance_columns", "chance_of", "chance_record", "not_run_yet_entries", "split_not_run_yet",
           "with_chance"]
