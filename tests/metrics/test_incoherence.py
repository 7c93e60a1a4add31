"""Two-term representations of decoder rows: planted triples are recovered exactly, the blocked search
agrees with a brute force over all pairs, and the certificate's claim holds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmark.errors import CanonBenchError
from benchmark.metrics.matching._cosine import int8_matmul_is_exact
from benchmark.metrics.incoherence import (
    random_dictionary,
    shuffle_coordinates_across_rows,
    top_abs_neighbours,
    two_term_representations,
    unit_rows64,
)


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def brute_force_best_pairs(U: np.ndarray) -> np.ndarray:
    """Best counted two-term cosine of every row over ALL pairs of other rows, by batched least squares
    (numpy pseudo-inverses; independent of the closed form)."""
    m = len(U)
    best = np.full(m, -np.inf)
    for i in range(m):
        others = [t for t in range(m) if t != i]
        pairs = np.array(list(itertools.combinations(others, 2)))
        A = np.transpose(U[pairs], (0, 2, 1))  # [pairs, d, 2]
        coef = np.einsum("pkd,d->pk", np.linalg.pinv(A), U[i])
        proj = np.linalg.norm(np.einsum("pdk,pk->pd", A, coef), axis=1)
        counted = (coef > 1e-12).any(axis=1)
        if counted.any():
            best[i] = proj[counted].max()
    return best


def planted_dictionary(m: int = 400, d: int = 64, seed: int = 0):
    """Random rows with planted structure: 5 triples with a positive coefficient, one with two negative
    coefficients (no equal-L0 swap, so not incoherent), and two duplicate pairs."""
    rng = np.random.default_rng(seed)
    U = unit(rng.standard_normal((m, d)))
    triples, coefs = [], []
    order = rng.permutation(m)
    for t in range(5):
        i, j, k = (int(v) for v in order[3 * t: 3 * t + 3])
        a, b = rng.uniform(0.3, 1.0), rng.choice([-1, 1]) * rng.uniform(0.3, 1.0)
        v = a * U[j] + b * U[k]
        U[i] = v / np.linalg.norm(v)
        triples.append((i, j, k))
        coefs.append((a / np.linalg.norm(v), b / np.linalg.norm(v)))
    i, j, k = (int(v) for v in order[15:18])
    v = -(0.6 * U[j] + 0.8 * U[k])
    U[i] = v / np.linalg.norm(v)
    negative = (i, j, k)
    duplicates = [(int(order[18]), int(order[19])), (int(order[20]), int(order[21]))]
    for p, q in duplicates:
        U[p] = U[q]
    return U, triples, coefs, negative, duplicates


CANDIDATES = ["fp32", pytest.param("int8", marks=pytest.mark.skipif(not int8_matmul_is_exact("cpu"),
                                                                     reason="no exact int8 matmul on this CPU"))]


@pytest.mark.parametrize("candidates", CANDIDATES)
def test_planted_triples_are_recovered_exactly(candidates):
    U, triples, coefs, negative, duplicates = planted_dictionary()
    found = two_term_representations(U, tau=0.95, k=16, candidates=candidates)
    expected = {v for t in triples for v in t} | {v for pair in duplicates for v in pair}
    assert set(np.flatnonzero(found.represented)) == expected
    assert set(np.flatnonzero(found.duplicate)) == {v for pair in duplicates for v in pair}
    for (i, j, k), (a, b) in zip(triples, coefs):
        # every member is represented by the other two, with cosine 1
        for row, others in ((i, {j, k}), (j, {i, k}), (k, {i, j})):
            assert {found.partner_j[row], found.partner_k[row]} == others
            assert found.pair_cosine[row] == pytest.approx(1.0, abs=1e-12)
        got = {found.partner_j[i]: found.coef_j[i], found.partner_k[i]: found.coef_k[i]}
        assert got[j] == pytest.approx(a, abs=1e-9) and got[k] == pytest.approx(b, abs=1e-9)
    # a row in the negative cone of two others has no equal-L0 swap: none of the three is counted
    assert not found.represented[list(negative)].any()
    for p, q in duplicates:
        assert found.best_single_partner[p] == q and found.best_single[p] == pytest.approx(1.0)
    assert found.fraction(found.represented) == pytest.approx(len(expected) / len(U))


def test_the_difference_direction_of_near_duplicates_is_found():
    """Ayonrinde et al.'s shape f3 = f2 − α·f1 with α = 1e-2: f2 and f3 are duplicates, and f1 (cosine ≈ 0
    with both, so in neither neighbour list) is the plane of (f2, f3) that only the plane pass can find."""
    rng = np.random.default_rng(7)
    U = unit(rng.standard_normal((500, 64)))
    f1, f2, f3 = 3, 4, 5
    U[f1] = unit((U[f1] - (U[f1] @ U[f2]) * U[f2])[None])[0]  # f1 ⟂ f2
    U[f3] = unit((U[f2] - 1e-2 * U[f1])[None])[0]
    found = two_term_representations(U, tau=0.95, k=16)
    assert set(np.flatnonzero(found.represented)) == {f1, f2, f3}
    assert set(np.flatnonzero(found.duplicate)) == {f2, f3}
    assert {found.partner_j[f1], found.partner_k[f1]} == {f2, f3}
    assert found.pair_cosine[f1] == pytest.approx(1.0, abs=1e-9)
    assert found.near_parallel_pairs >= 1 and found.crowded == 0
    assert found.certified.all()


def test_noisy_plant_has_the_closed_form_cosine():
    rng = np.random.default_rng(3)
    U = unit(rng.standard_normal((200, 48)))
    i, j, k = 5, 17, 90
    basis, _ = np.linalg.qr(np.stack([U[j], U[k]], axis=1))
    w = rng.standard_normal(48)
    w -= basis @ (basis.T @ w)
    w /= np.linalg.norm(w)
    v = 0.8 * U[j] - 0.3 * U[k]
    eta = 0.2
    U[i] = (v + eta * w) / np.linalg.norm(v + eta * w)
    want = np.linalg.norm(v) / np.sqrt(np.linalg.norm(v) ** 2 + eta ** 2)
    found = two_term_representations(U, tau=0.9, k=16)
    assert found.pair_cosine[i] == pytest.approx(want, abs=1e-12)
    assert {found.partner_j[i], found.partner_k[i]} == {j, k}


def test_exhaustive_search_equals_brute_force():
    rng = np.random.default_rng(1)
    U = unit(rng.standard_normal((36, 10)))
    U[0] = unit((0.9 * U[1] + 0.4 * U[2] + 0.05 * rng.standard_normal(10))[None])[0]
    found = two_term_representations(U, tau=0.9, k=35)  # every other row is a neighbour
    assert np.allclose(found.pair_cosine, brute_force_best_pairs(U), atol=1e-10)
    assert found.certified.all()  # nothing was left out


@pytest.mark.parametrize("candidates", CANDIDATES)
@pytest.mark.parametrize("seed", [2, 3])
def test_certificate_holds_against_brute_force(seed, candidates):
    """A certified row is represented exactly when the brute force over all pairs says so."""
    rng = np.random.default_rng(seed)
    U = unit(rng.standard_normal((60, 24)))
    U[0] = unit((U[1] - 0.02 * U[2])[None])[0]  # f3 = f2 − α f1: row 2 is the difference direction of rows 0, 1
    U[10] = unit((0.7 * U[11] + 0.5 * U[12] + 0.05 * rng.standard_normal(24))[None])[0]
    tau, gamma = 0.9, 0.5
    found = two_term_representations(U, tau=tau, k=4, gamma=gamma, candidates=candidates)
    brute = brute_force_best_pairs(U)
    assert found.certified.sum() >= 25  # not vacuous
    assert (found.represented[found.certified] == (brute[found.certified] > tau)).all()
    assert found.represented[[0, 1, 2, 10]].all()
    # the search never overstates: its value is a real pair's cosine
    assert (np.nan_to_num(found.pair_cosine, nan=-1) <= brute + 1e-12).all()


def test_blocked_neighbours_equal_the_dense_order_and_skip_dead_rows():
    rng = np.random.default_rng(4)
    U = unit(rng.standard_normal((120, 16)))
    U[[7, 50]] = 0.0
    unit64, live = unit_rows64(U)
    dense = np.abs(U @ U.T)
    np.fill_diagonal(dense, -1)
    dense[:, ~live] = -1
    order = np.argsort(-dense, axis=1)
    for block_bytes in (1, 10**9):  # sixteen rows per block, and one block
        nbrs, values, outside, err = top_abs_neighbours(unit64, unit64, live, 5, precision="fp32",
                                                        block_bytes=block_bytes)
        assert (nbrs[live] == order[live, :5]).all()
        assert np.allclose(values[live], np.take_along_axis(dense, order[:, :5], 1)[live], atol=1e-5)
        assert np.allclose(outside[live], dense[np.arange(120), order[:, 5]][live], atol=1e-5)
    found = two_term_representations(U, tau=0.95, k=5)
    assert not found.live[[7, 50]].any() and np.isnan(found.pair_cosine[[7, 50]]).all()
    assert not np.isin([7, 50], np.concatenate([found.partner_j, found.partner_k])).any()


def test_baselines_keep_what_they_claim():
    rng = np.random.default_rng(5)
    rows = rng.standard_normal((300, 20)) + 3.0 * rng.standard_normal(20)  # a shared mean direction
    rows[11] = 0.0
    shuffled = shuffle_coordinates_across_rows(rows, [0, 1])
    kept, live = unit_rows64(rows)
    kept = kept[live].numpy()
    assert shuffled.shape == kept.shape
    assert np.allclose(np.sort(shuffled, axis=0), np.sort(kept, axis=0))  # every coordinate's values kept
    assert not np.allclose(shuffled, kept)
    assert np.allclose(shuffled.mean(0), kept.mean(0))
    assert random_dictionary(30, 8, [1, 2]).shape == (30, 8)
    assert np.array_equal(random_dictionary(30, 8, [1, 2]), random_dictionary(30, 8, [1, 2]))


def test_random_dictionaries_have_no_representations_at_a_high_threshold():
    found = two_term_representations(random_dictionary(2000, 128, 0), tau=0.9, k=16)
    assert found.fraction(found.represented) == 0.0 and found.fraction(found.certified) > 0.99


def test_bad_settings_raise_one_line_errors():
    U = unit(np.random.default_rng(0).standard_normal((10, 4)))
    for kwargs, field in (({"tau": 1.0}, "tau"), ({"tau": 0.9, "k": 1}, "k"), ({"tau": 0.9, "gamma": 1.0}, "gamma")):
        with pytest.raises(CanonBenchError) as err:
            two_term_representations(U, **kwargs)
        assert err.value.field == field
    with pytest.raises(CanonBenchError, match="NaN"):
        two_term_representations(np.full((3, 2), np.nan), tau=0.9)


@pytest.mark.parametrize("candidates", CANDIDATES)
def test_bound_on_rows_left_out_holds_for_every_row(candidates):
    """c* (the (k+1)-th candidate |cosine| plus the pass's error bound) is ≥ the exact |cosine| of every
    live row left out of a row's list: the certificate rests on it. With int8 candidates the bound is
    needed (some left-out row beats the bare candidate value), so the test can fail."""
    from benchmark.metrics.incoherence import _c_star

    rng = np.random.default_rng(8)
    U = unit(rng.standard_normal((400, 48)) + 0.8 * rng.standard_normal(48))  # anisotropic: many close values
    U[13] = 0.0
    unit64, live = unit_rows64(U)
    nbrs, _, outside, err = top_abs_neighbours(unit64, unit64, live, 6, precision=candidates)
    exact = np.abs(U @ U.T)
    np.fill_diagonal(exact, -1.0)
    exact[:, ~live] = -1.0
    np.put_along_axis(exact, np.where(nbrs >= 0, nbrs, 0), -1.0, axis=1)
    left_out_max = exact.max(1)[live]
    assert (left_out_max <= _c_star(outside, err)[live] + 1e-12).all()
    if candidates == "int8":
        assert (left_out_max > outside[live]).any()


def test_tau_separates_a_representation_just_above_from_one_just_below():
    """A row whose best two-term fit has cosine 0.97 counts at tau = 0.95, one at 0.93 does not (the
    planted triples above have cosine 1, so they cannot tell where the threshold sits)."""
    rng = np.random.default_rng(11)
    U = unit(rng.standard_normal((300, 64)))

    def near_plane(j: int, k: int, cosine: float) -> np.ndarray:
        plane = np.linalg.qr(np.stack([U[j], U[k]], axis=1))[0]  # [64, 2] orthonormal basis of span(U_j, U_k)
        inside = unit((0.6 * U[j] + 0.5 * U[k])[None])[0]
        noise = rng.standard_normal(64)
        noise -= plane @ (plane.T @ noise)
        return cosine * inside + np.sqrt(1 - cosine**2) * unit(noise[None])[0]

    U[10] = near_plane(20, 21, 0.97)
    U[11] = near_plane(30, 31, 0.93)
    found = two_term_representations(U, tau=0.95, k=16)
    assert found.pair_cosine[10] == pytest.approx(0.97, abs=1e-9)
    assert found.pair_cosine[11] == pytest.approx(0.93, abs=1e-9)
    assert found.represented[10] and not found.represented[11]
