"""Every registered task declares complete, consistent metadata (the leaderboard relies on it)."""

import pytest

from tasks import all_tasks, register_task
from tasks.base import MetricSpec, Task, TaskMetadata, UnitResources

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
    # what a cluster schedules a unit by: declared by every real task, not left at the 1 GiB default
    assert meta.resources != UnitResources() and meta.resources.memory_gb >= 2.0
    if meta.needs_model or meta.needs_activations or meta.uses_activations:
        assert meta.resources.gpu, "a task that reads a model's activations should ask for the accelerator"


def test_unit_resources_refuse_impossible_requests():
    with pytest.raises(ValueError, match="positive"):
        UnitResources(memory_gb=0)
    with pytest.raises(ValueError, match="share of one GPU"):
        UnitResources(gpu=True, gpu_share=2.0)


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
