"""The description-length summaries ``triple_explanations`` and ``triple_explanation_counts``: stored
triples joined with explanation-similarity's stored explanations of the same submission and SAE seed,
by ``canonbench summarize``. Expected values are written out by hand in the fixture module."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

import triple_explanation_fixtures as fx
from benchmark.results import ResultStore
from benchmark.summaries import summarize
from tasks.description_length import (
    DISAGREE_BELOW,
    TRIPLE_EXPLANATION_COLUMNS,
    TRIPLE_EXPLANATION_COUNT_COLUMNS,
    DescriptionLengthTask,
    explanation_similarity,
)

DL = "description-length"


def _value(v):
    """None for a stored null (None, NaN, pd.NA), else the value."""
    try:
        return None if v is None or (not isinstance(v, str) and bool(v != v)) else v
    except TypeError:  # pd.NA
        return None


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("triple-store")
    units = fx.write_store(root)
    outcomes = summarize(root, registry=fx.TASKS, tasks=[DL])
    mine = {o.name: o for o in outcomes if o.name.startswith("triple_")}
    assert set(mine) == {"triple_explanations", "triple_explanation_counts"}
    assert all(o.error is None for o in mine.values()), [o.error for o in mine.values()]
    store = ResultStore(root)
    return {"units": units, "per_triple": store.read_summary(DL, "triple_explanations", "1"),
            "counts": store.read_summary(DL, "triple_explanation_counts", "1"), "root": root}


def test_the_summaries_are_declared_versioned_and_read_both_tasks():
    specs = {s.name: s for s in DescriptionLengthTask.metadata.summaries}
    for name in ("triple_explanations", "triple_explanation_counts"):
        spec = specs[name]
        assert spec.version == "1" and spec.rows == "shown"
        assert {(i.task, i.artifact) for i in spec.inputs} == {(DL, "triples"),
                                                               ("explanation-similarity", "explanation_pairs")}
        assert "Jaccard" in spec.description and str(DISAGREE_BELOW) in spec.description


def test_every_stored_triple_gets_exactly_the_expected_row(stored):
    table = stored["per_triple"]
    assert list(table.columns[:len(TRIPLE_EXPLANATION_COLUMNS)]) == list(TRIPLE_EXPLANATION_COLUMNS)
    got = {}
    for r in table.to_dict("records"):
        got[(r["submission"], int(r["seed"]), int(r["latent"]))] = (
            int(r["swapped"]), int(r["shared"]), _value(r["explanation_latent"]), _value(r["explanation_swapped"]),
            _value(r["explanation_shared"]), _value(r["similarity"]), _value(r["disagree"]))
    assert len(table) == len(fx.EXPECTED_TRIPLES) and set(got) == set(fx.EXPECTED_TRIPLES)
    for key, expected in fx.EXPECTED_TRIPLES.items():
        *rest, similarity, disagree = got[key]
        *want_rest, want_similarity, want_disagree = expected
        assert rest == want_rest, key
        if want_similarity is None:
            assert similarity is None and disagree is None, key
        else:
            assert similarity == pytest.approx(want_similarity, abs=1e-12), key
            assert bool(disagree) is want_disagree, key
    # rows carry the triple as stored (partners and coefficients unchanged), sorted by submission, seed, latent
    first = table.iloc[0]
    assert (first["partner_j"], first["partner_k"], first["coef_j"], first["coef_k"]) == (11, 12, 0.9, -0.05)
    keys = list(zip(table["submission"], table["seed"], table["latent"]))
    assert keys == sorted(keys)


def test_per_submission_counts_say_when_nothing_is_available(stored):
    counts = stored["counts"]
    assert list(counts.columns[:len(TRIPLE_EXPLANATION_COUNT_COLUMNS)]) == list(TRIPLE_EXPLANATION_COUNT_COLUMNS)
    assert sorted(counts["submission"]) == sorted(fx.EXPECTED_COUNTS)  # delta has no description-length unit
    for r in counts.to_dict("records"):
        n_triples, n_any, n_explained, n_disagree, fraction, words = fx.EXPECTED_COUNTS[r["submission"]]
        assert (r["n_triples"], r["n_any_explanation"], r["n_explained"], r["n_disagree"]) == \
               (n_triples, n_any, n_explained, n_disagree), r["submission"]
        if fraction is None:
            assert _value(r["disagree_fraction"]) is None
        else:
            assert r["disagree_fraction"] == pytest.approx(fraction)
        assert words in r["note"] and (words or r["note"] == "")
        assert r["disagree_below"] == DISAGREE_BELOW
    by_sub = counts.set_index("submission")
    units = stored["units"]
    assert by_sub.loc["lab/alpha", "triples_unit"] == units["alpha-dl"]
    assert by_sub.loc["lab/alpha", "explanations_unit"] == units["alpha-es"]  # the shown unit, not the rerun
    assert by_sub.loc["lab/beta", "explanations_unit"] == ""


def test_provenance_lists_the_units_of_both_tasks_it_read(stored):
    units = stored["units"]
    expected = {units[k] for k in ("alpha-dl", "beta-dl", "gamma-dl", "alpha-es", "gamma-es", "delta-es")}
    for table in (stored["per_triple"], stored["counts"]):
        assert set(table["summary_version"]) == {"1"} and set(table["task"]) == {DL}
        recorded = {frozenset(json.loads(u)) for u in table["units"]}
        assert recorded == {frozenset(expected)}  # the non-shown rerun (task seed 3) was not read


def test_a_submission_without_explanations_yields_zero_counts_not_an_error(tmp_path):
    store = ResultStore(tmp_path)
    fx.write_unit(store, "lab/beta", DL, {"triples": pd.DataFrame(fx.BETA_TRIPLES)})
    outcomes = {o.name: o for o in summarize(tmp_path, registry=fx.TASKS, tasks=[DL])}
    assert outcomes["triple_explanation_counts"].error is None and outcomes["triple_explanations"].error is None
    counts = store.read_summary(DL, "triple_explanation_counts", "1")
    assert counts[["n_triples", "n_explained"]].values.tolist() == [[1, 0]]
    per_triple = store.read_summary(DL, "triple_explanations", "1")
    assert len(per_triple) == 1 and _value(per_triple["similarity"].iloc[0]) is None


def test_an_empty_store_gives_empty_tables(tmp_path):
    outcomes = {o.name: o for o in summarize(tmp_path, registry=fx.TASKS, tasks=[DL])}
    assert outcomes["triple_explanations"].error is None and outcomes["triple_explanations"].rows == 0
    assert outcomes["triple_explanation_counts"].error is None and outcomes["triple_explanation_counts"].rows == 0


@pytest.mark.parametrize("a, b, expected", [
    ("Fires on THE", "fires on the", 1.0),
    ("numbers, digits", "digits; years", 1 / 3),
    ("", "", 1.0),
    ("…", "cat", 0.0),
    ("café crème", "Café", 0.5),
])
def test_explanation_similarity_is_token_set_jaccard(a, b, expected):
    assert math.isclose(explanation_similarity(a, b), expected)
