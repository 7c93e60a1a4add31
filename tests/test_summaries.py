"""The summary contract's stored inputs: a summary that declares ``inputs`` gets the named artifacts of the
shown units (its own task's and another task's), stacked and read-only; ``units`` lists every unit read;
summaries without inputs are called as before."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from benchmark.results import MetricValue, ResultStore, UnitProvenance, make_rows
from benchmark.spec import short_hash
from benchmark.summaries import summarize
from tasks.base import ArtifactSpec, MetricSpec, SummaryInput, SummarySpec, Task, TaskMetadata

seen: dict[str, object] = {}


def _with_inputs(rows, artifacts):
    seen["rows"], seen["artifacts"] = rows, artifacts
    with pytest.raises(TypeError):
        artifacts[("x", "y")] = pd.DataFrame()  # read-only
    own = artifacts[("own", "items")]
    return pd.DataFrame({"n_items": [len(own)], "n_notes": [len(artifacts[("other", "notes")])]})


def _plain(rows):
    seen["plain"] = rows
    return pd.DataFrame({"n": [len(rows)]})


def _task(name, artifact, columns, summaries=()):
    meta = TaskMetadata(name=name, version="1", title=name, description="d", accepts=("recipe",),
                        metrics=(MetricSpec("m", "d", "higher", main=True),),
                        artifacts=(ArtifactSpec(artifact, "d", columns),), summaries=summaries)
    return type(name.title(), (Task,), {"metadata": meta})


OWN = _task("own", "items", ("item",), summaries=(
    SummarySpec("joined", "1", "t", "d", ("n_items", "n_notes"), _with_inputs,
                inputs=(SummaryInput("own", "items"), SummaryInput("other", "notes"))),
    SummarySpec("plain", "1", "t", "d", ("n",), _plain),
))
OTHER = _task("other", "notes", ("latent", "note"))


def _write(store, sub, task, artifacts, *, seed=0, stamp="2026-01-01"):
    spec = {"task": task.metadata.name, "task_version": "1", "seed": seed}
    prov = UnitProvenance(run_id=f"r{short_hash([sub, spec])}", submission=sub, submission_kind="recipe", local=True,
                          task=task.metadata.name, task_version="1", benchmark_version="0", git_sha=None, device="cpu",
                          dtype="float32", spec=spec, spec_hash=short_hash(spec), inputs_hash=short_hash(sub))
    store.write_unit(make_rows([MetricValue("m", 0.0)], prov, task.metadata.directions, timestamp=stamp,
                               runtime_s=0.0), artifacts)
    return prov.unit_key


def test_inputs_are_the_shown_units_artifacts_stacked_and_listed_in_provenance(tmp_path):
    seen.clear()
    store = ResultStore(tmp_path)
    own_a = _write(store, "o/a", OWN, {"items": pd.DataFrame({"item": [1, 2]})})
    own_b = _write(store, "o/b", OWN, {"items": pd.DataFrame({"item": [3]})})
    other_a = _write(store, "o/a", OTHER, {"notes": pd.DataFrame({"latent": [1], "note": ["x"]})})
    other_c = _write(store, "o/c", OTHER, {})  # a shown unit without the artifact: consulted, adds no rows
    rerun = _write(store, "o/a", OTHER, {"notes": pd.DataFrame({"latent": [9], "note": ["not shown"]})}, seed=4,
                   stamp="2026-02-01")
    outcomes = summarize(tmp_path, registry={"own": OWN, "other": OTHER}, tasks=["own"])
    assert [o.error for o in outcomes] == [None, None]
    notes = seen["artifacts"][("other", "notes")]
    assert list(notes.columns) == ["submission", "unit_key", "latent", "note"]
    assert notes[["submission", "unit_key", "note"]].values.tolist() == [["o/a", other_a, "x"]]
    items = seen["artifacts"][("own", "items")]
    assert items[["submission", "item"]].values.tolist() == [["o/a", 1], ["o/a", 2], ["o/b", 3]]
    assert set(seen["rows"]["task"]) == {"own"}  # rows stay the summary's own task's
    joined = store.read_summary("own", "joined", "1")
    assert joined[["n_items", "n_notes"]].values.tolist() == [[3, 1]]
    assert set(json.loads(joined["units"].iloc[0])) == {own_a, own_b, other_a, other_c}  # not the rerun
    assert rerun not in json.loads(joined["units"].iloc[0])
    plain = store.read_summary("own", "plain", "1")  # no inputs: called with the rows only, units as before
    assert set(json.loads(plain["units"].iloc[0])) == {own_a, own_b}


def test_an_input_with_nothing_stored_has_the_declared_columns_and_no_rows(tmp_path):
    seen.clear()
    _write(ResultStore(tmp_path), "o/a", OWN, {"items": pd.DataFrame({"item": [1]})})
    assert [o.error for o in summarize(tmp_path, registry={"own": OWN, "other": OTHER}, tasks=["own"])] == [None, None]
    notes = seen["artifacts"][("other", "notes")]
    assert len(notes) == 0 and list(notes.columns) == ["submission", "unit_key", "latent", "note"]


def test_an_input_no_registered_task_declares_fails_that_summary_only(tmp_path):
    _write(ResultStore(tmp_path), "o/a", OWN, {"items": pd.DataFrame({"item": [1]})})
    bad = _task("own", "items", ("item",), summaries=(
        SummarySpec("missing-task", "1", "t", "d", ("n",), lambda rows, artifacts: pd.DataFrame({"n": [0]}),
                    inputs=(SummaryInput("no-such-task", "x"),)),
        SummarySpec("missing-artifact", "1", "t", "d", ("n",), lambda rows, artifacts: pd.DataFrame({"n": [0]}),
                    inputs=(SummaryInput("other", "no-such-artifact"),)),
        SummarySpec("plain", "1", "t", "d", ("n",), _plain),
    ))
    outcomes = {o.name: o for o in summarize(tmp_path, registry={"own": bad, "other": OTHER}, tasks=["own"])}
    assert "not registered" in outcomes["missing-task"].error
    assert "does not declare" in outcomes["missing-artifact"].error
    assert outcomes["plain"].error is None


def test_metadata_refuses_a_summary_reading_an_undeclared_artifact_of_its_own_task():
    with pytest.raises(ValueError, match="undeclared artifact"):
        _task("own", "items", ("item",), summaries=(
            SummarySpec("s", "1", "t", "d", ("n",), _plain, inputs=(SummaryInput("own", "other-table"),)),))
    with pytest.raises(ValueError, match="twice"):
        SummarySpec("s", "1", "t", "d", ("n",), _plain, inputs=(SummaryInput("a", "b"), SummaryInput("a", "b")))
