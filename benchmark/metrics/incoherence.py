"""Incoherent triples: decoder rows that two other rows represent almost exactly (Ayonrinde et al.).

If a unit decoder row satisfies ``u_i ≈ a·u_j + b·u_k``, an activation written with latents ``{j, k}`` can
also be written with ``{i, k}`` (when ``a > 0``) or ``{i, j}`` (when ``b > 0``) at the same L0 and almost the
same reconstruction: the sparse code, and so the explanation, is not unique. Their Gemma Scope 16K example
is ``f3 ≈ f2 − α·f1`` with α ≈ 1e-2.

**Definition.** Rows are scaled to unit norm; zero (dead) rows are neither searched nor used. For a live
row ``i`` and two other live rows ``j ≠ k``, the best two-term representation is the least-squares
projection of ``u_i`` on ``span(u_j, u_k)``; its cosine with ``u_i`` is ``‖P u_i‖`` =
``sqrt((c_j² + c_k² − 2 g c_j c_k) / (1 − g²))`` with ``c = u_i·u_{j,k}`` and ``g = u_j·u_k`` (for a
collinear pair, ``g² = 1``, it is ``max(|c_j|, |c_k|)``), and its coefficients are
``a = (c_j − g c_k)/(1 − g²)``, ``b = (c_k − g c_j)/(1 − g²)``. Only pairs with ``a > 0`` or ``b > 0`` count:
then some activation with non-negative magnitudes has two codes of equal L0 (with ``a, b ≤ 0`` none has).
Row ``i`` **has a two-term representation at τ** when the best counted pair's cosine exceeds ``τ``; it
is a **duplicate** when one other row alone has signed cosine ``> τ`` (a duplicate always has a two-term
representation too). A planted triple makes all three of its rows representable by the other two
whenever one of its coefficients is positive.

**Search** (memory ``O(m·(d + k))`` plus one bounded block; the ``m × m`` matrix never exists):

1. one blocked pass of the matching engine's candidate products ``U[block] @ U.T`` (int8 codes with exact
   int32 sums where the CPU allows it, else fp32; :mod:`benchmark.metrics.matching._cosine`) keeps each
   row's ``k`` other rows of largest candidate ``|cosine|`` and the ``(k+1)``-th largest (with the pass's
   per-row error bound, the bound ``c*`` on every row left out);
2. every pair within a row's list is solved exactly (fp64 ``c`` and ``g``, the closed form above) and
   the best counted pair kept;
3. near-parallel pairs (``|g| > γ`` within the lists) can span a direction close to neither of them (for
   ``f3 = f2 − α·f1``, the row ``f1`` has cosine ≈ 0 with ``f2`` and ``f3``). Each such plane is compared
   with **every** row in one more blocked pass (projection on an orthonormal basis of the plane, fp32 with
   its error bound), and every row it may represent at ``> τ`` is solved exactly;
4. rows the certificate below cannot settle get a second candidate list: the ``k`` rows closest to their
   *residual direction* (the row with its component along its nearest neighbour removed; in a triple
   ``u_i ≈ a·u_j + b·u_k`` the row most similar to ``u_i`` is often one term while the other has a small
   cosine with ``u_i`` but a large one with that residual), and every pair in the union of both lists is
   solved. This pass costs as much as step 1 per row, so it runs only where it can change the answer.

``pair_cosine`` is the best cosine found by these steps: exact whether it exceeds ``τ`` for certified
rows, a lower bound on the best two-term cosine otherwise.

**Certificate.** ``certified`` marks rows for which no pair of other rows the search did not solve can
represent them at ``> τ`` (so whether they are represented agrees with a brute force over all pairs). Pairs with
``|g| > γ`` are all listed in step 4 unless some row has more than ``k`` others at ``|g| > γ``
("crowded" rows; then no row is certified through this argument). A pair with ``|g| ≤ γ`` that was not
solved has a member outside the row's first list, so with ``|c| ≤ c*``, and one with ``|c| ≤ c₁`` (the
row's largest ``|cosine|``); its projection is at most ``sqrt((c₁² + c*² + 2γ c₁ c*) / (1 − γ²))``. A row
is certified when it is represented, when every other row was a candidate, or when that bound is
``≤ τ`` and no row is crowded. ``c*`` carries the candidate pass's per-row error bound (fp32: about
``1.5·d·2⁻²⁴``; int8: the measured quantisation bound, about 0.02 at d = 768), so which precision ran
changes how many rows are certified and what uncertified rows report, never a certified answer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from benchmark.errors import CanonBenchError
from benchmark.metrics.matching import _cosine as cz

log = logging.getLogger(__name__)

#: Bytes of the fp32 block of cosines alive at once in the neighbour pass.
BLOCK_BYTES = 256 * 2**20
#: Bytes of gathered fp64 neighbour rows alive at once in the pair pass.
PAIR_BYTES = 64 * 2**20
#: Below this ``1 − g²`` a pair is treated as collinear.
COLLINEAR = 1e-12


@dataclass
class TwoTermSearch:
    """Per-row result of :func:`two_term_representations` (arrays of length ``m``; ``-1`` / NaN for
    dead rows and rows without a counted pair)."""

    live: np.ndarray  # bool
    partner_j: np.ndarray  # int64, the first row of the best counted pair
    partner_k: np.ndarray  # int64
    coef_j: np.ndarray  # float64, u_i ≈ coef_j·u_j + coef_k·u_k (unit rows)
    coef_k: np.ndarray
    pair_cosine: np.ndarray  # float64, cosine of u_i with that representation (NaN for dead rows)
    best_single: np.ndarray  # float64, largest signed cosine with one other row among the neighbours
    best_single_partner: np.ndarray  # int64
    certified: np.ndarray  # bool (see the module docstring)
    tau: float
    k: int
    gamma: float
    near_parallel_pairs: int = 0  # pairs of mutual |cosine| > gamma searched against every row
    crowded: int = 0  # rows with more than k others at |cosine| > gamma (the certificate then fails)
    seconds: dict = field(default_factory=dict)  # wall time per step (neighbours, residual, pairs, planes)

    @property
    def represented(self) -> np.ndarray:
        """Rows with a two-term representation at ``tau``."""
        return self.live & (np.nan_to_num(self.pair_cosine, nan=-1.0) > self.tau)

    @property
    def duplicate(self) -> np.ndarray:
        """Rows with one other row at signed cosine ``> tau``."""
        return self.live & (np.nan_to_num(self.best_single, nan=-1.0) > self.tau)

    def fraction(self, mask: np.ndarray) -> float:
        """Share of live rows in ``mask`` (0 when no row is live)."""
        n = int(self.live.sum())
        return float((mask & self.live).sum()) / n if n else 0.0


def unit_rows64(rows: Any, name: str = "decoder") -> tuple[torch.Tensor, np.ndarray]:
    """``rows [m, d]`` (numpy or torch) as fp64 unit rows on the CPU and the mask of nonzero rows (the
    matching engine's validation and scaling, so both read a dictionary the same way)."""
    return cz.unit_rows64(cz.as_float_rows(rows, name), name)


def top_abs_neighbours(queries: torch.Tensor, keys: torch.Tensor, live: np.ndarray, k: int, *, device: str = "cpu",
                       precision: str = "auto", query_rows: np.ndarray | None = None, block_bytes: int = BLOCK_BYTES,
                       progress: bool = False,
                       desc: str = "neighbour blocks") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each query row ``t`` (``queries [q, d]``, unit or zero rows, standing for key row ``query_rows[t]``,
    default ``t``), the ``k`` live key rows other than its own with the largest candidate |cosine|.

    The candidate values are the matching engine's candidate pass (:func:`~benchmark.metrics.matching._cosine.
    candidate_operands`: int8 codes with exact int32 sums where the CPU allows it under ``precision="auto"``,
    else fp32), in blocks of at most ``block_bytes``. Returns ``[q, k]`` int64 neighbours (−1 padding),
    their candidate |cosines| ``[q, k]`` (−1 for padding), the ``(k+1)``-th largest candidate |cosine| ``[q]``
    (−1 when every other live key is a neighbour) and ``row_err [q]``: every candidate value of row ``t`` is
    within ``row_err[t]`` of the exact cosine. ``keys``: unit rows ``[m, d]``."""
    from tqdm.auto import tqdm

    m, q = keys.shape[0], queries.shape[0]
    dev = cz.resolve_device(device)
    own = torch.from_numpy(np.arange(q) if query_rows is None else np.asarray(query_rows)).to(dev)
    ops = cz.candidate_operands(queries.to(torch.float64), keys.to(torch.float64), dev, precision)
    dead = torch.from_numpy(~live).to(dev)
    take = min(k + 1, m)
    block = int(max(16, min(m, block_bytes // (4 * m))))  # int32 or fp32 entries
    neighbours = np.full((q, k), -1, dtype=np.int64)
    values = np.full((q, k), -1.0)
    outside = np.full(q, -1.0)
    with cz.exact_fp32_matmul():
        for start in tqdm(range(0, q, block), desc=desc, disable=not progress, leave=False):
            stop = min(q, start + block)
            raw = cz.candidate_block(ops, slice(start, stop)).abs_()
            raw[:, dead] = -1
            raw[torch.arange(stop - start, device=dev), own[start:stop]] = -1  # a row is not its own neighbour
            vals, idx = torch.topk(raw, take, dim=1)
            vals, idx = vals.cpu().numpy().astype(np.float64), idx.cpu().numpy()
            valid = vals >= 0
            vals = np.where(valid, vals * ops.scale, -1.0)
            got = min(k, take)
            neighbours[start:stop, :got] = np.where(valid[:, :got], idx[:, :got], -1)
            values[start:stop, :got] = vals[:, :got]
            if take > k:
                outside[start:stop] = vals[:, k]
    return neighbours, values, outside, np.asarray(ops.row_err, dtype=np.float64)


def residual_directions(rows64: torch.Tensor, unit64: torch.Tensor, nearest: np.ndarray) -> torch.Tensor:
    """``[q, d]`` fp32: each of the unit rows ``rows64 [q, d]`` with its component along ``unit64[nearest[t]]``
    removed, rescaled to unit norm (zero when there is no nearest row or the two are parallel)."""
    out = torch.zeros(rows64.shape, dtype=torch.float32)
    chunk = max(1, PAIR_BYTES // (16 * unit64.shape[1]))
    for start in range(0, rows64.shape[0], chunk):
        stop = min(rows64.shape[0], start + chunk)
        near = torch.from_numpy(nearest[start:stop])
        rows = rows64[start:stop]
        other = unit64[near.clamp_min(0)]
        r = rows - (rows * other).sum(1, keepdim=True) * other
        norm = torch.linalg.vector_norm(r, dim=1, keepdim=True)
        keep = (norm > 1e-9) & (near[:, None] >= 0)
        out[start:stop] = torch.where(keep, r / torch.where(keep, norm, torch.ones_like(norm)), torch.zeros_like(r)).float()
    return out


def merge_candidates(*lists: np.ndarray) -> np.ndarray:
    """Row-wise union of neighbour lists ``[m, k_t]`` as ``[m, Σ k_t]`` with repeats replaced by ``-1``."""
    merged = np.sort(np.concatenate(lists, axis=1), axis=1)
    repeat = np.zeros_like(merged, dtype=bool)
    repeat[:, 1:] = merged[:, 1:] == merged[:, :-1]
    merged[repeat] = -1
    return merged


def closed_form(ca: torch.Tensor, cb: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projection of a unit row on ``span(u_a, u_b)`` from ``c_a``, ``c_b`` (its cosines with them) and
    ``g = u_a·u_b``: ``(squared cosine in [0, 1], coefficient a, coefficient b, counted)``; counted = a
    coefficient is positive. A collinear pair (``1 − g² ≤ COLLINEAR``) spans a line: the better row alone."""
    den = 1.0 - g * g
    regular = den > COLLINEAR
    safe = torch.where(regular, den, torch.ones_like(den))
    proj2 = torch.where(regular, (ca * ca + cb * cb - 2.0 * g * ca * cb) / safe, torch.maximum(ca * ca, cb * cb))
    a_wins = ca.abs() >= cb.abs()
    a = torch.where(regular, (ca - g * cb) / safe, torch.where(a_wins, ca, torch.zeros_like(ca)))
    b = torch.where(regular, (cb - g * ca) / safe, torch.where(a_wins, torch.zeros_like(cb), cb))
    return proj2.clamp(0.0, 1.0), a, b, (a > 0) | (b > 0)


def best_pairs(unit64: torch.Tensor, neighbours: np.ndarray, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """For each row (``rows``, default all; ``neighbours[t]`` are the candidates of row ``rows[t]``), the best
    counted pair among its candidate rows (exact fp64; see the module docstring).

    Returns arrays (one entry per row) ``partner_j``, ``partner_k``, ``coef_j``, ``coef_k``, ``pair_cosine``
    (−inf where no pair counts), ``best_single``, ``best_single_partner``, ``max_abs_cosine`` (largest |c|
    over candidates)."""
    m, k = neighbours.shape
    rows = np.arange(m) if rows is None else np.asarray(rows)
    d = unit64.shape[1]
    out = {name: np.full(m, -1, dtype=np.int64) for name in ("partner_j", "partner_k", "best_single_partner")}
    for name in ("coef_j", "coef_k"):
        out[name] = np.full(m, np.nan)
    out["pair_cosine"] = np.full(m, -np.inf)
    out["best_single"] = np.full(m, -np.inf)
    out["max_abs_cosine"] = np.zeros(m)
    if k == 0:
        return out
    pa, pb = torch.triu_indices(k, k, offset=1)
    chunk = int(max(1, PAIR_BYTES // (8 * k * d)))
    for start in range(0, m, chunk):
        stop = min(m, start + chunk)
        sl = slice(start, stop)
        idx = torch.from_numpy(neighbours[sl])
        present = idx >= 0
        cand = unit64[idx.clamp_min(0)]  # [r, k, d]
        c = torch.bmm(cand, unit64[torch.from_numpy(rows[sl])][:, :, None])[:, :, 0]  # [r, k]
        c = torch.where(present, c, torch.zeros_like(c))
        out["max_abs_cosine"][sl] = c.abs().max(1).values.numpy()
        best_val, best_at = torch.where(present, c, torch.full_like(c, -torch.inf)).max(1)
        out["best_single"][sl] = best_val.numpy()
        out["best_single_partner"][sl] = torch.gather(idx, 1, best_at[:, None])[:, 0].numpy()
        if k < 2:
            continue
        g = torch.bmm(cand, cand.transpose(1, 2))[:, pa, pb]  # [r, pairs]
        proj2, a, b, counted = closed_form(c[:, pa], c[:, pb], g)
        counted &= present[:, pa] & present[:, pb]
        best, at = torch.where(counted, proj2, torch.full_like(proj2, -torch.inf)).max(1)
        has = torch.isfinite(best)
        r = torch.arange(stop - start)
        out["pair_cosine"][sl] = torch.where(has, best.sqrt(), best).numpy()
        out["partner_j"][sl] = torch.where(has, torch.gather(idx, 1, pa[at][:, None])[:, 0], -1).numpy()
        out["partner_k"][sl] = torch.where(has, torch.gather(idx, 1, pb[at][:, None])[:, 0], -1).numpy()
        out["coef_j"][sl] = torch.where(has, a[r, at], torch.nan).numpy()
        out["coef_k"][sl] = torch.where(has, b[r, at], torch.nan).numpy()
    return out


def near_parallel_pairs(unit64: torch.Tensor, first: np.ndarray, first_abs: np.ndarray, gamma: float,
                        err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct pairs ``(j, k)`` (``[p, 2]``, j < k) among the first-pass neighbour lists whose exact
    ``|u_j·u_k| > gamma`` and that are not collinear, with their ``g = u_j·u_k`` ``[p]``. Only pairs whose
    candidate value ``first_abs`` exceeds ``gamma − err`` (``err [m]``, per row) are recomputed exactly."""
    m, k = first.shape
    maybe = (first >= 0) & (first_abs > gamma - np.asarray(err, dtype=np.float64).reshape(-1, 1))
    rows = np.repeat(np.arange(m), k)[maybe.ravel()]
    cols = first.ravel()[maybe.ravel()]
    pairs = np.unique(np.sort(np.stack([rows, cols], axis=1), axis=1), axis=0)
    if not len(pairs):
        return pairs.reshape(0, 2), np.zeros(0)
    g = edge_dots(unit64, pairs[:, 0], pairs[:, 1])
    near = (np.abs(g) > gamma) & (1.0 - g * g > COLLINEAR)
    return pairs[near], g[near]


def edge_dots(unit64: torch.Tensor, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Exact (fp64) ``u_i·u_j`` for the listed pairs (gathered in chunks of about ``PAIR_BYTES``)."""
    out = np.empty(len(i))
    chunk = max(1, PAIR_BYTES // (16 * unit64.shape[1]))
    for start in range(0, len(i), chunk):
        a = torch.from_numpy(i[start:start + chunk])
        b = torch.from_numpy(j[start:start + chunk])
        out[start:start + chunk] = (unit64[a] * unit64[b]).sum(1).numpy()
    return out


def plane_candidates(unit64: torch.Tensor, pairs: np.ndarray, g: np.ndarray, live: np.ndarray, threshold: float, *,
                     device: str = "cpu", block_bytes: int = BLOCK_BYTES,
                     progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every live row ``i`` whose fp32 projection on the plane of a listed pair ``(j, k)`` exceeds
    ``threshold`` (``i ∉ {j, k}``): ``(i, j, k)`` arrays. The plane has the orthonormal basis ``u_k`` and
    ``w = (u_j − g u_k) / sqrt(1 − g²)``, so the projection is ``sqrt((u_i·u_k)² + (u_i·w)²)``."""
    from tqdm.auto import tqdm

    empty = np.zeros(0, dtype=np.int64)
    if not len(pairs):
        return empty, empty, empty
    dev = torch.device(device)
    u32 = unit64.to(device=dev, dtype=torch.float32)
    uj, uk = unit64[torch.from_numpy(pairs[:, 0])], unit64[torch.from_numpy(pairs[:, 1])]
    gt = torch.from_numpy(g)[:, None]
    w = ((uj - gt * uk) / torch.sqrt(1.0 - gt * gt)).to(device=dev, dtype=torch.float32)
    uk = uk.to(device=dev, dtype=torch.float32)
    dead = torch.from_numpy(~live).to(dev)
    m = unit64.shape[0]
    block = int(max(16, min(len(pairs), block_bytes // (8 * m))))
    found_i, found_p = [], []
    with cz.exact_fp32_matmul():
        for start in tqdm(range(0, len(pairs), block), desc="near-parallel planes", disable=not progress, leave=False):
            stop = min(len(pairs), start + block)
            proj2 = (w[start:stop] @ u32.T).square_() + (uk[start:stop] @ u32.T).square_()
            proj2[:, dead] = 0.0
            hit_p, hit_i = (proj2 > threshold * threshold).nonzero(as_tuple=True)
            found_p.append(hit_p.cpu().numpy() + start)
            found_i.append(hit_i.cpu().numpy())
    p_idx, i_idx = np.concatenate(found_p), np.concatenate(found_i)
    j_idx, k_idx = pairs[p_idx, 0], pairs[p_idx, 1]
    other = (i_idx != j_idx) & (i_idx != k_idx)
    return i_idx[other], j_idx[other], k_idx[other]


def apply_candidates(found: dict[str, np.ndarray], unit64: torch.Tensor, i: np.ndarray, j: np.ndarray,
                     k: np.ndarray) -> int:
    """Evaluate the triples ``(i, j, k)`` exactly and keep, per row ``i``, any that beats its best pair so
    far. Returns the number of rows improved."""
    if not len(i):
        return 0
    ca, cb, g = (torch.from_numpy(edge_dots(unit64, x, y)) for x, y in ((i, j), (i, k), (j, k)))
    proj2, a, b, counted = closed_form(ca, cb, g)
    value = torch.where(counted, proj2.sqrt(), torch.full_like(proj2, -torch.inf)).numpy()
    order = np.lexsort((-value, i))  # by row, best first
    first = order[np.r_[True, i[order][1:] != i[order][:-1]]]
    rows = i[first]
    better = value[first] > found["pair_cosine"][rows]
    first, rows = first[better], rows[better]
    found["pair_cosine"][rows] = value[first]
    found["partner_j"][rows] = j[first]
    found["partner_k"][rows] = k[first]
    found["coef_j"][rows] = a.numpy()[first]
    found["coef_k"][rows] = b.numpy()[first]
    return int(len(rows))


def _c_star(outside: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Bound on the |cosine| of every row left out of a first list (0 when none was left out)."""
    return np.where(outside >= 0, np.minimum(outside + err, 1.0), 0.0)


def _certified(found: dict[str, np.ndarray], outside: np.ndarray, gamma: float, tau: float, err: np.ndarray, *,
               near_ok: bool) -> np.ndarray:
    """Rows whose answer cannot change by solving more pairs (see the module docstring): represented, or
    every other row was a candidate, or the bound on unsolved pairs of |g| ≤ gamma is ≤ tau and every
    pair of |g| > gamma was searched (``near_ok``)."""
    c_star = _c_star(outside, err)
    c_one = np.maximum(found["max_abs_cosine"], c_star)
    bound2 = (c_one ** 2 + c_star ** 2 + 2 * gamma * c_one * c_star) / (1 - gamma ** 2)
    represented = np.nan_to_num(found["pair_cosine"], nan=-1.0, neginf=-1.0) > tau
    return represented | (outside < 0) | ((bound2 <= tau ** 2) & near_ok)


def two_term_representations(rows: Any, *, tau: float, k: int = 16, gamma: float = 0.5, device: str = "cpu",
                             candidates: str = "auto", progress: bool = False) -> TwoTermSearch:
    """Search every row of ``rows [m, d]`` for a two-term representation by two other rows (see the
    module docstring). ``tau``: cosine threshold; ``k``: neighbours per row in each candidate list;
    ``gamma``: mutual |cosine| above which pairs are searched exhaustively (and up to which the
    certificate bounds the pairs left out); ``candidates``: precision of the neighbour passes ("auto",
    "int8" or "fp32", as in the matching engine; the certificate carries each one's error bound)."""
    if not 0 < tau < 1:
        raise CanonBenchError(f"tau must lie in (0, 1), got {tau}", field="tau")
    if k < 2:
        raise CanonBenchError(f"k must be ≥ 2, got {k}", field="k")
    if not 0 <= gamma < 1:
        raise CanonBenchError(f"gamma must lie in [0, 1), got {gamma}", field="gamma")
    unit64, live = unit_rows64(rows)
    m, d = unit64.shape
    plane_err = cz.fp32_cosine_error_bound(d)
    k_eff = int(min(k, max(int(live.sum()) - 1, 0)))
    near_pairs = np.zeros((0, 2), dtype=np.int64)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 4)
        clock = now

    if k_eff >= 1:
        first, first_abs, outside, err = top_abs_neighbours(unit64, unit64, live, k_eff, device=device,
                                                            precision=candidates, progress=progress)
        # a row with more than k others at |cos| > gamma may have near-parallel pairs no first list holds
        crowded = live & (outside >= 0) & (_c_star(outside, err) > gamma)
        lap("neighbours")
        found = best_pairs(unit64, first)
        lap("pairs")
        near_pairs, near_g = near_parallel_pairs(unit64, first, first_abs, gamma, err)
        # fp32 projections on a plane are off by at most √2·plane_err (two products); keep every possible hit
        hits = plane_candidates(unit64, near_pairs, near_g, live, max(tau - 2 * plane_err, 0.0), device=device,
                                progress=progress)
        apply_candidates(found, unit64, *hits)
        lap("planes")
        # rows the certificate cannot settle: add the neighbours of their residual direction as candidates
        open_rows = np.flatnonzero(live & ~_certified(found, outside, gamma, tau, err, near_ok=not crowded.any()))
        if len(open_rows):
            residual = residual_directions(unit64[torch.from_numpy(open_rows)], unit64, first[open_rows, 0])
            second, _, _, _ = top_abs_neighbours(residual, unit64, live, k_eff, device=device, precision=candidates,
                                                 query_rows=open_rows, progress=progress,
                                                 desc="residual neighbour blocks")
            second[first[open_rows, 0] < 0] = -1
            more = best_pairs(unit64, merge_candidates(first[open_rows], second), rows=open_rows)
            better = more["pair_cosine"] > found["pair_cosine"][open_rows]
            for name in ("pair_cosine", "partner_j", "partner_k", "coef_j", "coef_k"):
                found[name][open_rows[better]] = more[name][better]
        seconds["residual_rows"] = int(len(open_rows))
        lap("residual")
    else:
        outside, err = np.full(m, -1.0), np.zeros(m)
        crowded = np.zeros(m, dtype=bool)
        found = best_pairs(unit64, np.full((m, 0), -1, dtype=np.int64))
    certified = live & _certified(found, outside, gamma, tau, err, near_ok=not crowded.any())
    pair_cos = np.where(live & np.isfinite(found["pair_cosine"]), found["pair_cosine"], np.nan)
    best_single = np.where(live & np.isfinite(found["best_single"]), found["best_single"], np.nan)
    dead = ~live
    for name in ("partner_j", "partner_k", "best_single_partner"):
        found[name][dead] = -1
    return TwoTermSearch(
        live=live, partner_j=found["partner_j"], partner_k=found["partner_k"],
        coef_j=np.where(live, found["coef_j"], np.nan), coef_k=np.where(live, found["coef_k"], np.nan),
        pair_cosine=pair_cos, best_single=best_single, best_single_partner=found["best_single_partner"],
        certified=certified, tau=float(tau), k=k_eff, gamma=float(gamma), near_parallel_pairs=int(len(near_pairs)),
        crowded=int(crowded.sum()), seconds=seconds,
    )


# --- baselines ---------------------------------------------------------------------------------------
def random_dictionary(m: int, d: int, seed: int | list[int]) -> np.ndarray:
    """iid N(0, 1) rows ``[m, d]`` (fp32): the chance level for a dictionary of that shape."""
    return np.random.default_rng(seed).standard_normal((m, d), dtype=np.float32)


def shuffle_coordinates_across_rows(rows: Any, seed: int | list[int]) -> np.ndarray:
    """The live unit rows of ``rows`` with **each coordinate's values permuted across rows**, independently
    per coordinate (then rows are rescaled to unit norm again by the search).

    This keeps every coordinate's distribution over the dictionary (its mean, so the dictionary's mean
    direction, and its spread, so outlier dimensions and the anisotropy of the activation space) and
    destroys which values sit together in a row. Permuting the coordinates *within* each row would also
    destroy the anisotropy (every row would lose its alignment with the shared directions), leaving a
    second isotropic baseline that says nothing the Gaussian one does not; permuting whole rows changes
    nothing at all."""
    unit, live = unit_rows64(rows)
    kept = unit[torch.from_numpy(live)].numpy()
    return np.random.default_rng(seed).permuted(kept, axis=0)


__all__ = ["BLOCK_BYTES", "TwoTermSearch", "apply_candidates", "best_pairs", "closed_form", "edge_dots",
           "merge_candidates", "near_parallel_pairs", "plane_candidates", "random_dictionary",
           "residual_directions", "shuffle_coordinates_across_rows", "top_abs_neighbours", "two_term_representations",
           "unit_rows64"]
