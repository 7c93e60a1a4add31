"""Choosing an executor without a cluster: Ray is an optional extra, and its absence is one line."""

from __future__ import annotations

import sys

import fault_tasks
from benchmark import cli
from fault_tasks import write_submissions


def test_the_ray_executor_without_ray_installed_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    fault_tasks.register(monkeypatch)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is not installed
    subs = write_submissions(tmp_path / "subs", ["a"])
    results = tmp_path / "r"
    assert cli.main(["run", str(subs), "--results", str(results), "--tasks", "fault-ok", "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "--executor" in err and "pip install 'canonbench[ray]'" in err
    assert not (results / "units").exists()  # nothing ran half-way
    # the local executor never needs it
    assert cli.main(["run", str(subs), "--results", str(results), "--tasks", "fault-ok", "--quiet"]) == 0
