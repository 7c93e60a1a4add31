import json
import math

import pandas as pd
import pytest

from benchmark.results import COLUMNS, SCHEMA_VERSION, MetricValue, ResultStore, UnitProvenance, choose_shown_units, make_rows


def _prov(submission="org/a", task="t", version="1", run_id="run-1", spec_hash="a" * 16, inputs_hash="b" * 16,
          seed=0, limit=None):
    return UnitProvenance(
        run_id=run_id, submission=submission, submission_kind="checkpoints", local=False, task=task,
        task_version=version, benchmark_version="0.1.0", git_sha="abc", device="cpu", dtype="float32",
        spec={"seed": seed, "limit": limit}, spec_hash=spec_hash, inputs={"k": 1}, inputs_hash=inputs_hash,
        model="m", model_revision="0" * 40, hook="blocks.0.hook_resid_post", architecture="topk", width=8,
        seeds=[2, 1], checkpoints=[{"repo": "o/r", "resolved_revision": "1" * 40}],
    )


def _rows(value=1.0, timestamp="t", **kw):
    return make_rows([MetricValue("m", value)], _prov(**kw), {}, timestamp=timestamp, runtime_s=0.0)


def test_metric_value_refuses_nan_and_silent_missing():
    with pytest.raises(ValueError, match="NaN"):
        MetricValue("m", float("nan"))
    with pytest.raises(ValueError, match="note"):
        MetricValue("m", None)
    assert MetricValue("m", None, note="undefined: constant input").value is None


def test_rows_carry_provenance_spec_and_schema():
    rows = make_rows([MetricValue("pw_mcc", 0.8, std=0.01, n=3), MetricValue("x", None, note="n/a")],
                     _prov(seed=3, limit=50), {"pw_mcc": "higher"}, timestamp="2026-01-01T00:00:00+00:00", runtime_s=1.5)
    assert list(rows.columns) == list(COLUMNS)
    assert rows.loc[0, "direction"] == "higher" and rows.loc[1, "direction"] == "none"
    assert json.loads(rows.loc[0, "seeds"]) == [1, 2]
    assert json.loads(rows.loc[0, "checkpoints"])[0]["repo"] == "o/r"
    assert pd.isna(rows.loc[1, "value"]) and rows.loc[1, "note"] == "n/a"
    assert rows.loc[0, "schema_version"] == SCHEMA_VERSION
    assert rows.loc[0, "unit_key"] == "a" * 16 + "-" + "b" * 16
    assert rows.loc[0, "task_seed"] == 3 and bool(rows.loc[0, "capped"]) is True
    assert json.loads(rows.loc[0, "spec"]) == {"seed": 3, "limit": 50}


def test_store_roundtrip_skip_and_overwrite(tmp_path):
    store = ResultStore(tmp_path)
    first = _rows(1.0)
    key = first["unit_key"].iloc[0]
    assert store.write_unit(first, {"latents": pd.DataFrame({"latent": [0, 1]})})
    assert store.has_unit("org/a", "t", "1", key)
    second = _rows(2.0, run_id="run-2")
    assert not store.write_unit(second)  # the finished unit wins without --overwrite
    assert store.read()["value"].tolist() == [1.0]
    assert store.write_unit(second, overwrite=True)
    assert store.read()["value"].tolist() == [2.0]
    superseded = list((tmp_path / "superseded" / "run-2").rglob("*.parquet"))
    assert len(superseded) == 2, "the overwritten rows and their artifact are kept, not deleted"
    row = store.read().iloc[0]
    assert store.artifact_names(row) == []  # the new unit has no artifact; the old one is not shown with it


