"""Every registered task declares complete, consistent metadata (the leaderboard relies on it)."""

import pytest

from tasks import all_tasks, register_task
from tasks.base import MetricSpec, Task, TaskMetadata

TASKS = all_tasks()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_metadata_complete(name):
    meta = TASKS[name].metadata
    assert meta.name == name
    assert meta.version and meta.title and meta.description
    assert meta.citation.strip().startswith("@"), "citation must be BibTeX"
    assert set(meta.accepts) <= {"checkpoints", "recipe"} and meta.accepts
    for metric in meta.metrics:
        assert metric.direction in ("higher", "lower", "none")
        lo, hi = metric.range
        assert lo is None or hi is None or lo < hi
        assert metric.description


def test_main_metric_and_duplicates_are_enforced():
    metric = MetricSpec("a", "d", "higher")
    with pytest.raises(ValueError, match="main metric"):
        TaskMetadata(name="x", version="1", title="t", description="d", metrics=(metric,), accepts=("recipe",))
    with pytest.raises(ValueError, match="twice"):
        TaskMetadata(name="x", version="1", title="t", description="d", accepts=("recipe",),
                     metrics=(MetricSpec("a", "d", "higher", main=True), MetricSpec("a", "d", "higher")))


def test_duplicate_task_name_raises():
    meta = TaskMetadata(name="dup-test", version="1", title="t", description="d", accepts=("recipe",),
                        metrics=(MetricSpec("a", "d", "higher", main=True),))

    class One(Task):
        metadata = meta

    class Two(Task):
        metadata = meta

    register_task(One)
    try:
        with pytest.raises(ValueError, match="registered twice"):
            register_task(Two)
    finally:
        from tasks import _REGISTRY

        _REGISTRY.pop("dup-test", None)
