"""The exact matcher against scipy's dense assignment, closed forms and its own certificate."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from benchmark.errors import CanonBenchError
from benchmark.metrics.matching import (
    Matching,
    chance_mcc,
    match_dictionaries,
    mcc,
    mean_max_cosine,
    pw_mcc,
)
from benchmark.metrics.matching import _cosine
from benchmark.metrics.matching._engine import solve_certified


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


@pytest.mark.parametrize("candidates", ["auto", "fp32"])
def test_certificate_duals_are_feasible_for_the_dense_problem(candidates):
    """The returned duals must prove optimality on every entry of the dense problem."""
    rng = np.random.default_rng(7)
    for trial in range(12):
        m = int(rng.integers(2, 120))
        n = int(rng.integers(m, 200))
        a, b = rng.standard_normal((m, 6)), rng.standard_normal((n, 6))
        if trial % 2:
            b[: m // 2] = a[: m // 2] + 0.1 * rng.standard_normal((m // 2, 6))
        ua, _ = _cosine.unit_rows64(torch.from_numpy(a))
        ub, _ = _cosine.unit_rows64(torch.from_numpy(b))
        raw = solve_certified(ua, ub, device=torch.device("cpu"), k=1, max_rounds=200, block_rows=None,
                              near_margin=0.02, add_per_row=16, fix_margin=[0.0, 0.2][trial % 2],
                              progress=False, candidates=candidates)
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
    match = match_dictionaries(a, b, method="sparse", k=1, fix_margin=0.0)
    assert match.certified
    assert match.details["known_entries"] > 400  # grew beyond the initial top-1 entries
    assert match.details["rounds"] > 1 or match.details["released_pairs"] > 0
    assert match.value == pytest.approx(dense_reference(a, b), abs=1e-9)


def test_uncertified_when_rounds_run_out():
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((400, 8)), rng.standard_normal((400, 8))
    match = match_dictionaries(a, b, method="sparse", k=1, fix_margin=0.0, max_rounds=1)
    assert not match.certified and match.method == "sparse-uncertified"


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


def test_fp32_error_bound_holds():
    rng = np.random.default_rng(11)
    for d in (3, 64, 768):
        a, b = unit(rng.standard_normal((64, d))), unit(rng.standard_normal((64, d)))
        a[0] = b[0]  # include an exact match (|cos| = 1)
        exact = a @ b.T
        approx = (torch.from_numpy(a).float() @ torch.from_numpy(b).float().T).double().numpy()
        assert np.abs(approx - exact).max() <= _cosine.fp32_cosine_error_bound(d)


def test_large_residual_uses_sparse_guess_and_stays_exact(monkeypatch):
    """A residual block above the dense threshold is solved on its top-k entries first; a guess that
    is wrong (forced here: a random assignment) must be caught by the exchange-graph duals and
    repaired (pricing, or a dense solve)."""
    from benchmark.metrics.matching import _engine

    rng = np.random.default_rng(12)
    a, b = rng.standard_normal((700, 10)), rng.standard_normal((760, 10))
    ref = dense_reference(a, b)
    calls = []
    original = _engine._solve_residual

    def wrong_guess(res_vals, mode, k=32):
        calls.append(mode)
        if mode != "sparse":
            return original(res_vals, mode, k)
        rows, cols = res_vals.shape
        empty = np.empty(0, dtype=np.int64)
        return np.arange(rows), rng.permutation(cols)[:rows], empty, empty

    match = match_dictionaries(a, b, method="sparse", fix_margin=0.0)
    assert match.value == pytest.approx(ref, abs=1e-9)
    monkeypatch.setattr(_engine, "_solve_residual", wrong_guess)
    match = match_dictionaries(a, b, method="sparse", fix_margin=5.0)  # nothing fixed: all residual
    assert match.certified
    assert match.value == pytest.approx(ref, abs=1e-9)
    assert calls[0] == "sparse" and "priced" in calls  # the sparse guess was tried, then repaired
    assert match.details["residual_retries"] >= 1


# --- the int8 candidate pass -------------------------------------------------------------------


def test_int8_matmul_is_exact_against_int64():
    """The int8 kernel must sum exactly in int32 (no int16 saturation), incl. extreme codes."""
    if not _cosine.int8_matmul_is_exact("cpu"):
        pytest.skip("this CPU's int8 matmul is not exact; the engine uses fp32 candidates")
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


@pytest.mark.parametrize("d", [3, 64, 768, 2304])
def test_int8_candidate_error_bound_holds(d):
    """|scale · int8 dot − exact fp64 cosine| ≤ row_err[i] for every entry, on many kinds of rows."""
    if not _cosine.int8_matmul_is_exact("cpu"):
        pytest.skip("int8 candidates unavailable on this CPU")
    rng = np.random.default_rng(d)
    kinds = _dictionary_kinds(rng, 48, d)
    worst = 0.0
    for name_a, name_b in [("gauss", "gauss"), ("heavy", "gauss"), ("sparse", "heavy"), ("spiky", "gauss"),
                           ("gauss", "spiky"), ("dup", "dup"), ("tiny", "sparse")]:
        ua, _ = _cosine.unit_rows64(torch.from_numpy(kinds[name_a]))
        ub, _ = _cosine.unit_rows64(torch.from_numpy(kinds[name_b]))
        ub = torch.cat([ub, ua[:5], -ua[5:8]])  # exact matches (|cos| = 1) included
        ops = _cosine.candidate_operands(ua, ub, torch.device("cpu"), "int8")
        approx = _cosine.candidate_block(ops, slice(None)).numpy().astype(np.float64) * ops.scale
        exact = (ua @ ub.T).numpy()
        excess = np.abs(approx - exact) - ops.row_err[:, None]
        assert excess.max() <= 0, (name_a, name_b, excess.max())
        worst = max(worst, float((np.abs(approx - exact) / ops.row_err[:, None]).max()))
    if d >= 64:  # the bound is rigorous, yet within a small factor of the errors that occur
        assert worst > 0.05


def test_int8_bound_is_useful_for_seed_like_dictionaries():
    rng = np.random.default_rng(14)
    a, b = seed_like(256, 768, rng)
    ua, _ = _cosine.unit_rows64(torch.from_numpy(a))
    ub, _ = _cosine.unit_rows64(torch.from_numpy(b))
    ops = _cosine.candidate_operands(ua, ub, torch.device("cpu"), "auto")
    if _cosine.int8_matmul_is_exact("cpu"):
        assert ops.kind == "int8" and ops.row_err.max() < 0.05
    else:
        assert ops.kind == "fp32"


@pytest.mark.parametrize("candidates", ["int8", "fp32"])
@pytest.mark.parametrize("shape", [(1, 7, 4), (60, 90, 5), (90, 60, 5), (150, 150, 16), (300, 120, 12)])
def test_candidate_precisions_match_scipy_dense(shape, candidates):
    if candidates == "int8" and not _cosine.int8_matmul_is_exact("cpu"):
        pytest.skip("int8 candidates unavailable on this CPU")
    m, n, d = shape
    rng = np.random.default_rng(m * 7 + n)
    a, b = seed_like(max(m, n), d, rng)
    a, b = a[:m], b[:n]
    match = match_dictionaries(a, b, method="sparse", candidates=candidates)
    assert match.certified and match.details["candidates"] == candidates
    assert_valid_matching(match, a, b)
    assert match.value == pytest.approx(dense_reference(a, b), abs=1e-9)


def test_int8_near_ties_use_the_fp32_recheck():
    """Clusters of near-identical rows: each row has many cosines within the int8 error bound of
    its best one, so the int8 bound cannot prove the rows and the fp32 recheck must do it."""
    if not _cosine.int8_matmul_is_exact("cpu"):
        pytest.skip("int8 candidates unavailable on this CPU")
    rng = np.random.default_rng(15)
    centres = rng.standard_normal((60, 64))
    a = np.repeat(centres, 8, axis=0) + 0.02 * rng.standard_normal((480, 64))
    b = np.repeat(centres[rng.permutation(60)], 8, axis=0) + 0.02 * rng.standard_normal((480, 64))
    ua, _ = _cosine.unit_rows64(torch.from_numpy(a))
    ub, _ = _cosine.unit_rows64(torch.from_numpy(b))
    err = _cosine.candidate_operands(ua, ub, torch.device("cpu"), "int8").row_err
    cos = (ua @ ub.T).numpy()
    top = np.sort(cos, axis=1)[:, ::-1]
    assert np.mean(top[:, 0] - top[:, 4] < err) > 0.9  # the case is adversarial as intended
    ref = dense_reference(a, b)
    for fix_margin in (0.0, 0.2):
        match = match_dictionaries(a, b, method="sparse", candidates="int8", fix_margin=fix_margin)
        assert match.certified and match.details["candidates"] == "int8"
        if fix_margin == 0.0:  # near-tied pairs fixed: their rows can only be proven by the recheck
            assert match.details["fine_checked_rows"] > 0
        assert match.value == pytest.approx(ref, abs=1e-9)


def test_outlier_dimension_falls_back_to_fp32_and_forced_int8_stays_exact():
    """One huge coordinate makes the shared int8 scale coarse: "auto" must choose fp32; forcing
    int8 gives a loose bound whose rows are all rechecked, and the answer is still exact."""
    rng = np.random.default_rng(16)
    a, b = seed_like(200, 256, rng)
    b[3] = 0.0
    b[3, 17] = 1.0  # a one-hot latent: max |entry| = 1
    ref = dense_reference(a, b)
    auto = match_dictionaries(a, b, method="sparse")
    assert auto.details["candidates"] == "fp32"
    assert auto.value == pytest.approx(ref, abs=1e-9)
    if _cosine.int8_matmul_is_exact("cpu"):
        forced = match_dictionaries(a, b, method="sparse", candidates="int8")
        assert forced.details["candidate_error"] > 0.05 and forced.certified
        assert forced.value == pytest.approx(ref, abs=1e-9)
    with pytest.raises(CanonBenchError, match="candidates"):
        mcc(a, b, candidates="bf16")


@pytest.mark.parametrize("k", [3, 4])
def test_residual_pricing_repairs_a_too_sparse_guess(k):
    """With only the top-3/top-4 entries per row and column, the sparse LAPJV solution is usually
    not optimal on the whole block; pricing against LP duals must add entries until it is."""
    from benchmark.metrics.matching import _engine

    rng = np.random.default_rng(17)
    block = unit(rng.standard_normal((600, 16))) @ unit(rng.standard_normal((650, 16))).T
    rows, cols = linear_sum_assignment(block, maximize=True)
    best = block[rows, cols].sum()
    r_loc, c_loc, g_rows, g_cols = _engine._solve_residual(block, "priced", k=k)
    assert len(np.unique(r_loc)) == 600 and len(np.unique(c_loc)) == 600
    assert block[r_loc, c_loc].sum() == pytest.approx(best, abs=1e-9)
    s_rows, s_cols, i_rows, _ = _engine._solve_residual(block, "sparse", k=k)
    assert len(g_rows) > len(i_rows)  # entries beyond the initial top-k graph were priced in
    assert block[s_rows, s_cols].sum() < best - 1e-3  # the unrepaired guess is really suboptimal


def test_residual_block_grows_from_the_previous_one():
    """Releasing fixed pairs grows the residual block; reused entries must equal a fresh computation."""
    from benchmark.metrics.matching import _engine

    rng = np.random.default_rng(18)
    ua, _ = _cosine.unit_rows64(torch.from_numpy(rng.standard_normal((50, 7))))
    ub, _ = _cosine.unit_rows64(torch.from_numpy(rng.standard_normal((60, 7))))
    old_rows, old_cols = np.array([3, 10, 11, 40]), np.array([0, 5, 9, 33, 59])
    old = _engine._residual_block(ua, ub, old_rows, old_cols, None, None, None)
    rows, cols = np.array([1, 3, 10, 11, 25, 40]), np.array([0, 2, 5, 9, 33, 44, 59])
    grown = _engine._residual_block(ua, ub, rows, cols, old_rows, old_cols, old)
    np.testing.assert_allclose(grown, (ua @ ub.T).numpy()[np.ix_(rows, cols)], atol=1e-15)
    shrunk = _engine._residual_block(ua, ub, rows[:2], cols, old_rows, old_cols, old)  # no reuse possible
    np.testing.assert_allclose(shrunk, (ua @ ub.T).numpy()[np.ix_(rows[:2], cols)], atol=1e-15)
