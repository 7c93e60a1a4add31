"""The exact matcher against scipy's dense assignment, closed forms and its own certificate."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from benchmark import native
from benchmark.errors import CanonBenchError
from benchmark.metrics.matching import (
    Matching,
    chance_mcc,
    match_dictionaries,
    mcc,
    mean_max_cosine,
    pw_mcc,
)
from benchmark.metrics.matching import _cosine, _kernels
from benchmark.metrics.matching._engine import solve_certified
from benchmark.metrics.matching._synthetic import seed_like_pair


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def dense_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Independent MCC: full fp64 cosine matrix, scipy dense assignment, mean over the smaller side."""
    cos = unit(a) @ unit(b).T
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return float(cos[rows, cols].sum() / min(cos.shape))


def seed_like(n: int, d: int, rng: np.random.Generator, unrelated: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    a = rng.standard_normal((n, d))
    b = a[rng.permutation(n)] + 0.3 * rng.standard_normal((n, d))
    replaced = rng.choice(n, int(unrelated * n), replace=False)
    b[replaced] = rng.standard_normal((len(replaced), d))
    return a, b


def assert_valid_matching(match: Matching, a: np.ndarray, b: np.ndarray) -> None:
    m, n = len(a), len(b)
    assert len(match.rows_a) == len(match.rows_b) == min(m, n)
    assert len(np.unique(match.rows_a)) == len(match.rows_a)
    assert len(np.unique(match.rows_b)) == len(match.rows_b)
    assert match.rows_a.max() < m and match.rows_b.max() < n
    expected = np.einsum("ij,ij->i", unit(a)[match.rows_a], unit(b)[match.rows_b])
    np.testing.assert_allclose(match.cosines, expected, atol=1e-12)
    assert match.value == pytest.approx(match.cosines.mean(), abs=1e-15)
    assert match.averaged_side == ("a" if m <= n else "b")


SHAPES = [(1, 1, 3), (1, 7, 4), (7, 1, 4), (2, 2, 2), (5, 9, 3), (9, 5, 3), (40, 40, 8), (60, 90, 5),
          (90, 60, 5), (150, 150, 16), (120, 300, 12), (300, 120, 12)]


@pytest.mark.parametrize("method", ["sparse", "dense", "auto"])
@pytest.mark.parametrize("shape", SHAPES)
def test_random_matches_scipy_dense(shape, method):
    m, n, d = shape
    rng = np.random.default_rng(m * 1000 + n)
    a, b = rng.standard_normal((m, d)), rng.standard_normal((n, d))
    match = match_dictionaries(a, b, method=method)
    assert match.certified
    assert_valid_matching(match, a, b)
    assert match.value == pytest.approx(dense_reference(a, b), abs=1e-9)


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("seed", range(4))
def test_seed_like_sparse_matches_scipy_dense(seed, k):
    rng = np.random.default_rng(seed)
    a, b = seed_like(400, 24, rng)
    match = match_dictionaries(a, b, method="sparse", k=k)
    assert match.certified and match.method == "sparse-certified"
    assert match.value == pytest.approx(dense_reference(a, b), abs=1e-9)


def test_permutation_gives_one_and_recovers_it():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 32))
    perm = rng.permutation(300)
    b = 3.0 * a[perm]  # scale must not matter
    match = match_dictionaries(a, b, method="sparse")
    assert match.value == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_array_equal(perm[match.rows_b], match.rows_a)


def test_sign_flip_is_signed():
    a = np.array([[0.3, -1.2, 2.0]])
    assert mcc(a, -a) == pytest.approx(-1.0, abs=1e-12)
    # orthonormal rows; f of them flipped: flipped rows can do no better than 0 (a derangement among
    # themselves), the others keep 1 → MCC = (m − f) / m
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((64, 64)))
    flips = np.ones(64)
    flips[:10] = -1
    perm = np.random.default_rng(2).permutation(64)
    for method in ("sparse", "dense"):
        assert mcc(q, (q * flips[:, None])[perm], method=method) == pytest.approx(54 / 64, abs=1e-12)
        assert mcc(q, -q, method=method) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_dead_and_duplicate_rows(method):
    rng = np.random.default_rng(3)
    a, b = seed_like(200, 16, rng)
    a[:15] = 0.0  # dead latents in a
    b[20:50] = 0.0  # dead latents in b
    a[100:130] = a[100]  # 30 duplicates of one latent
    b[60:90] = b[61] * 2.0
    b[150:170] = -b[150]
    match = match_dictionaries(a, b, method=method, k=1)
    assert match.certified
    assert match.dead_a == 15 and match.dead_b == 30
    assert_valid_matching(match, a, b)
    assert match.value == pytest.approx(dense_reference(a, b), abs=1e-9)


