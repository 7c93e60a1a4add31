"""Faults during long runs: failing and out-of-memory units, Ctrl-C, SIGKILL at random moments, two
runs on one results store, unreadable result files. Nothing finished may be lost, nothing may be
stored twice or torn, and the exit code and summary must say what happened.

The misbehaving tasks live in ``tests/fixtures/fault_tasks.py`` and are registered only for these tests.
Subprocess tests use real signals; their kill moments are drawn from a seeded generator.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import fault_tasks
from fault_tasks import assert_store_consistent, summary_statuses, write_submissions  # noqa: F401 - also imported from here
from benchmark import cli
from benchmark.submission.manifest import load_manifests
from benchmark.results import ResultStore
from benchmark.runner import RunInterrupted, RunSummary, UnitOutcome, run_benchmark

REPO_ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(fault_tasks.__file__).resolve()


@pytest.fixture(autouse=True)
def fault_registry(monkeypatch):
    fault_tasks.register(monkeypatch)


# --- a failing task, out of memory, an empty result, a broken check ----------------------------------------

def test_a_raising_task_fails_its_unit_and_the_run_goes_on(tmp_path, capsys):
    subs = write_submissions(tmp_path / "subs", ["a-good", "b-bad", "c-good"])
    results = tmp_path / "results"
    argv = ["run", str(subs), "--results", str(results), "--tasks", "fault-raise,fault-ok", "--quiet"]
    assert cli.main(argv) == 1  # something failed
    out = capsys.readouterr().out
    statuses = summary_statuses(out)
    assert statuses.pop(("acme/b-bad", "fault-raise")) == "failed"
    assert set(statuses.values()) == {"done"} and len(statuses) == 5
    failed_line = next(line for line in out.splitlines() if "acme/b-bad × fault-raise" in line)
    assert "ValueError: deliberate failure on acme/b-bad second line" in failed_line  # reason, on one line
    frame = assert_store_consistent(results)
    assert len(frame.groupby(["submission", "task"])) == 5

    assert cli.main(argv) == 1  # the rerun keeps the five and tries the failed one again
    statuses = summary_statuses(capsys.readouterr().out)
    assert statuses.pop(("acme/b-bad", "fault-raise")) == "failed"
    assert set(statuses.values()) == {"cached"}


@pytest.mark.parametrize("task", ["fault-oom-host", "fault-oom-cuda"])
def test_out_of_memory_names_the_flags_and_keeps_other_submissions(tmp_path, capsys, task):
    subs = write_submissions(tmp_path / "subs", ["a-big-sae", "b-small", "c-small"])
    results = tmp_path / "results"
    code = cli.main(["run", str(subs), "--results", str(results), "--tasks", task, "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    statuses = summary_statuses(out)
    assert statuses == {("acme/a-big-sae", task): "failed", ("acme/b-small", task): "done", ("acme/c-small", task): "done"}
    line = next(line for line in out.splitlines() if "a-big-sae" in line)
    assert "out of memory" in line and "--batch-size" in line and "--device" in line, line
    if task == "fault-oom-cuda":
        assert "Tried to allocate 20.00 GiB" in line  # the original reason is kept
    assert sorted(set(assert_store_consistent(results)["submission"])) == ["acme/b-small", "acme/c-small"]


def test_empty_output_and_a_raising_applicability_check_fail_their_units_only(tmp_path, capsys):
    subs = write_submissions(tmp_path / "subs", ["a", "b"])
    results = tmp_path / "results"
    code = cli.main(["run", str(subs), "--results", str(results), "--quiet",
                     "--tasks", "fault-empty,fault-applicability,fault-ok"])
    out = capsys.readouterr().out
    assert code == 1
    statuses = summary_statuses(out)
    assert [statuses[(s, "fault-ok")] for s in ("acme/a", "acme/b")] == ["done", "done"]
    assert {statuses[(s, t)] for s in ("acme/a", "acme/b") for t in ("fault-empty", "fault-applicability")} == {"failed"}
    assert "returned no metric values" in out and "applicability check raised AttributeError" in out
    assert set(assert_store_consistent(results)["task"]) == {"fault-ok"}


def test_summary_lists_every_unit_with_its_reason():
    summary = RunSummary("run-x", [
        UnitOutcome("acme/a", "t1", "done", runtime_s=1.25),
        UnitOutcome("acme/a", "t2", "cached"),
        UnitOutcome("acme/b", "t1", "not-applicable", "needs at least 2 seeds"),
        UnitOutcome("acme/b", "t2", "failed", "ValueError: line one\nline two " + "x" * 1000),
        UnitOutcome("acme/c", "t1", "lost-race", "another run stored this unit first"),
        UnitOutcome("acme/c", "t2", "interrupted", "stopped by Ctrl-C"),
    ])
    text = summary.render()
    lines = text.splitlines()
    assert lines[0] == "run run-x:"
    assert summary_statuses(text) == {
        ("acme/a", "t1"): "done", ("acme/a", "t2"): "cached", ("acme/b", "t1"): "not-applicable",
        ("acme/b", "t2"): "failed", ("acme/c", "t1"): "lost-race", ("acme/c", "t2"): "interrupted",
    }
    assert "1.2s" in lines[1] or "1.3s" in lines[1]
    assert "(needs at least 2 seeds)" in text and "ValueError: line one line two xxx" in text
    assert max(len(line) for line in lines) < 400  # a huge reason is cut; the log keeps it whole
    counts = lines[7]
    for part in ("1 done", "1 cached", "1 not-applicable", "1 failed", "1 lost-race", "1 interrupted"):
        assert part in counts
    assert "rerun" in lines[-1]


# --- Ctrl-C ---------------------------------------------------------------------------------------------------

def test_ctrl_c_keeps_finished_units_exits_130_and_rerun_skips_them(tmp_path, capsys):
    subs = write_submissions(tmp_path / "subs", ["s1", "s2", "s3-stop", "s4"])
    results = tmp_path / "results"
    argv = ["run", str(subs), "--results", str(results), "--tasks", "fault-interrupt", "--quiet"]
    assert cli.main(argv) == 130
    captured = capsys.readouterr()
    assert "interrupted" in captured.err and "rerun" in captured.err
    statuses = summary_statuses(captured.out)  # the summary of what finished is still printed
    assert statuses == {("acme/s1", "fault-interrupt"): "done", ("acme/s2", "fault-interrupt"): "done",
                        ("acme/s3-stop", "fault-interrupt"): "interrupted"}
    before = assert_store_consistent(results)
    assert sorted(set(before["submission"])) == ["acme/s1", "acme/s2"]

    (subs / "acme" / "s3-stop.toml").unlink()
    assert cli.main(argv) == 0
    statuses = summary_statuses(capsys.readouterr().out)
    assert statuses == {("acme/s1", "fault-interrupt"): "cached", ("acme/s2", "fault-interrupt"): "cached",
                        ("acme/s4", "fault-interrupt"): "done"}
    after = assert_store_consistent(results)
    kept = after[after["submission"].isin(["acme/s1", "acme/s2"])]
    assert set(kept["run_id"]) == set(before["run_id"])  # not recomputed


def test_run_benchmark_raises_keyboard_interrupt_carrying_the_summary(tmp_path):
    manifests = load_manifests([write_submissions(tmp_path / "subs", ["a", "b-stop"])])
    with pytest.raises(KeyboardInterrupt) as info:
        run_benchmark(manifests, ["fault-ok", "fault-interrupt"], results_dir=tmp_path / "r", quiet=True)
    assert isinstance(info.value, RunInterrupted)
    statuses = [(o.submission, o.task, o.status) for o in info.value.summary.outcomes]
    assert statuses == [("acme/a", "fault-ok", "done"), ("acme/a", "fault-interrupt", "done"),
                        ("acme/b-stop", "fault-ok", "done"), ("acme/b-stop", "fault-interrupt", "interrupted")]


def test_ctrl_c_right_after_a_unit_is_stored_reports_it_as_done(tmp_path, monkeypatch):
    """The unit file is on disk but the interrupt arrives before the runner notes it: the summary
    must not claim that nothing was stored."""
    real_write = ResultStore.write_unit

    def write_then_interrupt(self, rows, *args, **kwargs):
        written = real_write(self, rows, *args, **kwargs)
        if rows["submission"].iloc[0] == "acme/b":
            raise KeyboardInterrupt
        return written

    monkeypatch.setattr(ResultStore, "write_unit", write_then_interrupt)
    manifests = load_manifests([write_submissions(tmp_path / "subs", ["a", "b", "c"])])
    with pytest.raises(RunInterrupted) as info:
        run_benchmark(manifests, ["fault-ok"], results_dir=tmp_path / "r", quiet=True)
    assert [(o.submission, o.status) for o in info.value.summary.outcomes] == [("acme/a", "done"), ("acme/b", "done")]
    assert sorted(set(ResultStore(tmp_path / "r").read()["submission"])) == ["acme/a", "acme/b"]


# --- real signals in subprocesses -----------------------------------------------------------------------------

#: Seconds each ``fault-slow`` unit works in the signal tests: long enough that the five units after the first
#: cannot all finish before the signal lands on a loaded machine (at 0.15 s a SIGINT once arrived after the end).
SLOW_UNIT_S = "1.0"


def _driver(args: list[str], **env: str) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(DRIVER.parent)]),
                   "HF_HUB_OFFLINE": "1", **env}
    return subprocess.Popen([sys.executable, str(DRIVER), *args], cwd=REPO_ROOT, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    # A child inherits an ignored SIGINT, and Python then installs no KeyboardInterrupt handler: in the full
    # suite something earlier leaves SIGINT ignored in this process, and the driver ran to the end (exit 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()  # printed after the imports, just before the run starts
    assert line.strip() == "READY", line + proc.stderr.read()


def test_sigint_mid_run_exits_130_and_keeps_finished_units(tmp_path, capsys):
    subs = write_submissions(tmp_path / "subs", [f"s{i}" for i in range(6)])
    results = tmp_path / "results"
    args = ["run", str(subs), "--results", str(results), "--tasks", "fault-slow", "--quiet"]
    proc = _driver(args, FAULT_SLEEP_S=SLOW_UNIT_S)
    _wait_ready(proc)
    deadline = time.monotonic() + 20
    while not ResultStore(results).unit_files() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted: finished results are kept" in err
    finished = set(assert_store_consistent(results)["submission"])
    assert finished and len(finished) < 6
    assert {s for (s, _), st in summary_statuses(out).items() if st == "done"} == finished

    assert cli.main(args) == 0  # rerun in-process (a fresh interpreter costs seconds on a busy machine)
    statuses = summary_statuses(capsys.readouterr().out)
    assert {s for (s, _), st in statuses.items() if st == "cached"} == finished
    assert len(set(assert_store_consistent(results)["submission"])) == 6


def test_sigterm_mid_run_exits_143_with_a_summary_and_keeps_finished_units(tmp_path):
    subs = write_submissions(tmp_path / "subs", [f"s{i}" for i in range(6)])
    results = tmp_path / "results"
    proc = _driver(["run", str(subs), "--results", str(results), "--tasks", "fault-slow", "--quiet"], FAULT_SLEEP_S=SLOW_UNIT_S)
    _wait_ready(proc)
    deadline = time.monotonic() + 20
    while not ResultStore(results).unit_files() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM): finished results are kept" in err
    finished = set(assert_store_consistent(results)["submission"])
    assert finished and {s for (s, _), st in summary_statuses(out).items() if st == "done"} == finished


def test_sigkill_at_random_moments_then_rerun_loses_and_duplicates_nothing(tmp_path, capsys):
    """Kill -9 a run at seeded random moments (a slow simulated disk makes many of them land in the
    middle of a file write), then rerun: finished units survive untouched, the cut-off one is
    recomputed, no row is stored twice and every file is readable."""
    rng = random.Random(8)
    subs = write_submissions(tmp_path / "subs", ["k1", "k2", "k3"])
    tasks = ["fault-slow", "fault-ok"]
    env = {"FAULT_SLEEP_S": "0.03", "FAULT_SLOW_DISK_S": "0.3"}
    kill_moments, cut_writes = [], 0
    # Kill points are tied to progress (once n of the 6 units are stored and the next file write has
    # begun, plus a seeded delay shorter than the simulated disk's pause), so that a busy machine
    # shifts them in time but not in what they cut.
    for attempt, after_units in enumerate(rng.sample(range(5), 3)):
        results = tmp_path / f"results{attempt}"
        args = ["run", str(subs), "--results", str(results), "--tasks", ",".join(tasks), "--quiet"]
        proc = _driver(args, **env)
        _wait_ready(proc)
        _wait_for(lambda: len(ResultStore(results).unit_files()) >= after_units, timeout=30)
        # A unit still to run will write; on a loaded machine its write may begin seconds later, so
        # wait for it rather than kill between writes.
        _wait_for(lambda: any(results.rglob(".*.tmp")), timeout=30)
        time.sleep(rng.uniform(0.0, 0.02))
        proc.kill()
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        cut_writes += any(results.rglob(".*.tmp"))
        before = assert_store_consistent(results) if results.exists() else None
        finished = {} if before is None else dict(zip(zip(before["submission"], before["task"]), before["run_id"]))
        kill_moments.append(len(finished))

        assert cli.main(args) == 0  # the rerun, in-process
        statuses = summary_statuses(capsys.readouterr().out)
        assert len(statuses) == 6
        assert {unit for unit, st in statuses.items() if st == "cached"} == set(finished)
        assert {unit for unit, st in statuses.items() if st == "done"} == {
            (f"acme/{s}", t) for s in ("k1", "k2", "k3") for t in tasks} - set(finished)
        after = assert_store_consistent(results)
        assert len(after) == 6 * 2  # two metrics per unit, each exactly once
        for unit, run_id in finished.items():
            rows = after[(after["submission"] == unit[0]) & (after["task"] == unit[1])]
            assert set(rows["run_id"]) == {run_id}  # finished before the kill: kept, not recomputed
        assert not list(results.rglob("*.tmp")), "the rerun clears the killed writer's temporary files"
    assert len(set(kill_moments)) > 1, f"kills all landed at the same point: {kill_moments}"
    assert cut_writes >= 1, "no kill landed in the middle of a file write"


def _wait_for(condition, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.002)


def test_two_runs_on_one_store_at_once_store_each_unit_once(tmp_path):
    """Two processes run the same units at the same moment (they meet at a barrier inside every
    unit, and a slow disk widens the race); each unit must be stored once, whole, by one of them."""
    subs = write_submissions(tmp_path / "subs", ["c1", "c2", "c3"])
    results = tmp_path / "results"
    env = {"FAULT_BARRIER_DIR": str(tmp_path / "barrier"), "FAULT_BARRIER_N": "2", "FAULT_SLOW_DISK_S": "0.03"}
    args = ["run", str(subs), "--results", str(results), "--tasks", "fault-barrier", "--quiet"]
    procs = [_driver(args, **env) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    frame = assert_store_consistent(results)
    assert sorted(set(frame["submission"])) == ["acme/c1", "acme/c2", "acme/c3"]
    statuses = [summary_statuses(out) for out, _ in outputs]
    for unit in statuses[0]:
        pair = sorted([statuses[0][unit], statuses[1][unit]])
        assert pair in (["done", "lost-race"], ["cached", "done"]), (unit, pair)
        winner = procs[0] if statuses[0][unit] == "done" else procs[1]
        rows = frame[(frame["submission"] == unit[0]) & (frame["metric"] == "pid")]
        assert int(rows["value"].iloc[0]) == winner.pid  # the stored unit is the one its run reported


def test_cli_errors_are_one_line_even_when_the_message_is_not(tmp_path, capsys):
    subs = write_submissions(tmp_path / "subs", ["a"])
    code = cli.main(["run", str(subs), "--results", str(tmp_path / "r"), "--tasks", "no-such\ntask", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--tasks" in err[0] and "no-such task" in err[0], err


# --- damaged store ----------------------------------------------------------------------------------------------

def _damage(path: Path, how: str) -> None:
    """Damage a stored unit file the ways a disk, a copy or a person can."""
    import pyarrow as pa

    if how == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"PAR1" + os.urandom(64))
    elif how == "wrong-schema":
        pq.write_table(pa.table({"submission": ["acme/b"], "value": [1.0]}), path)
    elif how == "old-schema":
        table = pq.read_table(path)
        table = table.set_column(table.schema.get_field_index("schema_version"), "schema_version",
                                 pa.array([1] * table.num_rows, pa.int32()))
        pq.write_table(table, path)
    elif how == "nan":
        table = pq.read_table(path)
        table = table.set_column(table.schema.get_field_index("value"), "value",
                                 pa.array([float("nan")] * table.num_rows, pa.float64()))
        pq.write_table(table, path)
    elif how == "missing-without-note":
        table = pq.read_table(path)
        table = table.set_column(table.schema.get_field_index("value"), "value", pa.nulls(table.num_rows, pa.float64()))
        table = table.set_column(table.schema.get_field_index("note"), "note", pa.nulls(table.num_rows, pa.string()))
        pq.write_table(table, path)
    elif how == "other-unit":  # rows of acme/a copied to acme/b's place: would misattribute
        path.write_bytes(Path(str(path).replace("acme/b", "acme/a")).read_bytes())
    elif how == "directory":
        path.unlink()
        path.mkdir()
    else:  # pragma: no cover
        raise ValueError(how)


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "wrong-schema", "old-schema", "nan",
                                 "missing-without-note", "other-unit", "directory"])
def test_a_bad_unit_file_is_quarantined_the_rest_serves_and_the_next_run_recomputes_it(tmp_path, capsys, how):
    subs = write_submissions(tmp_path / "subs", ["a", "b"])
    results = tmp_path / "results"
    assert cli.main(["run", str(subs), "--results", str(results), "--tasks", "fault-ok", "--quiet"]) == 0
    capsys.readouterr()
    store = ResultStore(results)
    (damaged,) = [p for p in store.unit_files() if "/acme/b/" in p.as_posix()]
    _damage(damaged, how)
    # results and the site keep serving the good unit; the bad one is moved aside with a warning
    assert cli.main(["results", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "acme/a" in out and "acme/b" not in out
    assert not damaged.exists() and list((results / "quarantine").rglob(damaged.name))
    # the next run does not count it as cached: it recomputes the unit
    assert cli.main(["run", str(subs), "--results", str(results), "--tasks", "fault-ok", "--quiet"]) == 0
    statuses = summary_statuses(capsys.readouterr().out)
    assert statuses[("acme/b", "fault-ok")] == "done" and statuses[("acme/a", "fault-ok")] == "cached"
    assert set(ResultStore(results).read()["submission"]) == {"acme/a", "acme/b"}


def test_stale_temporary_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    store = ResultStore(tmp_path)
    folder = tmp_path / "units" / "acme" / "a" / "t" / "v1"
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    key = "0" * 16 + "-" + "1" * 16
    stale = folder / f".{key}.parquet.{dead_pid}.abc123.tmp"
    live = folder / f".{key}.parquet.{os.getpid()}.def456.tmp"
    finished = folder / f"{key}.parquet"
    for path in (stale, live, finished):
        path.write_bytes(b"x")
    assert store.remove_stale_temp_files() == 1
    assert not stale.exists() and live.exists() and finished.exists()


# --- output paths that cannot be written, and readers that leave early ----------------------------------------

def test_unwritable_outputs_and_a_closed_pipe_give_one_line_not_a_traceback(tmp_path, capsys):
    subs = write_submissions(tmp_path / "subs", ["a"])
    results = tmp_path / "results"
    assert cli.main(["run", str(subs), "--results", str(results), "--tasks", "fault-ok", "--quiet"]) == 0
    capsys.readouterr()
    (tmp_path / "full.csv").symlink_to("/dev/full")
    cases = [
        ["results", "--results", str(results), "--export", str(tmp_path / "full.csv")],  # a disk that is full
        ["results", "--results", str(results), "--export", str(tmp_path / "x.xlsx")],  # a format it does not write
        ["results", "--results", str(tmp_path / "no-such-store")],  # a mistyped path
        ["leaderboard", "build", "--results", str(tmp_path / "no-such-store"), "--out", str(tmp_path / "s")],
    ]
    if os.geteuid() != 0:  # root writes anywhere; the read-only case only means something for other users
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        cases.append(["leaderboard", "build", "--results", str(results), "--submissions", str(subs), "--out", str(ro / "s")])
    for argv in cases:
        code = cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (argv, err)
    assert not (tmp_path / "x.xlsx").exists()
    # a reader that leaves early (`canonbench results | head -1`): no traceback, exit 0
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    real = sys.stdout
    sys.stdout = ClosedPipe()
    try:
        code = cli.main(["results", "--results", str(results)])
    finally:
        sys.stdout = real
    assert code == 0
