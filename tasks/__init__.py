"""Task registry. Every task module is imported here by name, so one that fails to import fails
loudly with its file named instead of silently disappearing from the benchmark."""

from __future__ import annotations

import importlib

from tasks.base import MetricSpec, Task, TaskInputs, TaskMetadata, TaskOutput, UnitResources

#: Modules that define and register tasks (``TASK_MODULES`` order is the leaderboard's column order).
TASK_MODULES: tuple[str, ...] = ("tasks.synthetic", "tasks.cross_seed", "tasks.absorption", "tasks.explanations",
                                 "tasks.stitching", "tasks.meta_sae", "tasks.description_length")

_REGISTRY: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator adding a task to the registry; a duplicate name raises."""
    name = cls.metadata.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"task name {name!r} is registered twice ({_REGISTRY[name].__module__} and {cls.__module__})")
    _REGISTRY[name] = cls
    return cls


def _load_all() -> None:
    for module in TASK_MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:  # re-raise with the file named: a broken task must not vanish
            raise ImportError(f"task module {module} failed to import: {exc}") from exc


def all_tasks() -> dict[str, type[Task]]:
    """Registered tasks by name, in ``TASK_MODULES`` order."""
    _load_all()
    return dict(_REGISTRY)


def get_task(name: str) -> Task:
    tasks = all_tasks()
    if name not in tasks:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(tasks) or '(none)'}")
    return tasks[name]()


__all__ = ["MetricSpec", "Task", "TaskInputs", "TaskMetadata", "TaskOutput", "UnitResources", "all_tasks", "get_task", "register_task"]