@pytest.mark.parametrize("shape", [(30, 200), (200, 30), (1, 50), (50, 1)])
def test_dead_rows_rectangular(shape):
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((shape[0], 6)), rng.standard_normal((shape[1], 6))
    a[::3] = 0.0
    b[1::4] = 0.0
    match = match_dictionaries(a, b, method="sparse")
    assert_valid_matching(match, a, b)
    assert match.value == pytest.approx(dense_reference(a, b), abs=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unit_rows_divide_exactly_and_leave_the_input_alone(dtype):
    """unit_rows64: each row divided by its fp64 norm (one correctly rounded division per entry, as numpy
    does it), zero rows stay zero and live is False for them, and the caller's array is not modified."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((50, 33)) * rng.uniform(1e-3, 1e3, (50, 1))).astype(dtype)
    x[[4, 17]] = 0.0
    before = x.copy()
    unit, live = _cosine.unit_rows64(torch.from_numpy(x))
    np.testing.assert_array_equal(x, before)
    norms = torch.linalg.vector_norm(torch.from_numpy(x), dim=1, dtype=torch.float64).numpy()
    want = x.astype(np.float64) / np.where(norms > 0, norms, 1.0)[:, None]
    assert unit.dtype == torch.float64
    np.testing.assert_array_equal(unit.numpy(), want)
    np.testing.assert_array_equal(live, norms > 0)
    assert not live[[4, 17]].any() and (unit.numpy()[[4, 17]] == 0).all()


def test_all_rows_dead():
    a = np.zeros((5, 4))
    b = np.random.default_rng(0).standard_normal((8, 4))
    match = match_dictionaries(a, b, method="sparse")
    assert match.value == 0.0 and match.dead_a == 5
    assert_valid_matching(match, a, b)


def test_near_ties():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((50, 10))
    a = np.repeat(base, 4, axis=0) + 1e-9 * rng.standard_normal((200, 10))
    b = np.repeat(base[rng.permutation(50)], 4, axis=0) + 1e-9 * rng.standard_normal((200, 10))
    for method in ("sparse", "dense"):
        assert mcc(a, b, method=method) == pytest.approx(dense_reference(a, b), abs=1e-9)


def test_inputs_torch_any_dtype():
    rng = np.random.default_rng(6)
    a, b = seed_like(300, 20, rng)
    ref = dense_reference(a, b)
    assert mcc(torch.from_numpy(a), torch.from_numpy(b), method="sparse") == pytest.approx(ref, abs=1e-9)
    a16 = torch.from_numpy(a).to(torch.bfloat16)
    b16 = torch.from_numpy(b).to(torch.bfloat16)
    ref16 = dense_reference(a16.double().numpy(), b16.double().numpy())
    assert mcc(a16, b16, method="sparse") == pytest.approx(ref16, abs=1e-9)
    assert mcc(a.astype(np.float32), b.astype(np.float32)) == pytest.approx(
        dense_reference(a.astype(np.float32), b.astype(np.float32)), abs=1e-9)


matrices = st.integers(1, 30).flatmap(
    lambda m: st.tuples(
        st.lists(st.lists(st.integers(-3, 3), min_size=3, max_size=3), min_size=m, max_size=m),
        st.lists(st.lists(st.integers(-3, 3), min_size=3, max_size=3), min_size=1, max_size=30),
        st.integers(1, 3),
        st.sampled_from([0.0, 0.2]),
    )
)


@settings(max_examples=60, deadline=None)
@given(matrices)
def test_property_sparse_equals_dense(case):
    """Small integer entries: many zero rows, duplicates, sign flips and exact ties."""
    a, b, k, fix_margin = case
    a, b = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    match = match_dictionaries(a, b, method="sparse", k=k, fix_margin=fix_margin)
    assert match.certified
    assert_valid_matching(match, a, b)
    assert match.value == pytest.approx(dense_reference(a, b), abs=1e-9)


def test_pw_mcc_against_pairwise_dense():
    rng = np.random.default_rng(9)
    base = rng.standard_normal((150, 12))
    seeds = [base[rng.permutation(150)] + s * 0.3 * rng.standard_normal((150, 12)) for s in range(4)]
    result = pw_mcc(seeds, method="sparse", return_matchings=True)
    expected = {(i, j): dense_reference(seeds[i], seeds[j]) for i, j in itertools.combinations(range(4), 2)}
    assert set(result.values) == set(expected)
    for key, value in expected.items():
        assert result.values[key] == pytest.approx(value, abs=1e-9)
        assert result.matchings[key].value == pytest.approx(value, abs=1e-9)
    values = np.array(list(expected.values()))
    assert result.mean == pytest.approx(values.mean(), abs=1e-9)
    assert result.std == pytest.approx(values.std(ddof=1), abs=1e-9)
    assert [p[:2] for p in result.pairs] == sorted(expected)
    with pytest.raises(CanonBenchError):
        pw_mcc(seeds[:1])


def test_chance_mcc_against_scipy_monte_carlo():
    m, n, d = 60, 80, 10
    chance = chance_mcc(m, n, d, seed=3, trials=4)
    # same documented draws, scored independently with scipy dense
    values = []
    for trial in range(4):
        rng = np.random.default_rng([3, trial])
        a, b = rng.standard_normal((m, d)), rng.standard_normal((n, d))
        values.append(dense_reference(a, b))
    assert chance.mean == pytest.approx(np.mean(values), abs=1e-9)
    assert chance.std == pytest.approx(np.std(values, ddof=1), abs=1e-9)
    # and a fresh Monte Carlo with other draws agrees statistically
    fresh = []
    for t in range(8):
        rng = np.random.default_rng(1000 + t)
        fresh.append(dense_reference(rng.standard_normal((m, d)), rng.standard_normal((n, d))))
    assert abs(chance.mean - np.mean(fresh)) < 5 * (np.std(fresh, ddof=1) + chance.std) / 2
    # chance is well above 0 at small d (metrics.md)
    assert chance.mean > 0.3


def test_mean_max_cosine():
    rng = np.random.default_rng(10)
    a, b = rng.standard_normal((200, 9)), rng.standard_normal((333, 9))
    a[5] = 0.0
    expected = (unit(a) @ unit(b).T).max(axis=1).mean()
    assert mean_max_cosine(a, b, block_rows=64) == pytest.approx(expected, abs=1e-12)
    assert mean_max_cosine(a, b) >= mcc(a, b) - 1e-12


def test_bad_inputs_raise_clear_errors():
    a = np.ones((4, 3))
    with pytest.raises(CanonBenchError, match="dimension mismatch"):
        mcc(a, np.ones((4, 5)))
    bad = a.copy()
    bad[2, 1] = np.nan
    with pytest.raises(CanonBenchError, match="row 2"):
        mcc(bad, a)
    with pytest.raises(CanonBenchError, match="2-D"):
        mcc(np.ones(3), a)
    with pytest.raises(CanonBenchError, match="method"):
        mcc(a, a, method="fast")
    with pytest.raises(CanonBenchError, match="empty"):
        mcc(np.ones((0, 3)), a)
    with pytest.raises(CanonBenchError, match="CUDA"):
        if torch.cuda.is_available():
            raise CanonBenchError("CUDA skip")
        mcc(a, a, device="cuda")


# --- the sparse engine's certificate and safety nets ------------------------------------------


def _units(a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return _cosine.unit_rows64(torch.from_numpy(a))[0], _cosine.unit_rows64(torch.from_numpy(b))[0]


def _verified(kind: str, dim: int = 64) -> bool:
    return _kernels.kernel_verified(kind, "cpu", dim)


@pytest.mark.parametrize("candidates", ["auto", "int8", "bf16", "fp32"])
def test_certificate_duals_are_feasible_for_the_dense_problem(candidates):
    """The returned duals must prove optimality on every entry of the dense problem."""
    if candidates != "auto" and not _verified(candidates, 6):
        pytest.skip(f"{candidates} kernel unavailable here")
    rng = np.random.default_rng(7)
    for trial in range(12):
        m = int(rng.integers(2, 120))
        n = int(rng.integers(m, 200))
        a, b = rng.standard_normal((m, 6)), rng.standard_normal((n, 6))
        if trial % 2:
            b[: m // 2] = a[: m // 2] + 0.1 * rng.standard_normal((m // 2, 6))
        ua, ub = _units(a, b)
        raw = solve_certified(ua, ub, device=torch.device("cpu"), k=1 + trial % 3, max_rounds=200,
                              candidates=candidates, price_sample=16)
        cos = (ua @ ub.T).numpy()
        u, v = raw.row_dual, raw.col_dual
        assert raw.certified
        assert (u[:, None] + v[None, :] - cos).min() >= -1e-9  # dual feasible everywhere
        assert v.min() >= -1e-12
        total = cos[np.arange(m), raw.row_col].sum()
        assert u.sum() + v.sum() == pytest.approx(total, abs=1e-9)  # weak duality is tight


def test_too_small_candidate_set_is_widened():
    """k=1 on contested random dictionaries: the certificate must fail first and widen the entries."""
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((400, 8)), rng.standard_normal((400, 8))
    match = match_dictionaries(a, b, method="sparse", k=1)
    assert match.certified
    assert match.details["known_entries"] > 400 * 2  # grew beyond the first pass's entries
    assert match.details["row_pass_rows"] > 0
    assert match.value == pytest.approx(dense_reference(a, b), abs=1e-9)


def test_uncertified_when_rounds_run_out():
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((400, 8)), rng.standard_normal((400, 8))
    match = match_dictionaries(a, b, method="sparse", k=1, max_rounds=1)
    assert not match.certified and match.method == "sparse-uncertified"


@pytest.mark.parametrize("unshared", [0.0, 0.3, 0.7, 0.9])
def test_realistic_low_shared_pairs_match_scipy_dense(unshared):
    """Seed-like pairs from the anisotropic, clustered law (most rows unshared in the hard cases),
    with the price sample switched on."""
    pair = seed_like_pair(700, 48, unshared=unshared, seed=3, cluster_size=8)
    ref = dense_reference(pair.a, pair.b)
    match = match_dictionaries(pair.a, pair.b, method="sparse", price_sample=128)
    assert match.certified and match.details["price_sample"] > 0
    assert_valid_matching(match, pair.a.astype(np.float64), pair.b.astype(np.float64))
    assert match.value == pytest.approx(ref, abs=1e-9)
    if unshared >= 0.7:  # the hard regime really needs the certificate's row passes
        assert match.details["row_pass_rows"] > 0


def test_realistic_pairs_rectangular():
    pair = seed_like_pair(500, 32, unshared=0.6, seed=4, n_b=650, cluster_size=8)
    for a, b in ((pair.a, pair.b), (pair.b, pair.a)):
        match = match_dictionaries(a, b, method="sparse", price_sample=96)
        assert match.certified
        assert match.value == pytest.approx(dense_reference(a, b), abs=1e-9)


def test_synthetic_pairs_have_the_designed_structure():
    pair = seed_like_pair(2000, 96, unshared=0.3, seed=5)
    cos = unit(pair.a) @ unit(pair.b).T
    has = pair.partner >= 0
    assert has.mean() == pytest.approx(0.7, abs=1e-3)
    designed = cos[pair.partner[has], np.flatnonzero(has)]
    np.testing.assert_allclose(designed, pair.cosine[has], atol=1e-5)
    assert designed.min() >= 0.7 - 1e-5 and designed.max() <= 0.95 + 1e-5
    # anisotropic: unrelated rows still have many moderately high cosines
    best_unshared = np.sort(cos[:, ~has], axis=0)[::-1]
    assert np.median(best_unshared[0]) > 0.3 and np.median(best_unshared[9]) > 0.25
    assert cos.mean() > 0.03


def test_solver_answer_not_optimal_on_its_graph_is_repaired(monkeypatch):
    """A sparse solve that returns a full matching of its graph that is not optimal there must be
    caught by the exchange-graph duals (negative cycle) and repaired by the improving exchanges."""
    from benchmark.metrics.matching import _engine

    rng = np.random.default_rng(12)
    a, b = rng.standard_normal((300, 10)), rng.standard_normal((320, 10))
    real = _engine.min_weight_full_bipartite_matching

    def scrambled(graph):
        noisy = graph.copy()
        noisy.data = rng.uniform(1.0, 3.0, len(noisy.data))  # same pattern, wrong weights
        return real(noisy)

    monkeypatch.setattr(_engine, "min_weight_full_bipartite_matching", scrambled)
    match = match_dictionaries(a, b, method="sparse")
    assert match.certified and match.details["improvements"] > 0
    assert match.value == pytest.approx(dense_reference(a, b), abs=1e-9)


def test_graph_without_full_matching_is_completed():
    """Near-identical rows all choose the same few columns: the first graph has no full matching."""
    rng = np.random.default_rng(13)
    base = rng.standard_normal((1, 12))
    a = base + 1e-3 * rng.standard_normal((150, 12))
    b = rng.standard_normal((170, 12))
    ua, ub = _units(a, b)
    raw = solve_certified(ua, ub, device=torch.device("cpu"), k=2, col_k=0, price_sample=0)
    assert raw.certified and raw.stats.completions > 0
    cos = (ua @ ub.T).numpy()
    assert cos[np.arange(150), raw.row_col].mean() == pytest.approx(dense_reference(a, b), abs=1e-9)


def test_warm_duals_start_from_given_prices():
    """exchange_duals(start_col=...) returns feasible duals with v ≥ start (or reports failure)."""
    from benchmark.metrics.matching._duals import Duals, exchange_duals

    rng = np.random.default_rng(14)
    cos = unit(rng.standard_normal((80, 6))) @ unit(rng.standard_normal((80, 6))).T
    rows, cols = linear_sum_assignment(cos, maximize=True)
    sigma = cols[np.argsort(rows)]
    er, ec = np.nonzero(np.ones_like(cos, dtype=bool))
    start = rng.uniform(0, 0.3, 80)
    res = exchange_duals(sigma, cos[np.arange(80), sigma], 80, er, ec, cos[er, ec], start_col=start)
    assert isinstance(res, Duals)
    assert (res.col >= start - 1e-12).all()
    assert (res.row[:, None] + res.col[None, :] - cos).min() >= -1e-9
    assert res.row.sum() + res.col.sum() == pytest.approx(cos[np.arange(80), sigma].sum(), abs=1e-9)


def _sparse_exchange_problem(seed: int, m: int = 120, n: int = 140, keep: float = 0.15):
    """An assignment optimal on a sparse set of known entries (the diagonal of σ always known)."""
    rng = np.random.default_rng(seed)
    cos = unit(rng.standard_normal((m, 8))) @ unit(rng.standard_normal((n, 8))).T
    known = rng.random((m, n)) < keep
    rows, cols = linear_sum_assignment(np.where(known, cos, -10.0), maximize=True)
    sigma = cols[np.argsort(rows)]
    known[np.arange(m), sigma] = True
    er, ec = np.nonzero(known)
    return cos, sigma, er, ec


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("start", ["cold", "start_col", "warm"])
def test_native_exchange_search_equals_the_numpy_search(seed, start):
    """The C++ queue search and the numpy rounds reach the same duals (the largest feasible y below the
    start), from scratch, from given prices and continued from earlier duals after entries were added."""
    from benchmark.metrics.matching import _exchange
    from benchmark.metrics.matching._duals import Duals, exchange_duals

    if not _exchange.available():
        pytest.skip("needs a C++ compiler")
    cos, sigma, er, ec = _sparse_exchange_problem(seed)
    m, n = cos.shape
    value = cos[np.arange(m), sigma]
    kwargs = {}
    if start == "start_col":
        init = np.random.default_rng(seed).uniform(0, 0.3, n)
        init[np.setdiff1d(np.arange(n), sigma)] = 0.0
        kwargs = {"start_col": init}
    elif start == "warm":
        # duals of a smaller graph, then the rest of the entries added for a few rows
        sub = (er % 3 == 0) | (ec == sigma[er])
        earlier = exchange_duals(sigma, value, n, er[sub], ec[sub], cos[er[sub], ec[sub]], native=False)
        assert isinstance(earlier, Duals)
        feasible = cos[er, ec] <= earlier.row[er] + earlier.col[ec] + 1e-12
        changed = np.unique(er[~feasible])
        assert len(changed)  # the added entries do move the duals
        kwargs = {"warm": earlier, "warm_rows": changed}
    got = exchange_duals(sigma, value, n, er, ec, cos[er, ec], native=True, **kwargs)
    want = exchange_duals(sigma, value, n, er, ec, cos[er, ec], native=False, **kwargs)
    assert type(got) is type(want)
    if isinstance(want, Duals):
        np.testing.assert_allclose(got.col, want.col, rtol=0, atol=1e-9)
        np.testing.assert_allclose(got.row, want.row, rtol=0, atol=1e-9)
        assert (got.row[er] + got.col[ec] - cos[er, ec]).min() >= -1e-9  # feasible on every known entry
        assert got.col.min() >= 0 and (got.col[np.setdiff1d(np.arange(n), sigma)] == 0).all()


def test_native_exchange_search_reports_negative_cycles_that_improve_the_assignment():
    """An assignment that is not optimal on its known entries: the C++ search stops at a negative cycle
    of its predecessors, and applying the exchanges it reports raises the assignment's value, as the
    numpy search's report does."""
    from benchmark.metrics.matching import _duals, _exchange

    if not _exchange.available():
        pytest.skip("needs a C++ compiler")
    for seed in range(4, 8):
        cos, sigma, er, ec = _sparse_exchange_problem(seed, keep=0.4)
        m, n = cos.shape
        known = set(zip(er.tolist(), ec.tolist()))
        # rotate the columns of rows whose rotated entries are known: a worse assignment on the graph
        rows = [i for i in range(m) if (i, int(sigma[(i + 1) % m])) in known][:6]
        worse = sigma.copy()
        worse[rows] = sigma[np.roll(rows, -1)]
        er_all = np.concatenate([er, np.array(rows), np.array(rows)])
        ec_all = np.concatenate([ec, worse[rows], sigma[rows]])
        if cos[np.arange(m), worse].sum() >= cos[np.arange(m), sigma].sum() - 1e-9:
            continue  # the rotation happened not to lose value
        value = cos[np.arange(m), worse]
        for use_native in (True, False):
            found = _duals.exchange_duals(worse, value, n, er_all, ec_all, cos[er_all, ec_all], native=use_native)
            assert isinstance(found, _duals.NegativeCycle) and len(found.columns)
            better = _duals.apply_improvement(worse, found)
            assert better is not None and len(np.unique(better)) == m
            assert cos[np.arange(m), better].sum() > cos[np.arange(m), worse].sum() + 1e-12
            known_all = set(zip(er_all.tolist(), ec_all.tolist()))
            assert all((i, int(j)) in known_all for i, j in enumerate(better))  # exchanges along known entries
        return
    pytest.fail("no seed gave a worse assignment")


def _graph_optimum(m: int, n: int, er: np.ndarray, ec: np.ndarray, ev: np.ndarray) -> np.ndarray:
    """σ of the maximum-value assignment of every row on the sparse graph (scipy's sparse LAPJV)."""
    import scipy.sparse as sparse
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    rows, cols = min_weight_full_bipartite_matching(sparse.csr_matrix((3.0 - ev, (er, ec)), shape=(m, n)))
    sigma = np.empty(m, dtype=np.int64)
    sigma[rows] = cols
    return sigma


def _check_warm_optimum(found, x: np.ndarray, er: np.ndarray, ec: np.ndarray, want: np.ndarray) -> None:
    m = x.shape[0]
    assert found.status == "optimal"
    assert len(np.unique(found.row_col)) == m and (found.row_col >= 0).all()
    graph = set(zip(er.tolist(), ec.tolist()))
    assert all((i, int(j)) in graph for i, j in enumerate(found.row_col))  # only graph entries
    assert x[np.arange(m), found.row_col].sum() == pytest.approx(x[np.arange(m), want].sum(), abs=1e-9)
    slack = found.row[er] + found.col[ec] - x[er, ec]
    assert slack.min() >= -1e-9  # the duals it kept are feasible on every entry ...
    np.testing.assert_allclose(found.row + found.col[found.row_col], x[np.arange(m), found.row_col], atol=1e-9)


@pytest.mark.parametrize("shape", ["square", "wide"])
def test_warm_assignment_reaches_the_optimum_after_entries_join(shape):
    """Continued from the optimum of a smaller graph (σ and its exchange-graph duals), the C++ warm solve
    finds the optimum of the larger graph (scipy's sparse LAPJV on it from scratch), with duals that stay
    feasible and tight on σ. Wide graphs (m < n) route paths through the dummy rows of free columns."""
    from benchmark.metrics.matching import _exchange
    from benchmark.metrics.matching._duals import Duals, exchange_duals

    if not _exchange.available():
        pytest.skip("needs a C++ compiler")
    searched = cursor = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        m = int(rng.integers(5, 60))
        n = m if shape == "square" else m + int(rng.integers(1, 30))
        x = rng.standard_normal((m, n))
        known = rng.random((m, n)) < rng.uniform(0.1, 0.5)
        known[np.arange(m), rng.permutation(n)[:m]] = True
        er, ec = np.nonzero(known)
        before = _graph_optimum(m, n, er, ec, x[er, ec])
        duals = exchange_duals(before, x[np.arange(m), before], n, er, ec, x[er, ec])
        assert isinstance(duals, Duals)
        known |= rng.random((m, n)) < rng.uniform(0.01, 0.3)
        er, ec = np.nonzero(known)
        found = _exchange.warm_assignment(np.searchsorted(er, np.arange(m + 1)), ec, x[er, ec], before, duals.col,
                                          1e-12)
        _check_warm_optimum(found, x, er, ec, _graph_optimum(m, n, er, ec, x[er, ec]))
        searched += found.augmented
        cursor += found.cursor_steps
    assert searched > 0  # some rows needed a shortest-path search, not only bids
    if shape == "wide":
        assert cursor > 0  # and some paths went through a dummy row


def test_warm_assignment_starts_from_prices_alone():
    """With no assignment at all (square graphs) any column prices are a valid start: the result is the
    graph's optimum whatever the prices."""
    from benchmark.metrics.matching import _exchange

    if not _exchange.available():
        pytest.skip("needs a C++ compiler")
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        m = int(rng.integers(5, 50))
        x = rng.standard_normal((m, m))
        known = rng.random((m, m)) < 0.3
        known[np.arange(m), rng.permutation(m)] = True
        er, ec = np.nonzero(known)
        found = _exchange.warm_assignment(np.searchsorted(er, np.arange(m + 1)), ec, x[er, ec], np.full(m, -1),
                                          rng.uniform(0, 2, m), 1e-12)
        _check_warm_optimum(found, x, er, ec, _graph_optimum(m, m, er, ec, x[er, ec]))


def test_warm_assignment_refuses_unusable_starts_and_graphs_without_a_full_matching():
    from benchmark.metrics.matching import _exchange

    if not _exchange.available():
        pytest.skip("needs a C++ compiler")
    ptr, cols, vals = np.array([0, 2, 4]), np.array([0, 1, 0, 1]), np.array([1.0, 0.5, 0.2, 0.9])
    ok = _exchange.warm_assignment(ptr, cols, vals, np.array([0, 1]), np.zeros(2), 1e-12)
    assert ok.status == "optimal" and ok.row_col.tolist() == [0, 1]
    assert _exchange.warm_assignment(ptr, cols, vals, np.array([0, 0]), np.zeros(2), 1e-12).status == "bad-start"
    # three columns, two rows, and the free column priced above the others: no dummy can sit on it
    wide = _exchange.warm_assignment(ptr, cols, vals, np.array([0, 1]), np.array([0.0, 0.0, 0.5]), 1e-12)
    assert wide.status == "bad-start"
    # both rows know only column 0
    lonely = _exchange.warm_assignment(ptr, np.array([0, 0, 0, 0]), vals, np.array([-1, -1]), np.zeros(2), 1e-12)
    assert lonely.status == "no-full-matching"
    with pytest.raises(ValueError, match="outside"):
        _exchange.warm_assignment(ptr, np.array([0, 1, 0, 2]), vals, np.array([0, 1]), np.zeros(2), 1e-12)


def test_sparse_matcher_continues_its_solves_from_the_previous_optimum(monkeypatch):
    """When many promoted entries violate the duals, the matcher re-solves by continuing from its last
    optimum (C++ augmenting paths) instead of scipy from scratch: same certified optimum, fewer scipy
    solves. Without the C++ searches it falls back to scipy for every solve."""
    from benchmark.metrics.matching import _exchange

    if not _exchange.available():
        pytest.skip("needs a C++ compiler")
    pair = seed_like_pair(1500, 48, unshared=0.5, seed=3, cluster_size=8)
    ua, ub = (_cosine.unit_rows64(torch.from_numpy(x))[0] for x in (pair.a, pair.b))
    ref = dense_reference(pair.a, pair.b)
    warm = solve_certified(ua, ub, device=torch.device("cpu"), price_sample=96, repair_max=0, quiet=True)
    assert warm.certified and warm.stats.warm_solves >= 1 and warm.stats.warm_rows > 0
    assert warm.row_value.mean() == pytest.approx(ref, abs=1e-12)
    monkeypatch.setattr(_exchange, "warm_assignment", lambda *args, **kwargs: None)
    cold = solve_certified(ua, ub, device=torch.device("cpu"), price_sample=96, repair_max=0, quiet=True)
    assert cold.certified and cold.stats.warm_solves == 0 and cold.stats.solves > warm.stats.solves
    assert cold.row_value.mean() == pytest.approx(ref, abs=1e-12)


def test_without_a_compiler_the_numpy_search_gives_the_same_match(monkeypatch):
    """No C++ compiler: the dual search falls back to numpy, says so in the details, and the match is
    the same certified optimum."""
    from benchmark import native
    from benchmark.metrics.matching import _exchange

    a, b = seed_like(300, 24, np.random.default_rng(33))
    with_native = match_dictionaries(a, b, method="sparse")
    assert with_native.details["dual_search"] == ("c++" if native.compiler() else "numpy")
    monkeypatch.setattr(native, "compiler", lambda: None)
    monkeypatch.setattr(_exchange, "LIBRARY", native.LazyLibrary(_exchange.SOURCE, "exchange_paths", _exchange._SIGNATURES,
                                                                 what="test", fallback="numpy"))  # not yet built
    assert not _exchange.available()
    plain = match_dictionaries(a, b, method="sparse")
    assert plain.details["dual_search"] == "numpy" and plain.certified
    assert plain.value == pytest.approx(with_native.value, abs=1e-12) == pytest.approx(dense_reference(a, b), abs=1e-9)


def test_entry_cosines64_matches_numpy():
    rng = np.random.default_rng(15)
    a, b = unit(rng.standard_normal((300, 33))), unit(rng.standard_normal((410, 33)))
    keys = np.unique(rng.integers(0, 300 * 410, 5000))
    got = _cosine.entry_cosines64(torch.from_numpy(a), torch.from_numpy(b), keys, chunk=999)
    np.testing.assert_allclose(got, np.einsum("ij,ij->i", a[keys // 410], b[keys % 410]), atol=1e-14)


# --- kernels: self-checks, dispatch, error bounds --------------------------------------------


def test_fp32_error_bound_holds():
    rng = np.random.default_rng(11)
    for d in (3, 64, 768):
        a, b = unit(rng.standard_normal((64, d))), unit(rng.standard_normal((64, d)))
        a[0] = b[0]  # include an exact match (|cos| = 1)
        exact = a @ b.T
        approx = (torch.from_numpy(a).float() @ torch.from_numpy(b).float().T).double().numpy()
        assert np.abs(approx - exact).max() <= _kernels.fp32_cosine_error_bound(d)


def test_int8_matmul_is_exact_against_int64():
    """The int8 kernel must sum exactly in int32 (no int16 saturation), incl. extreme codes."""
    if not _verified("int8", 768):
        pytest.skip("this CPU's int8 matmul is not exact; the engine uses another kernel")
    rng = np.random.default_rng(13)
    for m, n, d in [(1, 1, 1), (3, 70, 5), (65, 33, 768), (40, 50, 4096)]:
        a = rng.integers(-127, 128, (m, d), dtype=np.int8)
        b = rng.integers(-127, 128, (n, d), dtype=np.int8)
        a[: m // 2] = 127
        b[: n // 3] = -127
        got = torch._int_mm(torch.from_numpy(a), torch.from_numpy(b).T).numpy()
        np.testing.assert_array_equal(got.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64).T)


def _dictionary_kinds(rng: np.random.Generator, n: int, d: int) -> dict[str, np.ndarray]:
    heavy = rng.standard_t(2, (n, d))
    sparse_rows = rng.standard_normal((n, d)) * (rng.random((n, d)) < 0.05)
    sparse_rows[:, 0] += 1e-3  # no empty rows
    spiky = rng.standard_normal((n, d))
    spiky[::7, rng.integers(d)] = 40.0  # an outlier dimension
    dup = np.repeat(rng.standard_normal((n // 4, d)), 4, axis=0)[:n]
    return {"gauss": rng.standard_normal((n, d)), "heavy": heavy, "sparse": sparse_rows, "spiky": spiky,
            "dup": dup, "tiny": 1e-30 * rng.standard_normal((n, d))}


@pytest.mark.parametrize("kind", ["int8", "bf16", "fp32"])
@pytest.mark.parametrize("d", [3, 64, 768, 2304])
def test_kernel_error_bound_holds(kind, d):
    """|scale · raw − exact fp64 cosine| ≤ row_err[i] for every entry, on many kinds of rows, and the
    bound is not vacuous (within a small factor of the errors that occur)."""
    if not _verified(kind, d):
        pytest.skip(f"{kind} kernel unavailable on this CPU")
    rng = np.random.default_rng(d)
    kinds = _dictionary_kinds(rng, 48, d)
    worst = 0.0
    for name_a, name_b in [("gauss", "gauss"), ("heavy", "gauss"), ("sparse", "heavy"), ("spiky", "gauss"),
                           ("gauss", "spiky"), ("dup", "dup"), ("tiny", "sparse")]:
        ua, ub = _units(kinds[name_a], kinds[name_b])
        ub = torch.cat([ub, ua[:5], -ua[5:8]])  # exact matches (|cos| = 1) included
        ops = _kernels.kernel_operands(ua, ub, torch.device("cpu"), kind)
        assert ops.kind == kind
        approx = ops.raw(slice(None)).double().numpy() * ops.scale
        exact = (ua @ ub.T).numpy()
        excess = np.abs(approx - exact) - ops.row_err[:, None]
        assert excess.max() <= 0, (name_a, name_b, excess.max())
        worst = max(worst, float((np.abs(approx - exact) / ops.row_err[:, None]).max()))
    if d >= 64 and kind != "fp32":  # rigorous, yet within a small factor of the errors that occur
        assert worst > 0.05


def test_bf16_rounding_error_bound_holds_and_is_tight():
    """The per-row bound on ‖x − bf16(x)‖, measured in fp32, against the same norm in fp64: never below it,
    and above it only by the fp32 measurement's slack. Rows hold values exact in bf16, components in fp32's
    subnormal range, and values that round differently from fp64 directly than through fp32."""
    rng = np.random.default_rng(21)
    d = 768
    kinds = _dictionary_kinds(rng, 40, d)
    rows = np.concatenate([kinds["gauss"], kinds["heavy"], kinds["spiky"], kinds["sparse"]])
    rows[3] = np.round(rows[3] * 8) / 8  # exact in bf16: no rounding error at all
    rows[4, ::3] = 1e-42 * rows[4, 0]  # subnormal once in fp32
    rows[5] = 1.0 + 2.0**-8 + 2.0**-30 * rng.choice([-1.0, 1.0], d)  # double rounding through fp32 differs
    unit, _ = _cosine.unit_rows64(torch.from_numpy(rows))
    codes, err = _kernels._round_bf16(unit, chunk=37)
    exact = torch.linalg.vector_norm(unit - codes.double(), dim=1).numpy()
    assert (err >= exact).all(), float((exact - err).max())
    assert (err <= exact * (1 + 1e-4) + 1e-7).all(), float((err - exact).max())


def test_int8_bound_is_useful_for_seed_like_dictionaries():
    rng = np.random.default_rng(14)
    a, b = seed_like(256, 768, rng)
    ua, ub = _units(a, b)
    for kind in ("int8", "bf16"):
        if _verified(kind, 768):
            ops = _kernels.kernel_operands(ua, ub, torch.device("cpu"), kind)
            assert ops.row_err.max() < (0.05 if kind == "int8" else 0.015)


@pytest.mark.parametrize("candidates", ["int8", "bf16", "fp32"])
@pytest.mark.parametrize("shape", [(1, 7, 4), (60, 90, 5), (90, 60, 5), (150, 150, 16), (300, 120, 12)])
def test_forced_kernels_match_scipy_dense(shape, candidates):
    if not _verified(candidates, shape[2]):
        pytest.skip(f"{candidates} kernel unavailable on this CPU")
    m, n, d = shape
    rng = np.random.default_rng(m * 7 + n)
    a, b = seed_like(max(m, n), d, rng)
    a, b = a[:m], b[:n]
    match = match_dictionaries(a, b, method="sparse", candidates=candidates)
    assert match.certified and match.kernel == candidates and match.details["candidates"] == candidates
    assert match.details["kernel_reason"] == "forced by argument"
    assert_valid_matching(match, a, b)
    assert match.value == pytest.approx(dense_reference(a, b), abs=1e-9)


@pytest.mark.parametrize("kind", ["int8", "bf16", "fp32"])
def test_env_var_forces_the_kernel_on_a_hard_pair(kind, monkeypatch):
    if not _verified(kind, 40):
        pytest.skip(f"{kind} kernel unavailable on this CPU")
    monkeypatch.setenv(_kernels.ENV_VAR, kind)
    pair = seed_like_pair(500, 40, unshared=0.8, seed=6, cluster_size=8)
    match = match_dictionaries(pair.a, pair.b, method="sparse", price_sample=96)
    assert match.kernel == kind and match.details["kernel_reason"] == f"forced by {_kernels.ENV_VAR}"
    assert match.certified
    assert match.value == pytest.approx(dense_reference(pair.a, pair.b), abs=1e-9)
    monkeypatch.setenv(_kernels.ENV_VAR, "int4")
    with pytest.raises(CanonBenchError, match=_kernels.ENV_VAR):
        match_dictionaries(pair.a, pair.b, method="sparse")


def test_auto_kernel_is_recorded_with_its_timings():
    pair = seed_like_pair(400, 24, unshared=0.5, seed=7)
    match = match_dictionaries(pair.a, pair.b, method="sparse")
    assert match.kernel in _kernels.KINDS and match.kernel == match.details["candidates"]
    assert match.kernel in match.kernel_timings and "fp32" in match.kernel_timings
    assert all(t > 0 for t in match.kernel_timings.values())
    assert match_dictionaries(pair.a, pair.b, method="dense").kernel == ""


def test_dispatch_follows_the_timings_never_a_fixed_choice(monkeypatch):
    """choose_kernel picks the fastest timed kind, prefers a tighter bound within 1.5x, and only
    times kinds the CPU flags say are native (all kinds where the flags cannot be read)."""
    timings = {}
    monkeypatch.setattr(_kernels, "probe_timings", lambda device, dim, *shape: dict(timings))
    cpu = torch.device("cpu")
    for fake, want in [({"int8": 1.0, "bf16": 2.0, "fp32": 4.0}, "int8"),
                       ({"int8": 3.0, "bf16": 1.0, "fp32": 4.0}, "bf16"),
                       ({"int8": 1.0, "bf16": 1.45, "fp32": 4.0}, "bf16"),  # tighter bound within 1.5x
                       ({"int8": 1.0, "bf16": 1.55, "fp32": 4.0}, "int8"),
                       ({"int8": 1.0, "bf16": 1.2, "fp32": 1.45}, "fp32"),
                       ({"fp32": 1.0}, "fp32")]:
        timings.clear()
        timings.update(fake)
        choice = _kernels.choose_kernel(cpu, 64)
        assert choice.kind == want and choice.timings == fake


def test_cpu_flags_and_which_kinds_are_timed(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    flags = _kernels.cpu_flags(str(info))
    assert "avx512_bf16" in flags and "avx512_vnni" not in flags
    assert _kernels.cpu_flags(str(tmp_path / "missing")) is None
    monkeypatch.setattr(_kernels, "cpu_flags", lambda path="/proc/cpuinfo": flags)
    _kernels.probe_timings.cache_clear()
    try:
        timed = _kernels.probe_timings("cpu", 32)
        assert "int8" not in timed and "fp32" in timed  # no VNNI/AMX flag: int8 is not timed
        assert ("bf16" in timed) == _verified("bf16", 32)
    finally:
        _kernels.probe_timings.cache_clear()


def test_kernel_probe_is_shaped_like_the_pass(monkeypatch):
    """The kinds are timed on a product of about the pass's block shape (int32 outputs lose at scale
    what they win in cache), capped at PROBE_ROWS × PROBE_COLS; with one kind to time there is
    nothing to choose and the small probe serves; a kind already twice as slow as the best after its
    warm-up call is not timed again, and on a large probe a kind whose product on an eighth of the rows
    shows it three times slower than the best is not timed on the whole probe."""
    shapes = []
    monkeypatch.setattr(_kernels, "probe_timings", lambda device, dim, *shape: shapes.append(shape) or {"fp32": 1.0})
    rng = np.random.default_rng(8)
    ua, ub = _units(rng.standard_normal((300, 8)), rng.standard_normal((_kernels.PROBE_COLS + 5, 8)))
    _kernels.kernel_operands(ua, ub, torch.device("cpu"))
    assert shapes == [(300, _kernels.PROBE_COLS)]
    monkeypatch.undo()

    calls = []
    real = _kernels.raw_matmul

    def timed(kind, a, b, out=None):
        calls.append((kind, a.shape[0], b.shape[0]))
        if kind == "fp32":
            time.sleep(0.05)  # far slower than any other kind's product here
        return real(kind, a, b, out)

    monkeypatch.setattr(_kernels, "raw_matmul", timed)
    everything = [k for k in _kernels.KINDS if _verified(k, 16)]
    large = (_kernels.PROBE_ROWS, _kernels.PROBE_COLS)
    for flags, kinds, (rows, cols) in [(frozenset({"avx2"}), ["fp32"], (300, 700)), (None, everything, (300, 700)),
                                       (None, everything, large)]:
        monkeypatch.setattr(_kernels, "cpu_flags", lambda path="/proc/cpuinfo", flags=flags: flags)
        _kernels.probe_timings.cache_clear()
        calls.clear()
        try:
            timed_kinds = _kernels.probe_timings("cpu", 16, rows, cols)
        finally:
            _kernels.probe_timings.cache_clear()
        assert sorted(timed_kinds) == sorted(kinds)
        probe_calls = [c for c in calls if c[1:] in {(rows, cols), (rows // 8, cols), (128, 512)}]
        if kinds == ["fp32"]:
            assert probe_calls == [("fp32", 128, 512)] * 3
            continue
        whole = [c[0] for c in probe_calls if c[1:] == (rows, cols)]
        assert set(whole) | {"fp32"} == set(kinds) | {"fp32"}  # every other kind runs the whole probe
        fp32_calls = [c for c in probe_calls if c[0] == "fp32"]
        if len(kinds) == 1:
            assert fp32_calls == [("fp32", rows, cols)] * 3
        elif (rows, cols) == large:  # an eighth of the rows, after its warm-up, told it
            assert fp32_calls == [("fp32", rows // 8, cols)] * 2
        else:  # its warm-up call told it
            assert fp32_calls == [("fp32", rows, cols)]


def test_probe_waits_out_slow_first_calls(monkeypatch):
    """A kind whose first calls of a shape run slow (bf16 at d = 2304 on an AMX machine: 0.099, 0.082,
    0.047, 0.043 s, steady 0.036 s) is timed until two calls agree, so its steady time decides; the
    first calls alone would hand the choice to a kind with a looser bound."""
    if not (_verified("int8", 16) and _verified("bf16", 16)):
        pytest.skip("needs the int8 and bf16 kernels")
    # bf16's warm-up at ~3x int8's time: slow, but within what a first call may cost (LOSER_FACTOR)
    schedule = {"int8": [0.03] * 10, "bf16": [0.10, 0.09, 0.05, 0.015, 0.015, 0.015, 0.015], "fp32": [0.5] * 10}
    calls = {kind: 0 for kind in schedule}

    def slow_start(kind, a, b, out=None):
        time.sleep(schedule[kind][min(calls[kind], len(schedule[kind]) - 1)])
        calls[kind] += 1
        return torch.zeros(a.shape[0], b.shape[0])

    monkeypatch.setattr(_kernels, "raw_matmul", slow_start)
    monkeypatch.setattr(_kernels, "cpu_flags", lambda path="/proc/cpuinfo": None)
    _kernels.probe_timings.cache_clear()
    try:
        timings = _kernels.probe_timings("cpu", 16, 300, 700)
    finally:
        _kernels.probe_timings.cache_clear()
    assert timings["bf16"] < timings["int8"], timings
    assert calls["fp32"] == 1  # far slower after its warm-up: not timed again
    monkeypatch.setattr(_kernels, "probe_timings", lambda device, dim, *shape: timings)
    assert _kernels.choose_kernel(torch.device("cpu"), 16, "auto", (300, 700)).kind == "bf16"


def test_self_checks_reject_kernels_that_break_their_bound(monkeypatch):
    """A bf16 kernel that accumulates in bf16, or an int8 kernel that saturates in int16, must fail
    its self-check (and so never be chosen or forced)."""
    real = _kernels.raw_matmul

    def bf16_accumulation(kind, a, b):
        if kind != "bf16":
            return real(kind, a, b)
        out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.bfloat16)
        for k in range(0, a.shape[1], 32):  # partial sums rounded to bf16 every 32 terms
            out = (out.float() + a[:, k : k + 32].float() @ b[:, k : k + 32].float().T).to(torch.bfloat16)
        return out

    monkeypatch.setattr(_kernels, "raw_matmul", bf16_accumulation)
    assert not _kernels._bf16_fp32_accumulation(torch.device("cpu"), 768)
    monkeypatch.setattr(_kernels, "raw_matmul", real)
    if _verified("bf16", 768):
        assert _kernels._bf16_fp32_accumulation(torch.device("cpu"), 768)

    def saturating(a, b):
        wide = a.to(torch.int32) @ b.to(torch.int32)
        return wide.clamp(-(2**15), 2**15 - 1)

    monkeypatch.setattr(torch, "_int_mm", saturating)
    assert not _kernels._int8_exact(torch.device("cpu"), 768)


def test_int8_near_ties_need_row_passes():
    """Clusters of near-identical rows: each row has many cosines within the int8 error bound of
    its best one, so the candidate pass's bound cannot prove the rows; row passes must."""
    if not _verified("int8", 64):
        pytest.skip("int8 candidates unavailable on this CPU")
    rng = np.random.default_rng(15)
    centres = rng.standard_normal((60, 64))
    a = np.repeat(centres, 8, axis=0) + 0.02 * rng.standard_normal((480, 64))
    b = np.repeat(centres[rng.permutation(60)], 8, axis=0) + 0.02 * rng.standard_normal((480, 64))
    ua, ub = _units(a, b)
    err = _kernels.kernel_operands(ua, ub, torch.device("cpu"), "int8").row_err
    cos = (ua @ ub.T).numpy()
    top = np.sort(cos, axis=1)[:, ::-1]
    assert np.mean(top[:, 0] - top[:, 4] < err) > 0.9  # the case is adversarial as intended
    for k in (1, 16):
        match = match_dictionaries(a, b, method="sparse", candidates="int8", k=k)
        assert match.certified and match.details["candidates"] == "int8"
        if k == 1:  # the cluster's other rows are not among the candidates: row passes must prove them
            assert match.details["row_pass_rows"] > 0
        assert match.value == pytest.approx(dense_reference(a, b), abs=1e-9)


def test_outlier_dimension_avoids_int8_and_forced_int8_stays_exact():
    """One huge coordinate makes the shared int8 scale coarse: "auto" must not use int8; forcing
    int8 gives a loose bound whose rows are all rechecked, and the answer is still exact."""
    rng = np.random.default_rng(16)
    a, b = seed_like(200, 256, rng)
    b[3] = 0.0
    b[3, 17] = 1.0  # a one-hot latent: max |entry| = 1
    ref = dense_reference(a, b)
    auto = match_dictionaries(a, b, method="sparse")
    assert auto.kernel != "int8"
    assert auto.value == pytest.approx(ref, abs=1e-9)
    if _verified("int8", 256):
        forced = match_dictionaries(a, b, method="sparse", candidates="int8")
        assert forced.details["candidate_error"] > 0.05 and forced.certified
        assert forced.value == pytest.approx(ref, abs=1e-9)
    with pytest.raises(CanonBenchError, match="candidates"):
        mcc(a, b, candidates="int4")


def _random_pass_operands(kind: str, seed: int):
    """(rng, kernel operands of 90 random unit rows against 130, dimension 20) for the pass tests;
    skips when this machine has no verified ``kind`` kernel."""
    if not _verified(kind, 20):
        pytest.skip(f"{kind} kernel unavailable")
    rng = np.random.default_rng(seed)
    ua, ub = _units(rng.standard_normal((90, 20)), rng.standard_normal((130, 20)))
    return rng, _kernels.kernel_operands(ua, ub, torch.device("cpu"), kind)


@pytest.mark.parametrize("kind", ["int8", "bf16", "fp32"])
def test_row_pass_reference_bound_holds(kind):
    """A row pass proves: every entry it neither returns nor knew has t ≤ last returned + slack
    (t = kernel value − shift), for any shift and any known set."""
    from benchmark.metrics.matching import _passes

    rng, ops = _random_pass_operands(kind, 17)
    shift = rng.uniform(-0.5, 1.5, 130)
    known = np.unique(rng.integers(0, 90 * 130, 900))
    ptr = np.searchsorted(known, np.arange(91) * 130)
    rows = np.sort(rng.choice(90, 40, replace=False))
    res = _passes.row_pass(ops, rows, shift, 7, 16, ptr, known % 130)
    kernel = ops.raw(slice(None)).double().numpy() * ops.scale
    t = kernel[rows] - res.shift[None, :]
    mask = np.ones_like(t, dtype=bool)
    for p, r in enumerate(rows):
        mask[p, known[(known // 130) == r] % 130] = False
        mask[p, res.index[p]] = False
    last = res.value[:, -1]
    assert (np.where(mask, t, -np.inf) <= last[:, None] + res.slack).all()
    np.testing.assert_allclose(res.value, np.take_along_axis(t, res.index, 1), atol=res.slack + 1e-12)
    if kind == "int8":
        assert (res.shift <= shift).all() and res.slack == 0.0  # rounded down onto the integer grid


@pytest.mark.parametrize("scan", ["c++", "torch"])
@pytest.mark.parametrize("kind", ["int8", "bf16", "fp32"])
def test_threshold_pass_reference_bound_holds(kind, scan, monkeypatch):
    """A threshold pass proves: every entry it neither returns nor knew has t ≤ ref + slack; rows
    with more entries above the threshold than the cap keep their cap largest."""
    from benchmark.metrics.matching import _passes

    _use_scan(scan, monkeypatch)
    rng, ops = _random_pass_operands(kind, 18)
    shift = rng.uniform(-0.5, 0.5, 130)
    known = np.unique(rng.integers(0, 90 * 130, 900))
    ptr = np.searchsorted(known, np.arange(91) * 130)
    rows = np.sort(rng.choice(90, 40, replace=False))
    threshold = rng.uniform(0.0, 0.9, 40)
    threshold[:5] = -2.0  # every entry above: these rows hit the cap
    res = _passes.threshold_pass(ops, rows, shift, threshold, 9, 16, ptr, known % 130)
    kernel = ops.raw(slice(None)).double().numpy() * ops.scale
    t = kernel[rows] - res.shift[None, :]
    mask = np.ones_like(t, dtype=bool)
    for p, r in enumerate(rows):
        mask[p, known[(known // 130) == r] % 130] = False
    np.testing.assert_allclose(res.t, t[res.row, res.col], atol=res.slack + 1e-12)
    assert not (~mask[res.row, res.col]).any()  # known entries are never returned
    mask[res.row, res.col] = False
    assert (np.where(mask, t, -np.inf) <= res.ref[:, None] + res.slack).all()
    assert np.bincount(res.row, minlength=40).max() <= 9
    assert (np.bincount(res.row, minlength=40)[:5] == 9).all()


@pytest.mark.parametrize("kind", ["int8", "bf16", "fp32"])
def test_threshold_pass_block_scan_equals_the_torch_ops(kind, monkeypatch):
    """The C++ threshold scan and the torch ops return the same entries, t values and row bounds, known
    entries left out, across uneven blocks; rows over the cap keep the same values (ties at the cap
    may keep other columns)."""
    from benchmark.metrics.matching import _passes

    _use_scan("c++", monkeypatch)
    rng = np.random.default_rng(43)
    ua, ub = _units(rng.standard_normal((300, 24)), rng.standard_normal((517, 24)))
    if not _verified(kind, 24):
        pytest.skip(f"{kind} kernel unavailable")
    ops = _kernels.kernel_operands(ua, ub, torch.device("cpu"), kind)
    shift = rng.uniform(-0.3, 0.3, 517)
    known = np.unique(rng.integers(0, 300 * 517, 20000))
    ptr = np.searchsorted(known, np.arange(301) * 517)
    rows = np.sort(rng.choice(300, 200, replace=False))
    threshold = rng.uniform(-0.2, 0.6, 200)
    threshold[::7] = -3.0  # every entry above: over the cap

    def run():
        res = _passes.threshold_pass(ops, rows, shift, threshold, 12, 64, ptr, known % 517)
        order = np.lexsort((res.col, res.row))
        return res, res.row[order], res.col[order], res.t[order]

    got, g_row, g_col, g_t = run()
    _use_scan("torch", monkeypatch)
    want, w_row, w_col, w_t = run()
    np.testing.assert_array_equal(got.ref, want.ref)
    assert got.slack == want.slack
    over = np.zeros(200, dtype=bool)
    over[np.flatnonzero(np.bincount(w_row, minlength=200) == 12)] = True
    assert over[::7].all()
    plain = ~over[w_row]
    np.testing.assert_array_equal(g_row, w_row)
    np.testing.assert_array_equal(g_col[plain], w_col[plain])
    np.testing.assert_array_equal(g_t[plain], w_t[plain])
    for p in np.flatnonzero(over):  # same values, largest first after sorting
        np.testing.assert_array_equal(np.sort(g_t[g_row == p]), np.sort(w_t[w_row == p]))
    known_keys = set((rows[g_row] * 517 + g_col).tolist()) & set(known.tolist())
    assert not known_keys


def _use_scan(scan: str, monkeypatch) -> None:
    """Run the candidate pass's block work through the C++ scan ("c++"; skips without a compiler) or
    torch ("torch")."""
    from benchmark.metrics.matching import _blockscan

    if scan == "torch":
        monkeypatch.setattr(_blockscan, "available", lambda: False)
    elif native.compiler() is None:
        pytest.skip("needs a C++ compiler")
    else:
        assert _blockscan.available(), "a C++ compiler is here but the block scan did not build"


@pytest.mark.parametrize("kind", ["int8", "bf16", "fp32"])
def test_candidate_pass_block_scan_equals_the_torch_ops(kind, monkeypatch):
    """The C++ block scan (fp32 or bf16 blocks, int32 for int8) and the torch ops give the candidate pass the
    same columns, values, raw top two and per-column rankings across uneven blocks. Among tied values
    torch's top-k order is unspecified: a column's ranking ties at 0 for every row whose best column it
    is, and bf16 and int8 values tie often, so there the rows are checked to hold the ranked values."""
    from benchmark.metrics.matching import _blockscan, _passes

    if native.compiler() is None or not _verified(kind, 32):
        pytest.skip("needs a C++ compiler and the kernel")
    assert _blockscan.available(), "a C++ compiler is here but the block scan did not build"
    rng = np.random.default_rng(41)
    ua, ub = _units(rng.standard_normal((300, 32)), rng.standard_normal((517, 32)))
    ops = _kernels.kernel_operands(ua, ub, torch.device("cpu"), kind)
    shift = rng.uniform(-0.3, 0.8, 517)
    got = _passes.row_pass(ops, None, shift, 9, 64, raw_top2=True, col_top=6)
    monkeypatch.setattr(_blockscan, "available", lambda: False)
    want = _passes.row_pass(ops, None, shift, 9, 64, raw_top2=True, col_top=6)
    for field in ("index", "value", "raw_col", "raw_val", "col_index", "col_value"):
        if field == "col_index" or (kind != "fp32" and field == "index"):
            continue  # ties (every row whose best column is j puts a 0 there) come in any order: checked below
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    assert got.slack == want.slack
    if kind == "int8":  # exact in fp64: integer sums and shifts on the grid of one scale
        t = ops.raw(slice(None)).double() * ops.scale - torch.from_numpy(got.shift)
    else:
        t = ops.raw(slice(None)).float() - torch.from_numpy(got.shift.astype(np.float32))
    relative = (t - t.max(dim=1, keepdim=True).values).double().numpy()
    np.testing.assert_array_equal(relative[got.col_index, np.arange(517)[:, None]], got.col_value)
    assert all(len(set(rows)) == 6 for rows in got.col_index.tolist())
    t_rows = t.double().numpy()
    np.testing.assert_array_equal(np.take_along_axis(t_rows, got.index, 1), got.value)
    for p, row in enumerate(t_rows):  # every column left out of a row's list is at or below its last value
        assert (np.delete(row, got.index[p]) <= got.value[p, -1]).all()


@pytest.mark.parametrize("kind", ["int8", "bf16", "fp32"])
def test_products_into_the_reused_buffer_equal_fresh_ones(kind):
    """Blocks written into the shared output buffer hold the same values as fresh products, for blocks
    of every shape in turn (the buffer grows; a transposed view shares it)."""
    if not _verified(kind, 40):
        pytest.skip(f"{kind} kernel unavailable here")
    rng = np.random.default_rng(12)
    ua, ub = _units(rng.standard_normal((70, 40)), rng.standard_normal((90, 40)))
    ops = _kernels.kernel_operands(ua, ub, torch.device("cpu"), kind)
    flipped = ops.transposed()
    for rows in (slice(0, 5), slice(3, 70), torch.tensor([7, 2, 60])):
        want = ops.raw(rows).clone()
        assert torch.equal(ops.raw(rows, reuse=True), want)
        cols = torch.tensor([1, 50, 89, 4])
        assert torch.equal(flipped.raw(cols, reuse=True), ops.raw_t(cols))
        assert torch.equal(ops.raw_t(cols, reuse=True), ops.raw_t(cols))
    assert ops._scratch is flipped._scratch and ops._scratch[0] is not None


@pytest.mark.parametrize("scan", ["c++", "torch"])
@pytest.mark.parametrize("kind", ["int8", "bf16", "fp32"])
def test_price_passes_argmax_and_column_maxima(kind, scan, monkeypatch):
    """The price sample's passes against the dense kernel matrix: each row's and each column's first
    largest kernel value, and max over listed rows of (kernel − shift_i) per column (int8 shifts on the
    integer grid, rounded down), across uneven blocks, by the C++ scan and by torch."""
    from benchmark.metrics.matching import _passes

    if not _verified(kind, 24):
        pytest.skip(f"{kind} kernel unavailable here")
    _use_scan(scan, monkeypatch)
    rng = np.random.default_rng(8)
    ua, ub = _units(rng.standard_normal((130, 24)), rng.standard_normal((301, 24)))
    ops = _kernels.kernel_operands(ua, ub, torch.device("cpu"), kind)
    raw = ops.raw(slice(None)).to(torch.float64).numpy()  # exact: int32 sums, bf16 or fp32 values
    rows = rng.choice(130, 57, replace=False)
    cols = rng.choice(301, 90, replace=False)
    np.testing.assert_array_equal(_passes.argmax_rows(ops, rows, 16), raw[rows].argmax(axis=1))
    np.testing.assert_array_equal(_passes.argmax_cols(ops, cols, 16), raw[:, cols].argmax(axis=0))
    shift = rng.uniform(-0.2, 0.6, len(rows))
    got = _passes.max_over_rows(ops, rows, shift, 40)
    if kind == "int8":
        want = ((raw[rows] - np.floor(shift / ops.scale)[:, None]) * ops.scale).max(axis=0)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    else:
        t = raw[rows].astype(np.float32) - shift.astype(np.float32)[:, None]  # fp32 subtraction, as the pass
        np.testing.assert_array_equal(got, t.max(axis=0).astype(np.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int32])
@pytest.mark.parametrize("cap", [1, 3, 40])
def test_block_scan_top_and_raw_pair_on_wide_rows_with_ties(dtype, cap, monkeypatch):
    """Rows wider than the scan's chunks (n = 3001: chunks of uneven length) whose values repeat a lot,
    against a plain sort: the top ``cap`` of t = value − shift by (larger value, lower column), the two
    largest raw values (a repeated maximum counts twice) and the first column holding the largest."""
    from benchmark.metrics.matching import _blockscan

    _use_scan("c++", monkeypatch)
    rng = np.random.default_rng(5)
    r, n = 37, 3001
    levels = rng.integers(-6, 7, size=(r, n))  # 13 values: every row is full of ties
    levels[3] = 0  # a constant row
    levels[4, [17, 2900]] = 9  # the maximum twice, in different chunks
    levels[5, [2000, 2001]] = 9  # the maximum twice, side by side
    levels[6, 2999] = 9  # the maximum once, in the last columns
    for row, gap in zip(range(7, 12), (1, 256, 320, 1280, 2560)):  # twice, at distances that chunks may share
        levels[row, [50, 50 + gap]] = 9
    shift_levels = rng.integers(0, 3, size=n)
    if dtype == torch.int32:
        block = torch.from_numpy(levels.astype(np.int32))
        shift = torch.from_numpy(shift_levels.astype(np.int32))
    else:
        block = torch.from_numpy((levels / 8).astype(np.float32)).to(dtype)
        shift = torch.from_numpy((shift_levels / 4).astype(np.float32))
    got = _blockscan.scan_block(block, shift, cap, True, None, 0)
    x = block.to(torch.float64).numpy()
    t = x - shift.double().numpy()
    for i in range(r):
        order = np.lexsort((np.arange(n), -t[i]))[:cap]  # larger t first, then the lower column
        np.testing.assert_array_equal(got.top_col[i], order, err_msg=f"row {i}")
        np.testing.assert_array_equal(got.top_value[i].astype(np.float64), t[i, order], err_msg=f"row {i}")
        desc = np.sort(x[i])[::-1]
        np.testing.assert_array_equal(got.raw_value[i].astype(np.float64), desc[:2], err_msg=f"row {i}")
        assert got.raw_col[i] == int(np.argmax(x[i])), f"row {i}"
    # the maximum twice at every distance, so that some pair shares a chunk whatever the chunks are
    twice = np.zeros((n - 51, n))
    twice[:, 50] = 1.0
    twice[np.arange(n - 51), 51 + np.arange(n - 51)] = 1.0
    twice[:, 7] = 0.5
    block = torch.from_numpy(twice.astype(np.int32) * 2 if dtype == torch.int32 else twice.astype(np.float32)).to(dtype)
    zero = torch.zeros(n, dtype=torch.int32 if dtype == torch.int32 else torch.float32)
    got = _blockscan.scan_block(block, zero, cap, True, None, 0)
    assert (got.raw_value[:, 0] == got.raw_value[:, 1]).all() and (got.raw_col == 50).all()
@pytest.mark.parametrize("scan", ["c++", "torch"])
@pytest.mark.parametrize("kind", ["int8", "bf16", "fp32"])
def test_candidate_pass_raw_top_two_bound_every_other_column(kind, scan, monkeypatch):
    """The candidate pass's raw (unshifted) best column and two largest kernel values, against the
    dense kernel matrix: cos_ij ≤ second + row_err_i must hold for every column but the best, which
    is what the certificate's raw bound relies on."""
    from benchmark.metrics.matching import _passes

    if not _verified(kind, 20):
        pytest.skip(f"{kind} kernel unavailable")
    _use_scan(scan, monkeypatch)
    rng = np.random.default_rng(19)
    a = rng.standard_normal((70, 20))
    b = np.concatenate([a[:30] + 0.05 * rng.standard_normal((30, 20)), rng.standard_normal((60, 20))])
    ua, ub = _units(a, b)
    ops = _kernels.kernel_operands(ua, ub, torch.device("cpu"), kind)
    shift = rng.uniform(-0.3, 0.8, 90)  # prices must not change the raw values
    res = _passes.row_pass(ops, None, shift, 5, 16, raw_top2=True)
    kernel = ops.raw(slice(None)).double().numpy() * ops.scale
    ordered = np.sort(kernel, axis=1)[:, ::-1]
    # fp32/bf16 blocks may round differently from the one full matmul here (other shapes, other
    # summation order): within 1e-6, far inside the bound; int8 sums are exact
    tol = 0.0 if kind == "int8" else 1e-6
    np.testing.assert_allclose(kernel[np.arange(70), res.raw_col], ordered[:, 0], rtol=0, atol=tol)
    np.testing.assert_allclose(res.raw_val, ordered[:, :2], rtol=0, atol=tol)
    cos = (ua @ ub.T).numpy()
    others = cos.copy()
    others[np.arange(70), res.raw_col] = -np.inf
    assert (others.max(axis=1) <= res.raw_val[:, 1] + ops.row_err).all()


@pytest.mark.parametrize("kind", ["int8", "bf16", "fp32"])
@pytest.mark.parametrize("block", [7, 16, 200])
@pytest.mark.parametrize("scan", ["c++", "torch floor 512", "torch floor 4"])
def test_candidate_pass_ranks_each_columns_rows_like_a_column_pass(kind, block, scan, monkeypatch):
    """The candidate pass's per-column ranking (col_top) against the dense kernel matrix: each
    column's rows by kernel(i, j) − best_i, best_i = the row's largest kernel(i, ·) − shift, across
    blocks of rows (7 and 16 split the rows unevenly; 200 is one block). The C++ block scan serves every
    kernel; on torch, a floor of 4 rows sends every block through the floor-and-rank path that large
    blocks take, and 512 is the plain top-k here."""
    from benchmark.metrics.matching import _passes

    _use_scan(scan.split()[0], monkeypatch)
    if scan.startswith("torch"):
        monkeypatch.setattr(_passes, "_COLUMN_FLOOR_ROWS", int(scan.split()[-1]))
    rng, ops = _random_pass_operands(kind, 23)
    shift = rng.uniform(-0.3, 0.8, 130)
    res = _passes.row_pass(ops, None, shift, 5, block, raw_top2=True, col_top=6)
    t = ops.raw(slice(None)).double().numpy() * ops.scale - res.shift[None, :]
    relative = t - t.max(axis=1, keepdims=True)  # [rows, cols]
    want = -np.sort(-relative, axis=0)[:6].T  # each column's six largest, best first
    tol = 0.0 if kind == "int8" else 1e-6
    np.testing.assert_allclose(res.col_value, want, rtol=0, atol=tol)
    # the rows returned hold those values (ties may swap rows, never values)
    np.testing.assert_allclose(relative[res.col_index, np.arange(130)[:, None]], want, rtol=0, atol=tol)
    assert all(len(set(rows)) == 6 for rows in res.col_index.tolist())
    with pytest.raises(ValueError, match="known"):
        _passes.row_pass(ops, None, shift, 5, block, known_ptr=np.zeros(91, dtype=np.int64),
                         known_idx=np.empty(0, dtype=np.int64), col_top=6)


@pytest.mark.parametrize("candidates", ["int8", "bf16", "fp32"])
@pytest.mark.parametrize("unshared", [0.3, 0.5, 0.7, 0.9])
def test_certificate_on_low_shared_pairs_is_dense_feasible(unshared, candidates):
    """On seed-like pairs with most rows unshared, each forced kernel: the returned duals are
    feasible for EVERY entry of the dense fp64 problem (not only the known ones) and tight, and the
    value equals scipy's dense optimum. A certificate that accepts an unproven row fails here."""
    if not _verified(candidates, 48):
        pytest.skip(f"{candidates} kernel unavailable here")
    pair = seed_like_pair(600, 48, unshared=unshared, seed=11, cluster_size=8)
    ua, ub = _units(pair.a.astype(np.float64), pair.b.astype(np.float64))
    raw = solve_certified(ua, ub, device=torch.device("cpu"), candidates=candidates, price_sample=96, k=4)
    assert raw.certified and raw.stats.candidates == candidates
    cos = (ua @ ub.T).numpy()
    u, v = raw.row_dual, raw.col_dual
    assert (u[:, None] + v[None, :] - cos).min() >= -1e-9
    total = cos[np.arange(len(u)), raw.row_col].sum()
    assert u.sum() + v.sum() == pytest.approx(total, abs=1e-9)
    assert total / len(u) == pytest.approx(dense_reference(pair.a, pair.b), abs=1e-9)


def test_outlier_columns_with_a_tiny_column_cap_stay_exact(monkeypatch):
    """The certificate's outlier columns are checked by a threshold column pass; with a cap of 2 rows
    per column most of them are NOT cleared by it and must keep counting in the rows' bounds."""
    import functools

    from benchmark.metrics.matching import _engine

    pair = seed_like_pair(500, 32, unshared=0.7, seed=12, cluster_size=8)
    ua, ub = _units(pair.a.astype(np.float64), pair.b.astype(np.float64))
    calls = []
    real = _engine._certify_round

    def tiny_cap(*args, **kwargs):
        calls.append(1)
        return real(*args, **{**kwargs, "col_cap": 2})

    monkeypatch.setattr(_engine, "_certify_round", functools.wraps(real)(tiny_cap))
    raw = solve_certified(ua, ub, device=torch.device("cpu"), candidates="fp32", price_sample=0, k=2)
    assert calls and raw.certified and raw.stats.column_pass_cols > 0
    cos = (ua @ ub.T).numpy()
    assert (raw.row_dual[:, None] + raw.col_dual[None, :] - cos).min() >= -1e-9
    assert cos[np.arange(500), raw.row_col].mean() == pytest.approx(dense_reference(pair.a, pair.b), abs=1e-9)


@pytest.mark.parametrize("row_cap", [1, 3])
def test_row_passes_that_hit_their_cap_are_repeated(row_cap):
    """A row pass keeps at most row_cap entries; a row with more entries near its duals gets a weak
    reference bound and must be passed again (never declared proven) until the bound holds."""
    pair = seed_like_pair(400, 24, unshared=0.8, seed=13, cluster_size=8)
    ua, ub = _units(pair.a.astype(np.float64), pair.b.astype(np.float64))
    raw = solve_certified(ua, ub, device=torch.device("cpu"), candidates="fp32", price_sample=0, k=1,
                          row_cap=row_cap, max_rounds=400)
    assert raw.certified and raw.stats.row_pass_rows > 0
    cos = (ua @ ub.T).numpy()
    assert (raw.row_dual[:, None] + raw.col_dual[None, :] - cos).min() >= -1e-9
    assert cos[np.arange(400), raw.row_col].mean() == pytest.approx(dense_reference(pair.a, pair.b), abs=1e-9)


@pytest.mark.parametrize("row_cap", [2])
def test_loose_int8_bound_with_capped_row_passes_stays_exact(row_cap):
    """One-hot latent → coarse int8 scale → row error bound above the certificate's ``near``: a
    capped row pass can then leave a row whose new bound does not hold although none of its
    returned entries is promoted. Such a row must be passed again, never counted as proven."""
    if not _verified("int8", 64):
        pytest.skip("int8 candidates unavailable on this CPU")
    rng = np.random.default_rng(21)
    centres = rng.standard_normal((30, 64))
    a = np.repeat(centres, 8, axis=0) + 0.05 * rng.standard_normal((240, 64))
    b = np.repeat(centres[rng.permutation(30)], 8, axis=0) + 0.05 * rng.standard_normal((240, 64))
    b[3] = 0.0
    b[3, 17] = 1.0  # a one-hot latent: max |entry| = 1, so the shared int8 scale is coarse
    ua, ub = _units(a, b)
    raw = solve_certified(ua, ub, device=torch.device("cpu"), candidates="int8", price_sample=0, k=1,
                          row_cap=row_cap, max_rounds=400)
    assert raw.stats.candidate_error > 0.02 and raw.certified
    cos = (ua @ ub.T).numpy()
    assert (raw.row_dual[:, None] + raw.col_dual[None, :] - cos).min() >= -1e-9
    assert cos[np.arange(240), raw.row_col].mean() == pytest.approx(dense_reference(a, b), abs=1e-9)


def test_sorted_set_helpers_agree_with_numpy():
    """_sets replaces np.unique / setdiff1d (hash-based and slow on millions of keys in numpy 2.x)."""
    from benchmark.metrics.matching import _sets

    rng = np.random.default_rng(0)
    for size in (0, 1, 2, 50, 5000):
        x = rng.integers(0, max(2, size // 3), size) * 1_000_003
        y = rng.integers(0, max(2, size // 3), size // 2) * 1_000_003
        np.testing.assert_array_equal(_sets.unique(x), np.unique(x))
        vals, first = _sets.unique_first(x)
        ref_vals, ref_first = np.unique(x, return_index=True)
        np.testing.assert_array_equal(vals, ref_vals)
        np.testing.assert_array_equal(first, ref_first)
        np.testing.assert_array_equal(_sets.setdiff(x, y), np.setdiff1d(x, y))
        np.testing.assert_array_equal(_sets.setdiff(x, []), np.setdiff1d(x, []))


@pytest.mark.parametrize("col_cap", [2, 1024])
def test_fp32_outlier_columns_are_cleared_and_stay_exact(monkeypatch, col_cap):
    """fp32 threshold passes add a rounding slack to their threshold, so a column pass AT v_j could
    never clear a column (every outlier column then spoiled every row's minimum: 12,100 row passes
    at 70 % unshared, 16K²). The engine lowers the threshold by the slack: columns clear, and a
    cleared column must really hold (dense-feasible duals, scipy's value) — with the normal cap and
    with a cap of 2 rows, where most columns are not cleared and must keep counting."""
    import functools

    from benchmark.metrics.matching import _engine

    pair = seed_like_pair(500, 32, unshared=0.7, seed=12, cluster_size=8)
    ua, ub = _units(pair.a.astype(np.float64), pair.b.astype(np.float64))
    real = _engine._certify_round
    monkeypatch.setattr(_engine, "_certify_round",
                        functools.wraps(real)(lambda *a, **kw: real(*a, **{**kw, "col_cap": col_cap})))
    raw = solve_certified(ua, ub, device=torch.device("cpu"), candidates="fp32", price_sample=0, k=2)
    assert raw.certified and raw.stats.outlier_cols_cleared > 0
    cos = (ua @ ub.T).numpy()
    assert (raw.row_dual[:, None] + raw.col_dual[None, :] - cos).min() >= -1e-9
    assert cos[np.arange(500), raw.row_col].mean() == pytest.approx(dense_reference(pair.a, pair.b), abs=1e-9)


@pytest.mark.parametrize("candidates", ["int8", "fp32"])
@pytest.mark.parametrize("cap", [1, 3, 1024])
def test_cleared_columns_hold_on_the_dense_problem(candidates, cap):
    """check_columns' claim, checked against the full fp64 cosine matrix: for each column it calls
    cleared, every entry that is neither known nor returned satisfies cos ≤ u_i + v_j. Duals are
    deliberately poor (u from a few candidates, v with a spread), so many columns hold several
    violating rows, more than a small cap; some columns must clear (fp32 thresholds once never
    did)."""
    from benchmark.metrics.matching import _engine
    from benchmark.metrics.matching._kernels import kernel_operands

    if not _verified(candidates, 32):
        pytest.skip(f"{candidates} kernel unavailable here")
    pair = seed_like_pair(300, 32, unshared=0.5, seed=31, cluster_size=8)
    ua, ub = _units(pair.a.astype(np.float64), pair.b.astype(np.float64))
    cos = (ua @ ub.T).numpy()
    rng = np.random.default_rng(3)
    ops = kernel_operands(ua, ub, torch.device("cpu"), candidates)
    known = _engine._Known(300, 300)
    keys = np.arange(300, dtype=np.int64) * 300 + rng.integers(0, 300, 300)
    known.add(keys, xval=cos.ravel()[keys], graph=True)
    v = np.abs(rng.normal(0.0, 0.15, 300))
    u = np.sort(cos, axis=1)[:, -2] - 0.1 - np.median(v)  # below most rows' best: many violations
    cols = np.arange(300)
    colp, cleared = _engine.check_columns(known, ops, u, v, cols, cap, 64)
    assert cleared.any()
    excluded = np.zeros((300, 300), dtype=bool)  # [row, col]: known or returned
    excluded[known.keys // known.n, known.cols] = True
    excluded[colp.col, cols[colp.row]] = True
    slack = (u[:, None] + v[None, :] - cos)[:, cols[cleared]]
    assert slack[~excluded[:, cols[cleared]]].min() >= -1e-12
    assert (~cleared).any() or cap == 1024  # a small cap leaves columns with more violators uncleared


def test_known_column_lists_of_chosen_columns_list_their_known_rows():
    """``_Known.csc(cols)`` fills the chosen columns' row lists with their known rows, ascending (the
    threshold scan walks them in order), against a listing from the keys, and leaves every other
    column empty."""
    from benchmark.metrics.matching import _engine

    rng = np.random.default_rng(5)
    known = _engine._Known(300, 500)
    keys = rng.choice(300 * 500, 20000, replace=False)
    known.add(keys)
    chosen = rng.choice(500, 40, replace=False)
    ptr, rows = known.csc(chosen)
    for col in range(500):
        want = np.sort(keys[keys % 500 == col] // 500) if col in set(chosen.tolist()) else np.empty(0)
        np.testing.assert_array_equal(rows[ptr[col]:ptr[col + 1]], want)
        assert (np.diff(rows[ptr[col]:ptr[col + 1]]) > 0).all()
    assert ptr[-1] == len(rows) > 0


def test_positions_equal_searchsorted_for_keys_in_any_order():
    from benchmark.metrics.matching import _sets

    rng = np.random.default_rng(6)
    haystack = np.sort(rng.choice(10**9, 50000, replace=False))
    for keys in (rng.choice(haystack, 3000), np.sort(rng.integers(0, 10**9, 3000)), rng.integers(0, 10**9, 3000),
                 haystack[:1], np.empty(0, dtype=np.int64)):
        np.testing.assert_array_equal(_sets.positions(haystack, keys), np.searchsorted(haystack, keys))


@pytest.mark.parametrize("cap", [1, 3, 50])
def test_worst_per_row_keeps_each_rows_largest_excess(cap):
    """The entries put into the graph per row: the ``cap`` with the largest exact c − u − v, against
    a per-row sort; rows with no more than ``cap`` keys keep them all."""
    from benchmark.metrics.matching import _engine

    rng = np.random.default_rng(7)
    m, n = 40, 60
    known = _engine._Known(m, n)
    known.add(np.arange(m * n), xval=rng.uniform(-1, 1, m * n))
    u, v = rng.uniform(-0.5, 0.5, m), rng.uniform(0, 0.5, n)
    counts = rng.integers(0, n + 1, m)
    counts[:3] = [cap, cap + 1, cap + 2]  # at, just over and over the cap
    asked = np.concatenate([row * n + rng.choice(n, count, replace=False) for row, count in enumerate(counts)])
    got = _engine._worst_per_row(np.concatenate([asked, asked[:20]]), known, u, v, cap)  # repeats count once
    want = []
    for row in range(m):
        mine = np.sort(asked[asked // n == row])
        excess = known.xval[np.searchsorted(known.keys, mine)] - u[row] - v[mine % n]
        want.extend(mine[np.argsort(-excess, kind="stable")[:cap]])
    np.testing.assert_array_equal(got, np.sort(want))


@pytest.mark.parametrize("bound", [7, 2**16, 2**16 + 1, 2**40])
def test_stable_order_sorts_like_a_stable_argsort(bound):
    from benchmark.metrics.matching import _sets

    x = np.random.default_rng(31).integers(0, bound, 5000)
    x[:50] = bound - 1  # the largest value (uint16's last code at 2¹⁶) and many ties
    np.testing.assert_array_equal(_sets.stable_order(x, bound), np.argsort(x, kind="stable"))


def test_top_per_group_keeps_each_groups_largest_scores_in_order():
    """Against a plain loop over the groups: the cap largest scores of each group, largest first, ties
    in input order (the certificate's worst entries per row and the pass's best rows per column)."""
    from benchmark.metrics.matching import _sets

    rng = np.random.default_rng(37)
    groups = rng.integers(0, 40, 3000)
    scores = rng.integers(0, 25, 3000).astype(np.float64)  # many ties
    picked, rank = _sets.top_per_group(torch.from_numpy(groups), torch.from_numpy(scores), 4)
    want_picked, want_rank = [], []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        best = members[np.argsort(-scores[members], kind="stable")][:4]
        want_picked.extend(best)
        want_rank.extend(range(len(best)))
    np.testing.assert_array_equal(picked.numpy(), want_picked)
    np.testing.assert_array_equal(rank.numpy(), want_rank)