def test_overwrite_never_leaves_the_unit_missing(tmp_path, monkeypatch):
    """A failure while the new rows are written (disk full, a kill) leaves the old unit readable."""
    import benchmark.results as results_mod

    store = ResultStore(tmp_path)
    assert store.write_unit(_rows(1.0))
    real = results_mod.atomic_write_parquet

    def disk_full(frame, path, **kw):
        if path.name.endswith(".parquet") and "units" in path.parts:
            raise OSError(28, "No space left on device")
        return real(frame, path, **kw)

    monkeypatch.setattr(results_mod, "atomic_write_parquet", disk_full)
    with pytest.raises(OSError):
        store.write_unit(_rows(2.0, run_id="run-2"), overwrite=True)
    monkeypatch.setattr(results_mod, "atomic_write_parquet", real)
    assert store.read()["value"].tolist() == [1.0]


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
    a = _rows(submission="org/a")
    b = _rows(submission="org/b")
    with pytest.raises(ValueError, match="exactly one"):
        ResultStore(tmp_path).write_unit(pd.concat([a, b]))


def test_submission_names_map_to_distinct_units(tmp_path):
    """``a/b__c`` and ``a__b/c`` once shared one folder: the second was reported cached and never ran."""
    store = ResultStore(tmp_path)
    assert store.write_unit(_rows(1.0, submission="a/b__c"))
    assert store.write_unit(_rows(2.0, submission="a__b/c"))
    frame = store.read().set_index("submission")
    assert frame.loc["a/b__c", "value"] == 1.0 and frame.loc["a__b/c", "value"] == 2.0
    for bad in ("../x", "a/../../b", "A/b", "a/b/c", "a"):
        with pytest.raises(ValueError):
            store.unit_dir(bad, "t", "1")


def test_shown_units_prefer_full_runs_then_the_default_seed_then_the_newest(tmp_path):
    store = ResultStore(tmp_path)
    store.write_unit(_rows(1.0, spec_hash="1" * 16, limit=10, timestamp="2026-03"))  # capped, newest
    store.write_unit(_rows(2.0, spec_hash="2" * 16, seed=5, timestamp="2026-02"))  # full, another task seed
    store.write_unit(_rows(3.0, spec_hash="3" * 16, seed=0, timestamp="2026-01"))  # full, default seed
    assert choose_shown_units(store.read())["value"].tolist() == [3.0]
    only_capped = ResultStore(tmp_path / "b")
    only_capped.write_unit(_rows(1.0, spec_hash="1" * 16, limit=10))
    shown = choose_shown_units(only_capped.read())
    assert shown["value"].tolist() == [1.0] and bool(shown["capped"].iloc[0])


def test_stale_inputs_are_superseded_only_after_the_new_unit_is_stored(tmp_path):
    store = ResultStore(tmp_path)
    store.write_unit(_rows(1.0, inputs_hash="1" * 16))
    store.write_unit(_rows(2.0, inputs_hash="2" * 16, run_id="run-2"))
    moved = store.supersede_units("org/a", "t", "1", "a" * 16 + "-" + "2" * 16, spec_hash="a" * 16, run_id="run-2")
    assert moved == ["a" * 16 + "-" + "1" * 16]
    assert store.read()["value"].tolist() == [2.0]
    assert list((tmp_path / "superseded" / "run-2").rglob("*.parquet"))


def test_task_reported_provenance_reaches_every_row():
    """Keys a task reports beyond the model fields (e.g. the matching kernels) are kept in each
    row's extra; rows of a unit without them keep their extra unchanged."""
    from dataclasses import replace

    prov = replace(_prov(), computation={"matching_kernels": ["int8"]})
    rows = make_rows([MetricValue("a", 1.0, extra={"k": 2}), MetricValue("b", 2.0)], prov, {}, timestamp="t", runtime_s=0.0)
    assert [json.loads(e) for e in rows.extra] == [{"k": 2, "provenance": {"matching_kernels": ["int8"]}},
                                                   {"provenance": {"matching_kernels": ["int8"]}}]
    plain = make_rows([MetricValue("a", 1.0, extra={"k": 2})], _prov(), {}, timestamp="t", runtime_s=0.0)
    assert json.loads(plain.extra.iloc[0]) == {"k": 2}
