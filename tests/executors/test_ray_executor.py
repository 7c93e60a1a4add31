"""The Ray executor on a local 2-CPU Ray cluster: the same rows as the local executor, activations
computed once per cluster, trained recipes once per recipe, failures reported like the local
runner's, a killed worker losing only its unit (retried a bounded number of times), Ctrl-C cancelling
the cluster's work. One cluster serves the module (starting one takes several seconds); tests that
need none come first.

The default run keeps the cheap cluster tests (small native checkpoints, fault tasks: a second or two
each once the cluster is up); the model-recipe equality test and the worker-kill test take tens of
seconds on a loaded 2-core machine and carry the ``slow`` marker (``pytest -m slow tests/executors``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="the Ray executor's tests need Ray: pip install -e '.[test]'")

import fault_tasks
import tasks.cross_seed  # noqa: F401 - registers the real tasks the equality test runs
import tasks.synthetic  # noqa: F401 - likewise
from benchmark import cli
from benchmark.errors import CanonBenchError
from benchmark.executors import ray as ray_executor
from benchmark.executors.outcome import UnitOutcome
from benchmark.executors.plan import PlannedUnit, RunSettings
from benchmark.results import ResultStore
from benchmark.runner import RunInterrupted, run_benchmark
from benchmark.spec import make_spec
from benchmark.submission.manifest import load_manifest, load_manifests
from cluster_fixtures import CountingFactory, native_checkpoints, no_activations, synthetic_recipe, tiny_model_recipe
from fault_tasks import assert_store_consistent, summary_lines, summary_statuses, write_submissions
from tasks.base import UnitResources

FIXTURES = Path(fault_tasks.__file__).resolve().parent
#: Columns that say when and how fast a unit ran, not what it computed.
RUN_COLUMNS = ["run_id", "timestamp", "runtime_s", "setup_s"]


@pytest.fixture(autouse=True)
def fault_registry(monkeypatch):
    fault_tasks.register(monkeypatch)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs whose workers can import the test-only tasks."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(FIXTURES)}})
    yield
    ray.shutdown()


def stored(results: Path) -> pd.DataFrame:
    frame = ResultStore(results).read().drop(columns=RUN_COLUMNS)
    return frame.sort_values(["submission", "task", "task_seed", "metric", "subset"], kind="stable").reset_index(drop=True)


# --- without a cluster -------------------------------------------------------------------------------------
def test_ray_options_follow_the_task_resources():
    heavy = UnitResources(cpus=2.0, memory_gb=4.0, gpu=True, gpu_share=0.5)
    assert ray_executor.ray_options(heavy, "cpu") == {"num_cpus": 2.0, "num_gpus": 0.0, "memory": 4 * 2**30}
    assert ray_executor.ray_options(heavy, "cuda")["num_gpus"] == 0.5
    light = UnitResources()
    assert ray_executor.ray_options(light, "cuda")["num_gpus"] == ray_executor.TOKEN_GPU_SHARE  # still on a GPU node
    assert ray_executor.ray_options(light, "cpu")["num_gpus"] == 0.0


def test_a_worker_running_other_code_refuses_the_unit(tmp_path):
    path = write_submissions(tmp_path, ["a"]) / "acme" / "a.toml"
    spec = make_spec(fault_tasks.OkTask)
    unit = PlannedUnit(load_manifest(path), fault_tasks.OkTask, spec, "0" * 16, {})
    outcome = ray_executor.compute_on_worker(unit, RunSettings(results_dir=tmp_path / "r"), "run", ("0.0.1", "abc"))
    assert isinstance(outcome, UnitOutcome) and outcome.status == "failed"
    assert "install the driver's commit on every node" in outcome.detail


def test_cluster_flags_are_checked_before_anything_runs(tmp_path, capsys):
    subs = write_submissions(tmp_path / "subs", ["a"])
    assert cli.main(["run", str(subs), "--results", str(tmp_path / "r"), "--tasks", "fault-ok", "--address", "auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--address" in err and "--executor ray" in err
    assert cli.main(["run", str(subs), "--results", str(tmp_path / "r"), "--tasks", "fault-ok", "--max-retries", "1"]) == 2
    assert "--max-retries" in capsys.readouterr().err
    with pytest.raises(CanonBenchError, match="--device"):
        run_benchmark(load_manifests([subs]), ["fault-ok"], results_dir=tmp_path / "r", device="cuda:1", executor="ray",
                      quiet=True)
    assert not (tmp_path / "r" / "units").exists()


# --- on the cluster ------------------------------------------------------------------------------------------
def artifact_bytes(results: Path) -> dict[tuple[str, ...], bytes]:
    """Every stored artifact file's bytes, keyed by its path without the run id."""
    root = results / "artifacts"
    return {p.relative_to(root).parts[:-2] + (p.name,): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def unit_keys(results: Path) -> list[tuple[str, ...]]:
    root = results / "units"
    return sorted(p.relative_to(root).parts for p in root.rglob("*.parquet"))


def test_task_seeds_store_what_the_local_executor_stores_and_each_executor_resumes_the_other(cluster, tmp_path):
    """Two task seeds of cross-seed on small native checkpoints: the same unit files (names), the
    same rows apart from when they ran, byte-identical artifacts; a rerun on either executor over the
    other's store finds every unit cached."""
    manifest = load_manifest(native_checkpoints(tmp_path, "seeds"))
    kwargs = dict(cache_dir=tmp_path / "cache", quiet=True, skip_activations=True, task_seeds=[0, 1])
    on_ray = run_benchmark([manifest], ["cross-seed"], results_dir=tmp_path / "ray", executor="ray", **kwargs)
    local = run_benchmark([manifest], ["cross-seed"], results_dir=tmp_path / "local", **kwargs)
    assert [o.status for o in on_ray.outcomes] == [o.status for o in local.outcomes] == ["done", "done"], on_ray.render()
    assert len(unit_keys(tmp_path / "ray")) == 2 and unit_keys(tmp_path / "ray") == unit_keys(tmp_path / "local")
    rows = stored(tmp_path / "ray")
    assert set(rows["task_seed"]) == {0, 1}
    pd.testing.assert_frame_equal(rows, stored(tmp_path / "local"))
    ray_artifacts = artifact_bytes(tmp_path / "ray")
    assert len(ray_artifacts) >= 2 and ray_artifacts == artifact_bytes(tmp_path / "local")

    again_local = run_benchmark([manifest], ["cross-seed"], results_dir=tmp_path / "ray", **kwargs)
    again_ray = run_benchmark([manifest], ["cross-seed"], results_dir=tmp_path / "local", executor="ray", **kwargs)
    assert [o.status for o in again_local.outcomes + again_ray.outcomes] == ["cached"] * 4


@pytest.mark.slow
def test_rows_equal_the_local_executors_and_shared_inputs_are_prepared_once(cluster, tmp_path):
    from model_fixtures import make_tiny_bert

    subs = tmp_path / "subs"
    make_tiny_bert(subs / "model")
    manifests = [load_manifest(tiny_model_recipe(subs, "topk", "topk")),
                 load_manifest(tiny_model_recipe(subs, "batchtopk", "batchtopk")),
                 load_manifest(synthetic_recipe(subs, "toy"))]
    counting = CountingFactory(tmp_path / "forward-passes")
    kwargs = dict(cache_dir=tmp_path / "cache", quiet=True, activations_factory=counting)
    names = ["cross-seed", "synthetic"]

    cold = run_benchmark(manifests, names, results_dir=tmp_path / "ray-cold", executor="ray", **kwargs)
    statuses = [(o.submission, o.task, o.status) for o in cold.outcomes]
    assert statuses == [("test/topk", "cross-seed", "done"), ("test/topk", "synthetic", "not-applicable"),
                        ("test/batchtopk", "cross-seed", "done"), ("test/batchtopk", "synthetic", "not-applicable"),
                        ("test/toy", "cross-seed", "not-applicable"), ("test/toy", "synthetic", "done")], cold.render()
    # two submissions on one (model, hook, tokens): one forward pass for both trainings and both evaluations
    assert counting.forward_passes() == ["blocks.1.hook_resid_post"]

    local = run_benchmark(manifests, names, results_dir=tmp_path / "local", **kwargs)  # on the caches the cluster filled
    assert [o.status for o in local.outcomes] == [s for _, _, s in statuses]
    assert counting.forward_passes() == ["blocks.1.hook_resid_post"]

    local_rows = stored(tmp_path / "local")
    assert len(local_rows) > 20 and set(local_rows["task"]) == {"cross-seed", "synthetic"}
    # the cluster run trained every SAE in its provisioning step: its rows say so, and that is all they add
    cold_rows = stored(tmp_path / "ray-cold")
    records = [r for text in cold_rows["checkpoints"] for r in json.loads(text)]
    assert records and all(r["trained_now"] for r in records)
    assert not any(r["trained_now"] for text in local_rows["checkpoints"] for r in json.loads(text))
    cold_rows["checkpoints"] = cold_rows["checkpoints"].str.replace('"trained_now": true', '"trained_now": false')
    pd.testing.assert_frame_equal(cold_rows, local_rows)


def test_optional_activations_that_cannot_be_prepared_are_left_out_as_locally(cluster, tmp_path):
    """The provisioning task fails; cross-seed only *uses* activations, so its unit runs on the
    weights alone (like the local runner), and both store the same rows."""
    manifest = load_manifest(native_checkpoints(tmp_path, "xs"))
    kwargs = dict(cache_dir=tmp_path / "cache", quiet=True, activations_factory=no_activations)
    on_ray = run_benchmark([manifest], ["cross-seed"], results_dir=tmp_path / "ray", executor="ray", **kwargs)
    local = run_benchmark([manifest], ["cross-seed"], results_dir=tmp_path / "local", **kwargs)
    assert [o.status for o in on_ray.outcomes] == [o.status for o in local.outcomes] == ["done"], on_ray.render()
    rows = stored(tmp_path / "ray")
    assert "decoder_pw_mcc" in set(rows.metric) and "l0" not in set(rows.metric)  # no activation metrics
    pd.testing.assert_frame_equal(rows, stored(tmp_path / "local"))


def test_failures_are_reported_like_the_local_runners(cluster, tmp_path, capsys):
    subs = write_submissions(tmp_path / "subs", ["a-good", "b-bad"])
    results = tmp_path / "results"
    argv = ["run", str(subs), "--results", str(results), "--tasks", "fault-ok,fault-raise,fault-empty,fault-huge",
            "--executor", "ray", "--quiet"]
    assert cli.main(argv) == 1
    lines = summary_lines(capsys.readouterr().out)
    assert {unit: status for unit, (status, _) in lines.items()} == {
        ("acme/a-good", "fault-ok"): "done", ("acme/a-good", "fault-raise"): "done",
        ("acme/a-good", "fault-empty"): "failed", ("acme/a-good", "fault-huge"): "failed",
        ("acme/b-bad", "fault-ok"): "done", ("acme/b-bad", "fault-raise"): "failed",
        ("acme/b-bad", "fault-empty"): "failed", ("acme/b-bad", "fault-huge"): "failed",
    }
    assert "ValueError: deliberate failure on acme/b-bad second line" in lines[("acme/b-bad", "fault-raise")][1]
    assert "returned no metric values" in lines[("acme/a-good", "fault-empty")][1]
    assert "no node of the cluster has" in lines[("acme/a-good", "fault-huge")][1]
    frame = assert_store_consistent(results)
    assert len(frame.groupby(["submission", "task"])) == 3
    assert cli.main(argv) == 1  # the rerun plans on the driver: the three finished units are cached
    statuses = summary_statuses(capsys.readouterr().out)
    assert sorted(k for k, v in statuses.items() if v == "cached") == [
        ("acme/a-good", "fault-ok"), ("acme/a-good", "fault-raise"), ("acme/b-bad", "fault-ok")]


def _pid(file: Path) -> int:
    return int(file.name.split(".")[2])


@pytest.mark.slow
def test_a_killed_worker_loses_only_its_unit_which_is_retried_a_bounded_number_of_times(cluster, tmp_path):
    subs = write_submissions(tmp_path / "subs", ["a-alpha", "b-doomed"])
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    results = tmp_path / "results"
    out: list = []

    def run():
        try:
            out.append(run_benchmark(load_manifests([subs]), ["fault-killable", "fault-ok"], results_dir=results,
                                     executor="ray", max_retries=1, quiet=True,
                                     task_options={"fault-killable": {"pid_dir": str(pid_dir)}}))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            out.append(exc)

    driver = threading.Thread(target=run, daemon=True)
    driver.start()
    killed: set[str] = set()
    deadline = time.monotonic() + 90
    while driver.is_alive() and time.monotonic() < deadline:
        for hang in pid_dir.glob("*.hang"):
            if hang.name not in killed:
                os.kill(_pid(hang), signal.SIGKILL)  # the worker process, mid-unit
                killed.add(hang.name)
        time.sleep(0.05)
    driver.join(timeout=5)
    assert not driver.is_alive(), f"the run did not finish; attempts: {sorted(p.name for p in pid_dir.iterdir())}"
    summary = out[0]
    assert not isinstance(summary, BaseException), summary
    status = {(o.submission, o.task): o for o in summary.outcomes}
    assert {k: o.status for k, o in status.items()} == {
        ("acme/a-alpha", "fault-killable"): "done", ("acme/a-alpha", "fault-ok"): "done",
        ("acme/b-doomed", "fault-killable"): "failed", ("acme/b-doomed", "fault-ok"): "done",
    }, summary.render()
    assert "worker died 2 time(s)" in status[("acme/b-doomed", "fault-killable")].detail
    attempts = {slug: sorted(p.name for p in pid_dir.glob(f"{slug}.*")) for slug in ("acme__a-alpha", "acme__b-doomed")}
    assert [len(a) for a in attempts.values()] == [2, 2], attempts  # one retry each: max_retries bounds the doomed unit
    frame = assert_store_consistent(results)  # nothing torn, nothing twice
    killable = frame[(frame.task == "fault-killable") & (frame.metric == "pid")].set_index("submission")["value"]
    assert list(killable.index) == ["acme/a-alpha"]
    finished = next(p for p in pid_dir.glob("acme__a-alpha.*") if not p.name.endswith(".hang"))
    assert int(killable["acme/a-alpha"]) == _pid(finished)  # the rows of the attempt that finished


def test_ctrl_c_on_the_driver_stops_the_cluster_work_and_keeps_what_was_stored(cluster, tmp_path, monkeypatch):
    subs = write_submissions(tmp_path / "subs", ["a", "b", "c-doomed"])
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    real_store = ray_executor.store_unit

    def store_then_interrupt(*args, **kwargs):
        real_store(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ray_executor, "store_unit", store_then_interrupt)
    with pytest.raises(RunInterrupted) as stop:
        run_benchmark(load_manifests([subs]), ["fault-ok", "fault-killable"], results_dir=tmp_path / "r",
                      executor="ray", quiet=True, task_options={"fault-killable": {"pid_dir": str(pid_dir)}})
    outcomes = stop.value.summary.outcomes
    assert len(outcomes) == 6
    done = [o for o in outcomes if o.status == "done"]
    assert len(done) == 1 and done[0].detail == "stored just before Ctrl-C" and done[0].task == "fault-ok"
    assert {o.status for o in outcomes} == {"done", "interrupted"}
    assert len(assert_store_consistent(tmp_path / "r").groupby(["submission", "task"])) == 1
    hung = [_pid(p) for p in pid_dir.glob("*.hang")]
    deadline = time.monotonic() + 20
    while hung and time.monotonic() < deadline:  # the hanging units' workers are stopped, not left running
        hung = [pid for pid in hung if _alive(pid)]
        time.sleep(0.1)
    assert not hung

    monkeypatch.undo()  # resuming on the cluster computes only what the interrupted run did not store
    fault_tasks.register(monkeypatch)
    resumed = run_benchmark(load_manifests([subs]), ["fault-ok"], results_dir=tmp_path / "r", executor="ray", quiet=True)
    statuses = {o.submission: o.status for o in resumed.outcomes}
    assert statuses == {s: "cached" if s == done[0].submission else "done" for s in ("acme/a", "acme/b", "acme/c-doomed")}
    assert len(assert_store_consistent(tmp_path / "r").groupby(["submission", "task"])) == 3


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
