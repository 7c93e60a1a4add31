"""Test-only tasks that misbehave on purpose, and a subprocess driver for fault-injection tests.

They are never in the real registry: :func:`register` adds them (through ``monkeypatch`` in
in-process tests) and also empties ``tasks.TASK_MODULES`` so that the fault tests do not depend on
the real tasks importing. Run as a script, this module registers them and hands its arguments to
``canonbench`` (``python tests/fault_tasks.py run <manifests> --tasks fault-slow ...``).

Knobs for the driver, read from the environment (they simulate the machine, not the code under test):

* ``FAULT_SLEEP_S``: how long ``fault-slow`` works per unit (default 0.05 s).
* ``FAULT_SLOW_DISK_S``: every parquet file is written in two halves with this pause between them,
  as on a slow or network disk, so a kill lands mid-write often.
* ``FAULT_BARRIER_DIR`` / ``FAULT_BARRIER_N``: ``fault-barrier`` waits until N processes reach the
  same unit, so concurrent runs finish each unit at the same moment and race to store it.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import pandas as pd

from benchmark.results import MetricValue
from tasks.base import MetricSpec, Task, TaskContext, TaskMetadata, TaskOutput

CUDA_OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.15 GiB of which "
    "3.12 GiB is free. Of the allocated memory 70.02 GiB is allocated by PyTorch"
)


def _meta(name: str, title: str) -> TaskMetadata:
    return TaskMetadata(
        name=name,
        version="1",
        title=title,
        description=f"test-only task: {title}",
        metrics=(
            MetricSpec("score", "name length of the submission", "higher", (0, None), main=True),
            MetricSpec("pid", "process that computed the unit", "none"),
        ),
        accepts=("checkpoints", "recipe"),
    )


def _output(ctx: TaskContext) -> TaskOutput:
    """A deterministic score plus the computing process's id in the rows AND in the artifact, so a
    unit whose rows and artifact come from different writers (a torn unit) is detectable."""
    pid = os.getpid()
    return TaskOutput(
        metrics=[MetricValue("score", float(len(ctx.manifest.name)), extra={"pid": pid}), MetricValue("pid", float(pid))],
        artifacts={"detail": pd.DataFrame({"pid": [pid] * 64, "row": range(64)})},
        data_hash=f"pid-{pid}",
    )


class OkTask(Task):
    metadata = _meta("fault-ok", "finishes at once")

    def run(self, ctx: TaskContext) -> TaskOutput:
        return _output(ctx)


class SlowTask(Task):
    metadata = _meta("fault-slow", "works for a while (so it can be killed mid-run)")

    def run(self, ctx: TaskContext) -> TaskOutput:
        time.sleep(float(os.environ.get("FAULT_SLEEP_S", "0.05")))
        return _output(ctx)


class RaisingTask(Task):
    metadata = _meta("fault-raise", "raises for submissions whose name contains 'bad'")

    def run(self, ctx: TaskContext) -> TaskOutput:
        if "bad" in ctx.manifest.name:
            raise ValueError(f"deliberate failure on {ctx.manifest.name}\nsecond line of the message")
        return _output(ctx)


class HostOOMTask(Task):
    metadata = _meta("fault-oom-host", "MemoryError on submissions whose name contains 'big'")

    def run(self, ctx: TaskContext) -> TaskOutput:
        if "big" in ctx.manifest.name:
            raise MemoryError("Unable to allocate 512. GiB for an array with shape (131072, 1048576)")
        return _output(ctx)


class CudaOOMTask(Task):
    metadata = _meta("fault-oom-cuda", "torch-style CUDA OOM on submissions whose name contains 'big'")

    def run(self, ctx: TaskContext) -> TaskOutput:
        if "big" in ctx.manifest.name:
            raise RuntimeError(CUDA_OOM_MESSAGE)
        return _output(ctx)


class InterruptTask(Task):
    metadata = _meta("fault-interrupt", "Ctrl-C arrives while it runs on a submission whose name contains 'stop'")

    def run(self, ctx: TaskContext) -> TaskOutput:
        if "stop" in ctx.manifest.name:
            raise KeyboardInterrupt
        return _output(ctx)


class EmptyTask(Task):
    metadata = _meta("fault-empty", "returns no metric values")

    def run(self, ctx: TaskContext) -> TaskOutput:
        return TaskOutput(metrics=[])


class BrokenApplicabilityTask(Task):
    metadata = _meta("fault-applicability", "its applicability check itself raises")

    def not_applicable(self, manifest):
        raise AttributeError("'NoneType' object has no attribute 'presets'")

    def run(self, ctx: TaskContext) -> TaskOutput:  # pragma: no cover - never reached
        return _output(ctx)


class BarrierTask(Task):
    metadata = _meta("fault-barrier", "meets the other runs at each unit before finishing")

    def run(self, ctx: TaskContext) -> TaskOutput:
        root = os.environ.get("FAULT_BARRIER_DIR")
        if root:
            gate = Path(root) / ctx.manifest.name.replace("/", "__")
            gate.mkdir(parents=True, exist_ok=True)
            (gate / str(os.getpid())).touch()
            wanted = int(os.environ.get("FAULT_BARRIER_N", "2"))
            deadline = time.monotonic() + 10
            while len(list(gate.iterdir())) < wanted and time.monotonic() < deadline:
                time.sleep(0.005)
        return _output(ctx)


FAULT_TASKS: tuple[type[Task], ...] = (
    OkTask, SlowTask, RaisingTask, HostOOMTask, CudaOOMTask, InterruptTask, EmptyTask, BrokenApplicabilityTask, BarrierTask,
)


def register(monkeypatch=None) -> None:
    """Add the fault tasks to the registry (undone after the test when ``monkeypatch`` is given)."""
    import tasks

    if monkeypatch is None:
        tasks.TASK_MODULES = ()
        for cls in FAULT_TASKS:
            tasks._REGISTRY[cls.metadata.name] = cls
        return
    monkeypatch.setattr(tasks, "TASK_MODULES", ())
    for cls in FAULT_TASKS:
        monkeypatch.setitem(tasks._REGISTRY, cls.metadata.name, cls)


def _simulate_slow_disk(pause_s: float) -> None:
    """Make every parquet write land in two halves with a pause between (a slow disk)."""
    import pyarrow.parquet as pq

    real_write = pq.write_table

    def slow_write(table, where, *args, **kwargs):
        if not isinstance(where, (str, os.PathLike)):
            return real_write(table, where, *args, **kwargs)
        buffer = io.BytesIO()
        real_write(table, buffer, *args, **kwargs)
        data = buffer.getvalue()
        with open(where, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            time.sleep(pause_s)
            fh.write(data[len(data) // 2:])

    pq.write_table = slow_write


def main(argv: list[str]) -> int:
    from benchmark import cli, manifest, runner  # noqa: F401 - imported before READY, not during the run
    from benchmark.version import git_sha

    git_sha()
    register()
    if os.environ.get("FAULT_SLOW_DISK_S"):
        _simulate_slow_disk(float(os.environ["FAULT_SLOW_DISK_S"]))
    print("READY", flush=True)
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
