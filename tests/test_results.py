import json
import math

import pandas as pd
import pytest

from benchmark.results import COLUMNS, MetricValue, ResultStore, UnitProvenance, make_rows


def _prov(submission="org/a", task="t", version="1", run_id="run-1"):
    return UnitProvenance(
        run_id=run_id, submission=submission, submission_kind="checkpoints", local=False, task=task,
        task_version=version, benchmark_version="0.1.0", git_sha="abc", device="cpu", dtype="float32",
        model="m", model_revision="0" * 40, hook="blocks.0.hook_resid_post", architecture="topk", width=8,
        seeds=[2, 1], checkpoints=[{"repo": "o/r", "resolved_revision": "1" * 40}],
    )


def test_metric_value_refuses_nan_and_silent_missing():
    with pytest.raises(ValueError, match="NaN"):
        MetricValue("m", float("nan"))
    with pytest.raises(ValueError, match="note"):
        MetricValue("m", None)
    assert MetricValue("m", None, note="undefined: constant input").value is None


def test_rows_carry_provenance_and_schema():
    rows = make_rows([MetricValue("pw_mcc", 0.8, std=0.01, n=3), MetricValue("x", None, note="n/a")],
                     _prov(), {"pw_mcc": "higher"}, timestamp="2026-01-01T00:00:00+00:00", runtime_s=1.5)
    assert list(rows.columns) == list(COLUMNS)
    assert rows.loc[0, "direction"] == "higher" and rows.loc[1, "direction"] == "none"
    assert json.loads(rows.loc[0, "seeds"]) == [1, 2]
    assert json.loads(rows.loc[0, "checkpoints"])[0]["repo"] == "o/r"
    assert pd.isna(rows.loc[1, "value"]) and rows.loc[1, "note"] == "n/a"
    assert rows.loc[0, "schema_version"] == 1


def test_store_roundtrip_skip_and_overwrite(tmp_path):
    store = ResultStore(tmp_path)
    first = make_rows([MetricValue("m", 1.0)], _prov(), {}, timestamp="t", runtime_s=0.0)
    assert store.write_unit(first, {"latents": pd.DataFrame({"latent": [0, 1]})})
    assert store.has_unit("org/a", "t", "1")
    second = make_rows([MetricValue("m", 2.0)], _prov(run_id="run-2"), {}, timestamp="t", runtime_s=0.0)
    assert not store.write_unit(second)  # the finished unit wins without --overwrite
    assert store.read()["value"].tolist() == [1.0]
    assert store.write_unit(second, overwrite=True)
    assert store.read()["value"].tolist() == [2.0]
    superseded = list((tmp_path / "superseded" / "run-2").rglob("*.parquet"))
    assert superseded, "overwritten rows are kept, not deleted"
    assert store.artifact_names("org/a", "t", "1") == []  # artifacts moved with the superseded unit


def test_store_reads_many_units_and_empty(tmp_path):
    store = ResultStore(tmp_path)
    assert len(store.read()) == 0 and list(store.read().columns) == list(COLUMNS)
    for sub in ("org/a", "org/b"):
        store.write_unit(make_rows([MetricValue("m", 0.5, ci_low=0.4, ci_high=0.6)], _prov(submission=sub), {},
                                   timestamp="t", runtime_s=0.0))
    frame = store.read()
    assert frame["submission"].tolist() == ["org/a", "org/b"]
    assert math.isclose(frame["ci_high"].iloc[0], 0.6)


def test_write_unit_rejects_mixed_units(tmp_path):
    a = make_rows([MetricValue("m", 1.0)], _prov(submission="org/a"), {}, timestamp="t", runtime_s=0)
    b = make_rows([MetricValue("m", 1.0)], _prov(submission="org/b"), {}, timestamp="t", runtime_s=0)
    with pytest.raises(ValueError, match="exactly one"):
        ResultStore(tmp_path).write_unit(pd.concat([a, b]))
