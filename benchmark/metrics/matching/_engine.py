"""Exact maximum-weight matching of dictionary rows without the full cosine matrix.

Route (rows = the smaller dictionary; every live row is matched):
1. Prices. A random s × s' sample of the problem is solved densely (exact fp64, scipy); its row duals,
   c-transformed over every column (one kernel pass of the s sampled rows), estimate column prices
   v̂. Real decoder dictionaries are anisotropic: some columns have high cosines with many rows, and
   the optimum uses entries far down a row's raw ranking (rank ~1000 of 8K measured); at estimated
   prices the useful entries are near the top. Prices are a heuristic: they never affect exactness.
2. Candidate pass (the chosen kernel: int8, bf16 or fp32, see ``_kernels``): per row, of the k columns
   with the largest ``kernel − v̂_j`` those within ``keep_band`` of the row's best (at least ``k_min``)
   become known exactly (fp64); the first one left out bounds the rest of the row rigorously.
   Columns that few rows chose get their best rows by ``kernel − û_i`` too, ranked from the same
   blocks of the pass.
3. The known entries in the graph are solved with scipy's sparse LAPJV
   (``min_weight_full_bipartite_matching``); when the graph has no full matching it is completed
   (maximum matching + unmatched rows paired with unmatched columns) and solved again. Later solves
   (after the certificate added entries that violate the duals) continue from the last optimum:
   bids and shortest augmenting paths for the rows whose entries changed (``_exchange.cpp``), scipy
   from scratch where the C++ searches are unavailable.
4. LP duals of that assignment: shortest paths on its exchange graph (``_duals``; a C++ queue search,
   ``_exchange.cpp``, where the machine can build it, else numpy rounds); an improving cycle, if
   rounding ever produced one, is applied and the duals recomputed.
5. Certificate over every entry. A row holds a reference bound ``cos_ij ≤ w_i + V_r[j]`` for all its
   unknown entries (from the candidate pass, or from a later row pass under that round's duals).
   It is proven when u_i − w_i + min_j (v_j − V_r[j]) ≥ 0; the few columns where v fell far below V_r
   are checked directly by a column pass instead of spoiling the minimum. Unproven rows get a row
   pass under the current duals: its top entries by ``kernel + err_i − u_i − v_j`` become known
   (exactly when they may matter) and the rest gets a new reference bound. Entries that violate, or
   nearly violate, the duals go into the graph and step 3 repeats. Weak duality turns a round with
   nothing added into a proof: no assignment of the dense problem beats this one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import maximum_bipartite_matching, min_weight_full_bipartite_matching

from benchmark.metrics.matching import _cosine as cz
from benchmark.metrics.matching import _exchange
from benchmark.metrics.matching import _passes as ps
from benchmark.metrics.matching import _sets as st
from benchmark.metrics.matching._duals import RELAX_TOL, Duals, apply_improvement, exchange_duals
from benchmark.metrics.matching._kernels import U32, KernelOperands, exact_matmul, kernel_operands

logger = logging.getLogger(__name__)


@dataclass
class SolveStats:
    rounds: int = 0
    solves: int = 0  # sparse LAPJV solves from scratch (scipy)
    warm_solves: int = 0  # solves continued from the previous optimum (C++ shortest augmenting paths)
    warm_rows: int = 0  # rows those solves re-assigned by an augmenting path
    completions: int = 0  # graphs completed because they had no full matching
    improvements: int = 0  # improving cycles/paths applied (after a solve's rounding, or a repair)
    repairs: int = 0  # dual updates after violating entries joined the graph, without a new solve
    warm_duals: int = 0  # solves whose duals were started from the previous ones (fewer rows unproven)
    graph_edges: int = 0
    known_entries: int = 0  # graph + pool (entries whose value is known)
    exact_entries: int = 0  # fp64 cosines computed
    row_pass_rows: int = 0  # rows priced against every column after the candidate pass
    column_pass_cols: int = 0  # columns priced against every row
    column_candidate_cols: int = 0  # columns given their best rows from the candidate pass's ranking
    outlier_cols_cleared: int = 0  # certificate columns proven by a column pass instead of the rows' minimum
    fine_checked_rows: int = 0  # alias of row_pass_rows, kept for older readers
    bf_iterations: int = 0
    price_sample: int = 0  # rows in the price sample (0: no prices)
    candidates: str = ""  # kernel of the passes: "int8", "bf16" or "fp32"
    candidate_error: float = 0.0  # largest rigorous bound on |kernel value − cosine|
    kernel_reason: str = ""
    dual_search: str = ""  # "c++" (the built _exchange.cpp) or "numpy": same duals, the C++ queue is faster
    kernel_timings: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


@dataclass
class RawSolution:
    row_col: np.ndarray  # σ for the live rows (indices into the columns)
    certified: bool
    method: str
    stats: SolveStats
    row_dual: np.ndarray | None = None
    col_dual: np.ndarray | None = None
    row_value: np.ndarray | None = None  # exact (fp64) cosine of each row with its column


def _tick(stats: SolveStats, key: str, clock: float) -> float:
    """Add the seconds since ``clock`` to ``stats.timings[key]``; returns the new clock."""
    now = time.perf_counter()
    stats.timings[key] = stats.timings.get(key, 0.0) + now - clock
    return now


def solve_dense(a64: torch.Tensor, b64: torch.Tensor) -> RawSolution:
    costs = cz.dense_cosines64(a64, b64)
    rows, cols = linear_sum_assignment(costs, maximize=True)
    row_col = np.empty(a64.shape[0], dtype=np.int64)
    row_col[rows] = cols
    row_value = np.empty(a64.shape[0])
    row_value[rows] = costs[rows, cols]
    return RawSolution(row_col, True, "dense", SolveStats(), row_value=row_value)


class _Known:
    """Entries whose value is known: the graph (exact fp64 values, solved) and the pool (kernel values,
    fp64 computed on demand). Keys are row·n + col, kept sorted."""

    def __init__(self, m: int, n: int):
        self.m, self.n = m, n
        self.keys = np.empty(0, dtype=np.int64)
        self.kval = np.empty(0)  # kernel value (nan: not computed)
        self.xval = np.empty(0)  # exact fp64 value (nan: not computed)
        self.graph = np.empty(0, dtype=bool)
        self._csr = None

    def add(self, keys: np.ndarray, kval: np.ndarray | None = None, xval: np.ndarray | None = None,
            graph: bool = False) -> int:
        keys = np.asarray(keys, dtype=np.int64)
        keys, first = st.unique_first(keys)
        kv = np.full(len(keys), np.nan) if kval is None else np.asarray(kval, dtype=np.float64)[first]
        xv = np.full(len(keys), np.nan) if xval is None else np.asarray(xval, dtype=np.float64)[first]
        pos = np.searchsorted(self.keys, keys)
        present = (pos < len(self.keys)) & (self.keys[np.minimum(pos, len(self.keys) - 1)] == keys) if len(self.keys) else np.zeros(len(keys), bool)
        # entries already known: merge values, maybe promote to the graph
        if present.any():
            p = pos[present]
            fill = np.isnan(self.xval[p]) & ~np.isnan(xv[present])
            self.xval[p[fill]] = xv[present][fill]
            fill = np.isnan(self.kval[p]) & ~np.isnan(kv[present])
            self.kval[p[fill]] = kv[present][fill]
            if graph:
                self.graph[p] = True
        new = ~present
        if not new.any():
            return 0
        # both sides are sorted: the new keys' places in the merged order follow from their search
        # positions, so the merge is two scatters (no re-sort of millions of keys)
        fresh = pos[new] + np.arange(int(new.sum()))
        old_slots = np.ones(len(self.keys) + len(fresh), dtype=bool)
        old_slots[fresh] = False
        for name, values in (("keys", keys[new]), ("kval", kv[new]), ("xval", xv[new]), ("graph", graph)):
            merged = np.empty(len(old_slots), dtype=getattr(self, name).dtype)
            merged[old_slots] = getattr(self, name)
            merged[fresh] = values
            setattr(self, name, merged)
        self._csr = None
        return len(fresh)

    @property
    def cols(self) -> np.ndarray:
        return self.keys % self.n

    def graph_entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, exact values) of the graph's entries, in key order (rows ascending)."""
        g = np.flatnonzero(self.graph)
        keys = self.keys[g]
        return keys // self.n, keys % self.n, self.xval[g]

    def csr(self) -> tuple[np.ndarray, np.ndarray]:
        if self._csr is None:
            ptr = np.searchsorted(self.keys, np.arange(self.m + 1, dtype=np.int64) * self.n)
            self._csr = (ptr, self.cols)
        return self._csr

    def csc(self, of_cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ptr [n + 1], rows): the known rows of the columns ``of_cols``, ascending; every other
        column's list is empty. A column pass over a few hundred columns then reads the known keys
        once instead of sorting all of them (~0.1 s at 3.5M keys)."""
        wanted = np.zeros(self.n, dtype=bool)
        wanted[of_cols] = True
        cols = self.cols
        sel = np.flatnonzero(wanted[cols])
        order = st.stable_order(cols[sel], self.n)
        ptr = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols[sel], minlength=self.n), out=ptr[1:])
        return ptr, self.keys[sel[order]] // self.n

    def ensure_exact(self, idx: np.ndarray, a64: torch.Tensor, b64: torch.Tensor, stats: SolveStats) -> None:
        todo = st.unique(idx[np.isnan(self.xval[idx])])
        if len(todo):
            self.xval[todo] = cz.entry_cosines64(a64, b64, self.keys[todo])
            stats.exact_entries += len(todo)


def _exact(keys: np.ndarray, a64: torch.Tensor, b64: torch.Tensor, stats: SolveStats) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique keys, their exact fp64 cosines)."""
    keys = st.unique(keys)
    stats.exact_entries += len(keys)
    return keys, cz.entry_cosines64(a64, b64, keys)


def _sample_prices(a64, b64, ops: KernelOperands, sample: int, ratio: int, dense_max: int, rounds: int,
                   rng: np.random.Generator, block: int, device: torch.device) -> np.ndarray | None:
    """Column prices from the optimum of a sampled subproblem, c-transformed over every column:
    v̂_j = max over sampled rows i of (kernel(i, j) − u_i).

    The sample keeps the problem's pairing: half of its rows and columns are random, the other half
    are the best partners (largest kernel value) of the random columns and rows. A uniform sample
    would lose nearly every shared pair (a row's partner is sampled with probability s/n), so its
    prices would describe a problem with no shared latents. The sample holds about max(sample,
    m/ratio) rows: prices from a fixed-size sample get worse as the problem grows (at 65K rows a
    1K sample left 11M violating entries after the first solve). Samples up to ``dense_max`` rows are
    solved densely on fp32 cosines; larger ones by this engine itself (its duals after ``rounds``
    rounds; certified or not)."""
    m, n = a64.shape[0], b64.shape[0]
    half_r = min(max(sample, m // ratio), m) // 2
    half_c = min(n, int(round(half_r * n / m)))
    if half_r < 8 or half_r * 8 > m:
        return None
    rand_rows = rng.choice(m, half_r, replace=False)
    rand_cols = rng.choice(n, half_c, replace=False)
    best_cols = ps.argmax_rows(ops, rand_rows, block)
    best_rows = ps.argmax_cols(ops, rand_cols, block)
    rows = st.unique(np.concatenate([rand_rows, best_rows]))
    cols = st.unique(np.concatenate([rand_cols, best_cols]))
    if len(rows) > len(cols):  # every sampled row must be matched
        extra = rng.permutation(st.setdiff(np.arange(n), cols))[: len(rows) - len(cols)]
        cols = np.sort(np.concatenate([cols, extra]))
    if len(rows) <= dense_max:
        # fp32 cosines, not exact ones: prices are a heuristic, and the fp64 product of a 2048-row sample
        # took 0.045 s against 0.02 s. Not the kernel's values: bf16's ties slowed the dual search
        # below from 0.02 to 0.1 s.
        sub_a, sub_b = a64[torch.from_numpy(rows)].float(), b64[torch.from_numpy(cols)].float()
        with exact_matmul():
            sub = (sub_a @ sub_b.T).double().numpy()
        r, c = linear_sum_assignment(sub, maximize=True)
        sigma = np.empty(len(rows), dtype=np.int64)
        sigma[r] = c
        empty = np.empty(0, dtype=np.int64)
        duals = exchange_duals(sigma, sub[np.arange(len(rows)), sigma], len(cols), empty, empty, np.empty(0),
                               np.arange(len(rows)), np.arange(len(cols)), sub)
        if not isinstance(duals, Duals):
            return None
        row_dual = duals.row
    else:
        sub_a, sub_b = a64[torch.from_numpy(rows)], b64[torch.from_numpy(cols)]
        raw = solve_certified(sub_a, sub_b, device=device, max_rounds=rounds, candidates=ops.kind,
                              price_sample=sample, seed=int(rng.integers(2**31)), quiet=True)
        if raw.row_dual is None:
            return None
        row_dual = raw.row_dual
    return ps.max_over_rows(ops, rows, row_dual, block)


def _solve_graph(known: _Known, m: int, n: int, stats: SolveStats) -> tuple[np.ndarray, bool]:
    """Optimal assignment of every row on the graph's entries (sparse LAPJV). Returns (σ, completed):
    completed is True when the graph had no full matching and pairing edges must be added first."""
    rows, cols, vals = known.graph_entries()
    # weights shifted to [1, 3]: positive, so no stored entry is an explicit zero
    graph = sp.csr_matrix((2.0 - vals, (rows, cols)), shape=(m, n))
    stats.solves += 1
    try:
        r, c = min_weight_full_bipartite_matching(graph)
    except ValueError:
        return np.empty(0, dtype=np.int64), True
    row_col = np.empty(m, dtype=np.int64)
    row_col[r] = c
    return row_col, False


def _warm_solve(known: _Known, m: int, n: int, row_col: np.ndarray, v: np.ndarray,
                stats: SolveStats) -> np.ndarray | None:
    """σ optimal on the graph, continued from the previous optimum (σ, column duals v ≥ 0) after entries
    joined: only rows whose entries violate v are re-assigned (C++ augmenting paths; see
    ``_exchange.warm_assignment``). None where the C++ searches are unavailable or the start is unusable:
    the caller solves from scratch. The answer needs no trust: :func:`_graph_duals` proves it optimal on
    the graph (or improves it) before anything is certified."""
    rows, cols, vals = known.graph_entries()
    found = _exchange.warm_assignment(np.searchsorted(rows, np.arange(m + 1)), cols, vals, row_col, v, RELAX_TOL)
    if found is None or found.status != "optimal":
        if found is not None:
            logger.debug("warm solve: %s; solving from scratch", found.status)
        return None
    stats.warm_solves += 1
    logger.debug("warm solve: %d rows, %d entries scanned, %d cursor steps, graph %d", found.augmented,
                 found.scanned, found.cursor_steps, len(rows))
    stats.warm_rows += found.augmented
    return found.row_col


def _free_rows_cols(known: _Known, m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns left unmatched by a maximum matching of the graph's pattern."""
    rows, cols, _ = known.graph_entries()
    pattern = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(m, n))
    match = maximum_bipartite_matching(pattern, perm_type="column")
    used = np.zeros(n, dtype=bool)
    used[match[match >= 0]] = True
    return np.flatnonzero(match < 0), np.flatnonzero(~used)


def _complete(known: _Known, a64, b64, ops: KernelOperands, row_pot: np.ndarray, per_col: int, blk_c: int,
              rng: np.random.Generator, stats: SolveStats, tries: int = 3) -> None:
    """Give the graph a full matching: columns a maximum matching leaves free get their best rows
    at the row potentials (a column pass), repeated a few times; the rows still free are then paired
    with free columns (edges that exist, so a full matching does too)."""
    m, n = known.m, known.n
    for attempt in range(tries + 1):
        free_rows, free_cols = _free_rows_cols(known, m, n)
        if not len(free_rows):
            return
        if attempt == tries:
            keys = free_rows.astype(np.int64) * n + rng.permutation(free_cols)[: len(free_rows)]
        else:
            ptr, idx = known.csc(free_cols)
            colp = ps.column_pass(ops, free_cols, row_pot, per_col * 2**attempt, blk_c, ptr, idx)
            stats.column_pass_cols += len(free_cols)
            keys = (colp.index.astype(np.int64) * n + free_cols[:, None])[np.isfinite(colp.value)]
        keys, vals = _exact(keys, a64, b64, stats)
        known.add(keys, xval=vals, graph=True)


def check_columns(known: _Known, ops: KernelOperands, u: np.ndarray, v: np.ndarray, cols: np.ndarray,
                  cap: int, block: int) -> tuple[ps.ThresholdPass, np.ndarray]:
    """A threshold column pass over ``cols`` [c] under duals u [m], v [n] (cosine units).

    Returns (pass, cleared [c] bool). The pass lists, per column, the unknown rows whose entry may
    violate the duals (at most ``cap``, largest first). Claim of ``cleared[p]``: every entry
    (i, cols[p]) that is neither known nor returned has cos ≤ u_i + v_j, so the column need not enter
    any row's minimum."""
    ptr, idx = known.csc(cols)
    # every row i whose entry may violate: kernel(i, j) − (u_i − err_i) > v_j
    shift = u - ops.row_err
    # the threshold sits below v_j by the pass's float rounding (its slack, and the fp32 rounding of
    # the threshold itself): a column clears when ref_j + slack ≤ v_j, and ref_j is the threshold
    # as used when no more than ``cap`` rows exceed it. At v_j itself no fp32 column could clear.
    thr = v[cols] - ps.threshold_slack_bound(ops, shift, v[cols])
    colp = ps.threshold_pass(ops.transposed(), cols, shift, thr, cap, block, ptr, idx)
    # rows not returned: kernel ≤ shift_used_i + ref_j + slack ≤ u_i − err_i + v_j when ref_j + slack ≤ v_j
    return colp, colp.ref + colp.slack <= v[cols]


def _choose_outlier_columns(v: np.ndarray, refs: list[np.ndarray], ref_of_row: np.ndarray, gap: np.ndarray,
                            m: int, n: int, max_cols: int) -> np.ndarray:
    """Columns to check directly (a column pass) instead of letting them set min_j (v_j − V_r[j]).

    For each reference r, excluding its p lowest columns costs p·m (column pass) and leaves
    #{rows of r with gap_i + Δ_(p) < 0}·n of row passes; p is chosen over 0, 1, 2, 4, … ≤ max_cols."""
    out = []
    for r in st.unique(ref_of_row):
        mine = gap[ref_of_row == r]
        delta = v - refs[r]
        order = np.argsort(delta, kind="stable")
        d_sorted = delta[order]
        best_p, best_cost = 0, np.inf
        p = 0
        while p <= min(max_cols, n - 1):
            cost = p * m + np.count_nonzero(mine + d_sorted[p] < 0) * n
            if cost < best_cost:
                best_p, best_cost = p, cost
            p = 1 if p == 0 else 2 * p
        out.append(order[:best_p])
    return st.unique(np.concatenate(out)) if out else np.empty(0, dtype=np.int64)


def solve_certified(
    a64: torch.Tensor,
    b64: torch.Tensor,
    *,
    device: torch.device,
    k: int = 48,
    max_rounds: int = 100,
    block_rows: int | None = None,
    progress: bool = False,
    candidates: str = "auto",
    price_sample: int = 1024,
    price_ratio: int = 8,
    price_dense_max: int = 2048,
    price_rounds: int = 3,
    col_k: int = 8,
    col_min: int = 8,
    col_degree: str = "candidates",
    graph_band: float = 2.0,
    row_cap: int = 256,
    margin: float = 0.15,
    near: float = 0.02,
    seed: int = 0,
    repair_max: int = 64,
    promote_cap: int = 64,
    col_cap: int = 256,
    keep_band: float | None = 0.25,
    k_min: int = 8,
    quiet: bool = False,
) -> RawSolution:
    """Exact assignment of all rows of ``a64`` (live unit rows, m ≤ n) to rows of ``b64``.

    k: columns per row from the candidate pass (those within ``graph_band`` of the row's best go into
    the graph, the others are only known; 48: at estimated prices a row's 17th value still bounds many
    entries the optimum needs, 16K² at 0 % unshared passed 16K rows again with k = 16, 2K with 48); price_sample: rows of the price subproblem (0: no
    prices); col_k / col_min: columns among fewer than col_min rows' candidates get their col_k best rows
    relative to the rows' best values (a column pass); row_cap / margin: a row pass keeps up to row_cap entries
    within ``margin`` of violating the duals; near: known entries within ``near`` of violating are
    put into the graph, at most ``promote_cap`` per row and round (16 took 24 re-solves at 15 % unshared,
    64 takes 4); up to ``repair_max`` (or m/200) violating entries are absorbed by updating
    the duals instead of solving again; col_cap: rows a certificate column pass keeps per outlier column
    (a column with more stays unproven and its entries send the round back to a solve; 16K at 15 %
    unshared: 1024 kept 1.57M entries in the first pass and took 7.3 s, 256 took 5.2 s, neutral from
    0 to 90 % at 8K and 16K); keep_band / k_min: of a row's k candidates only those within ``keep_band``
    of its best (at estimated prices) are kept, at least ``k_min``; the first one left out bounds the rest
    of the row (None keeps all k). A row with a clean partner needs few: at 16K, 0.25 took 0 % unshared
    from 2.0 to 1.5 s (353K exact entries instead of 844K) and 50 % from 5.5 to 3.3 s (a smaller graph
    for the first sparse solve), and was neutral or better from 0 to 90 %)."""
    m, n = a64.shape[0], b64.shape[0]
    stats = SolveStats()
    rng = np.random.default_rng(seed)
    clock = time.perf_counter()
    ops = kernel_operands(a64, b64, device, candidates)
    err = ops.row_err
    stats.candidates = ops.kind
    stats.dual_search = "c++" if _exchange.available() else "numpy"
    stats.candidate_error = float(err.max())
    if ops.choice is not None:
        stats.kernel_reason = ops.choice.reason
        stats.kernel_timings = dict(ops.choice.timings)
    blk = block_rows or cz.block_rows_for(n)
    blk_c = block_rows or cz.block_rows_for(m)
    stats.timings["kernel_setup"] = time.perf_counter() - clock

    clock = time.perf_counter()
    vhat = (_sample_prices(a64, b64, ops, price_sample, price_ratio, price_dense_max, price_rounds, rng, blk_c, device)
            if price_sample else None)
    stats.price_sample = 0 if vhat is None else min(max(price_sample, m // price_ratio), m)  # about: rows sampled
    if vhat is None:
        vhat = np.zeros(n)
    stats.timings["prices"] = time.perf_counter() - clock

    # --- candidate pass ---------------------------------------------------------------------------
    clock = time.perf_counter()
    k = max(1, min(k, n))
    # the column candidates below rank the same blocks: taken in this pass, they cost no product
    first = ps.row_pass(ops, None, vhat, k + 1, blk, progress=progress, raw_top2=True,
                        col_top=col_k if col_k and k < n else 0)
    stats.timings["candidates"] = time.perf_counter() - clock
    clock = time.perf_counter()
    known = _Known(m, n)
    top_cols = first.index[:, :k]
    if keep_band is None:
        k_row = np.full(m, k)
    else:
        k_row = np.clip(np.count_nonzero(first.value[:, :k] >= first.value[:, :1] - keep_band, axis=1), min(k_min, k), k)
    kept = np.arange(k)[None, :] < k_row[:, None]
    top_keys = (np.repeat(np.arange(m, dtype=np.int64), k) * n + top_cols.ravel())[kept.ravel()]
    top_kval = (first.value[:, :k] + first.slack + first.shift[top_cols])[kept]  # ≥ kernel value
    # into the graph (exact values): the row's best candidate and those within graph_band of it; the
    # others only become known (kernel values, exact when they matter), which the row's bound needs
    in_graph = (first.value[:, :k] >= first.value[:, :1] - graph_band)[kept]
    keys_g, exact_g = _exact(top_keys[in_graph], a64, b64, stats)
    known.add(keys_g, xval=exact_g, graph=True)
    known.add(top_keys[~in_graph], kval=top_kval[~in_graph])
    known.kval[st.positions(known.keys, top_keys)] = top_kval
    # each row's best column by raw kernel value joins the graph too: the estimated prices only add
    # candidates, they can never hide a clean partner
    raw_keys = np.arange(m, dtype=np.int64) * n + first.raw_col
    raw_keys, raw_exact = _exact(st.setdiff(raw_keys, known.keys[known.graph]), a64, b64, stats)
    known.add(raw_keys, xval=raw_exact, graph=True)
    # references: cos_ij ≤ w_i + refs[ref_of_row[i]][j] for every entry (i, j) not known; rows still
    # on the candidate pass's reference also have cos_ij ≤ raw_w_i (+ 0·v) for every j but their best
    refs: list[np.ndarray] = [first.shift]
    ref_of_row = np.zeros(m, dtype=np.int64)
    # a row whose every column is known (k_row = n) has no entry left to bound
    w = np.full(m, -np.inf)
    bounded = k_row < n
    w[bounded] = first.value[np.flatnonzero(bounded), k_row[bounded]] + first.slack + err[bounded]
    raw_w = first.raw_val[:, 1] + err
    # row potentials û_i (each row's best value at the estimated prices)
    row_pot = first.value[:, 0]
    stats.timings["exact_values"] = time.perf_counter() - clock
    clock = time.perf_counter()
    if col_k and k < n:
        # columns few rows chose (over-priced by the estimate): their best rows relative to the rows'
        # best values (row_pot), ranked during the candidate pass
        chosen = known.keys[known.graph] % n if col_degree == "graph" else top_cols[kept]
        low = np.flatnonzero(np.bincount(chosen, minlength=n) < col_min)
        if len(low):
            stats.column_candidate_cols += len(low)
            keys = (first.col_index[low] * n + low[:, None])[np.isfinite(first.col_value[low])]
            keys, vals = _exact(st.setdiff(keys, known.keys), a64, b64, stats)
            known.add(keys, xval=vals, graph=True)
    stats.timings["column_candidates"] = time.perf_counter() - clock

    for key in ("solve", "duals", "certificate"):
        stats.timings[key] = 0.0
    row_col = u = v = None
    row_value = None
    duals: Duals | None = None
    need_solve = True
    for rnd in range(max_rounds):
        stats.rounds = rnd + 1
        if need_solve:
            clock = time.perf_counter()
            warm = _warm_solve(known, m, n, row_col, v, stats) if row_col is not None else None
            if warm is not None:
                row_col, incomplete = warm, False
            else:
                row_col, incomplete = _solve_graph(known, m, n, stats)
            if incomplete:
                stats.completions += 1
                _complete(known, a64, b64, ops, row_pot, max(col_k, 4), blk_c, rng, stats)
                row_col, incomplete = _solve_graph(known, m, n, stats)
                if incomplete:  # cannot happen: the completion contains a full matching
                    raise RuntimeError("matching graph has no full matching after completion")
            stats.timings["solve"] += time.perf_counter() - clock
            clock = time.perf_counter()
            found = _graph_duals(known, row_col, n, stats, refs[0] if v is None else v,
                                 lambda uu, vv: _unproven_rows(uu, vv, refs, ref_of_row, w, raw_w))
            stats.timings["duals"] += time.perf_counter() - clock
            if found is None:
                logger.warning("could not obtain duals for the sparse solution; giving up certification")
                break
            row_col, duals = found
            u, v = duals.row, duals.col
            row_value = known.xval[np.searchsorted(known.keys, np.arange(m, dtype=np.int64) * n + row_col)]
            need_solve = False

        clock = time.perf_counter()
        promoted = _certify_round(known, a64, b64, ops, u, v, refs, ref_of_row, w, stats, blk, blk_c, row_cap,
                                  margin, near, progress, raw_w=raw_w, promote_cap=promote_cap, col_cap=col_cap)
        stats.timings["certificate"] += time.perf_counter() - clock
        stats.graph_edges = int(known.graph.sum())
        stats.known_entries = len(known.keys)
        stats.fine_checked_rows = stats.row_pass_rows
        if promoted is None:  # every row proven, nothing added: certified
            return RawSolution(row_col, True, "sparse-certified", stats, u, v, row_value)
        if not len(promoted):
            continue
        # entries that violate the duals change them; few of them are repaired without a new solve
        pr, pc = promoted // n, promoted % n
        x = known.xval[np.searchsorted(known.keys, promoted)]
        violating = x > u[pr] + v[pc] + RELAX_TOL
        if not violating.any():
            continue  # the duals stay feasible on the larger graph: same assignment, same proof
        if violating.sum() > max(repair_max, m // 200):
            need_solve = True  # many changes: a (warm) solve is cheaper than chains of exchanges
            continue
        clock = time.perf_counter()
        found = _repair_duals(known, row_col, row_value, duals, st.unique(pr[violating]), n, stats, v)
        stats.timings["duals"] += time.perf_counter() - clock
        if found is None:
            need_solve = True
            continue
        row_col, duals = found
        u, v = duals.row, duals.col
        row_value = known.xval[np.searchsorted(known.keys, np.arange(m, dtype=np.int64) * n + row_col)]
    logger.log(logging.DEBUG if quiet else logging.WARNING, "matching not certified after %d rounds", max_rounds)
    # the last duals are returned too (feasible on the graph only: no proof), for price estimates
    return RawSolution(row_col, False, "sparse-uncertified", stats, u, v, row_value)


def _repair_duals(known: _Known, row_col, row_value, duals: Duals, changed_rows, n: int, stats: SolveStats,
                  v_prev: np.ndarray, attempts: int = 8):
    """Duals after entries that violate the current ones joined the graph, without a new solve:
    shortest paths continued from the current duals (only the changed rows start); improving
    exchanges, if they show up, are applied and the duals recomputed. None: solve again."""
    rows, cols, vals = known.graph_entries()
    result = exchange_duals(row_col, row_value, n, rows, cols, vals, warm=duals, warm_rows=changed_rows)
    stats.bf_iterations += result.iterations
    if isinstance(result, Duals):
        stats.repairs += 1
        return row_col, result
    better = apply_improvement(row_col, result)
    if better is None:
        return None
    stats.improvements += 1
    found = _graph_duals(known, better, n, stats, v_prev, attempts=attempts)
    if found is not None:
        stats.repairs += 1
    return found


def _graph_duals(known: _Known, row_col: np.ndarray, n: int, stats: SolveStats, start: np.ndarray | None,
                 score=None, attempts: int = 200):
    """(σ, duals) with LP duals feasible on every graph entry; applies improving exchanges if the
    solver's answer was not optimal on its own graph (rounding).

    Two candidates: cold duals (the smallest v, shortest paths from 0) and, given ``start`` (the
    previous round's duals), the smallest feasible v ≥ start (shifted to v ≥ 0, 0 on unmatched
    columns), under which rows certified earlier stay certified unless their own column's price
    rose. Neither is better in general (warm duals drift upwards over rounds on clean pairs, cold
    ones move every price), so ``score(u, v)`` (rows left unproven) picks one."""
    rows, cols, vals = known.graph_entries()
    m = len(row_col)
    for _ in range(attempts):
        pos = np.searchsorted(known.keys, np.arange(m, dtype=np.int64) * n + row_col)
        value = known.xval[pos]
        cold = exchange_duals(row_col, value, n, rows, cols, vals)
        stats.bf_iterations += cold.iterations
        if isinstance(cold, Duals):
            if start is None or score is None:
                return row_col, cold
            init = start - float(start.min())
            unmatched = np.ones(n, dtype=bool)
            unmatched[row_col] = False
            init[unmatched] = 0.0
            warm = exchange_duals(row_col, value, n, rows, cols, vals, start_col=init)
            stats.bf_iterations += warm.iterations
            if isinstance(warm, Duals) and score(warm.row, warm.col) < score(cold.row, cold.col):
                stats.warm_duals += 1
                return row_col, warm
            return row_col, cold
        better = apply_improvement(row_col, cold)
        if better is None:
            return None
        stats.improvements += 1
        row_col = better
    return None


def _worst_per_row(keys: np.ndarray, known: _Known, u: np.ndarray, v: np.ndarray, cap: int) -> np.ndarray:
    """At most ``cap`` of the keys per row: those with the largest exact c − u − v. After a poor
    first solve a row may have hundreds of violating entries; a few per row are enough to move the
    duals, the rest stay known (and are checked again each round) without bloating the graph."""
    if not len(keys):
        return keys
    keys = st.unique(keys)
    n = known.n
    rows = keys // n
    # only rows with more than cap keys are ranked (a column pass can return ~1M keys, most rows few)
    crowded = np.bincount(rows, minlength=known.m)[rows] > cap
    if not crowded.any():
        return keys
    busy = keys[crowded]
    busy_rows = rows[crowded]
    excess = known.xval[np.searchsorted(known.keys, busy)] - u[busy_rows] - v[busy - busy_rows * n]
    picked, _ = st.top_per_group(torch.from_numpy(busy_rows), torch.from_numpy(excess), cap)
    return np.sort(np.concatenate([keys[~crowded], busy[picked.numpy()]]))


def _promote(known: _Known, keys: np.ndarray, u: np.ndarray, v: np.ndarray, cap: int) -> np.ndarray:
    """Put the worst ``cap`` entries per row of ``keys`` (known entry keys) into the graph; returns the
    positions (into ``known.keys``) of those that were not in it yet."""
    promote = np.searchsorted(known.keys, _worst_per_row(keys, known, u, v, cap))
    promote = promote[~known.graph[promote]]
    known.graph[promote] = True
    return promote


def _unproven_rows(u, v, refs, ref_of_row, w, raw_w=None) -> int:
    """Rows whose reference bound does not hold under (u, v) (outlier columns not excluded)."""
    min_delta = np.array([float(np.min(v - ref)) for ref in refs])
    proven = u - w + min_delta[ref_of_row] >= 0
    if raw_w is not None:
        proven |= (ref_of_row == 0) & (u - raw_w + float(v.min()) >= 0)
    return int(np.count_nonzero(~proven))


def _certify_round(known: _Known, a64, b64, ops: KernelOperands, u, v, refs, ref_of_row, w, stats: SolveStats,
                   blk: int, blk_c: int, row_cap: int, margin: float, near: float, progress: bool,
                   col_cap: int = 256, promote_cap: int = 64,
                   raw_w: np.ndarray | None = None) -> np.ndarray | None:
    """One certificate round under duals (u, v). Returns None when every entry is proven and nothing
    was added, else the keys of the entries put into the graph (empty: only known entries grew)."""
    m, n = len(u), len(v)
    err = ops.row_err
    to_graph = []
    clock = time.perf_counter()

    # 1. known entries outside the graph (the pool): kernel value first, exact value when needed
    pool = np.flatnonzero(~known.graph)
    if len(pool):
        # one sweep over millions of pool entries each round finds the few that may be near: the exact
        # value where known, else the kernel value plus the row's bound; only those are looked at again
        keys = known.keys[pool]
        pr = keys // n
        limit = u[pr] + v[keys - pr * n] - near
        x = known.xval[pool]
        have = ~np.isnan(x)
        x[~have] = known.kval[pool[~have]] + err[pr[~have]]
        near_pool = np.flatnonzero(x > limit)
        pool, limit, have = pool[near_pool], limit[near_pool], have[near_pool]
        known.ensure_exact(pool[~have], a64, b64, stats)
        hot = pool[known.xval[pool] > limit]
        to_graph.append(known.keys[hot])

    if to_graph and len(to_graph[0]):
        # the assignment is not optimal on the known entries yet: solve again before any pass
        promote = _promote(known, to_graph[0], u, v, promote_cap)
        if len(promote):
            logger.debug("round: %d pool entries to the graph; solving again before any pass", len(promote))
            _tick(stats, "cert_pool", clock)
            return known.keys[promote]
    clock = _tick(stats, "cert_pool", clock)

    # 2. which rows hold by their reference bound; outlier columns checked directly
    gap = u - w
    max_cols = max(1, n // 4)
    outliers = _choose_outlier_columns(v, refs, ref_of_row, gap, m, n, max_cols) if m else np.empty(0, np.int64)
    if len(outliers):
        colp, cleared = check_columns(known, ops, u, v, outliers, col_cap, blk_c)
        stats.column_pass_cols += len(outliers)
        if len(colp.row):
            rows_hit, cols_hit = colp.col, outliers[colp.row]
            keys = rows_hit.astype(np.int64) * n + cols_hit
            known.add(keys, kval=colp.t + colp.slack + colp.shift[rows_hit])  # ≥ kernel value
            idx_new = st.positions(known.keys, keys)
            known.ensure_exact(idx_new, a64, b64, stats)
            x = known.xval[idx_new]
            to_graph.append(keys[x > u[rows_hit] + v[cols_hit] - near])
            # a column that kept more violating rows than the cap stays in every row's minimum and
            # would fail nearly every row: when its entries change the duals, solve again before
            # spending row passes on duals that are about to move (70 % unshared, k = 48: 12,100 rows)
            stuck = ~cleared[colp.row] & (x > u[rows_hit] + v[cols_hit] + RELAX_TOL)
            if stuck.any():
                promote = _promote(known, to_graph[-1], u, v, promote_cap)
                if len(promote):
                    logger.debug("round: %d outlier-column entries to the graph; solving again before row passes",
                                 len(promote))
                    _tick(stats, "cert_column_pass", clock)
                    return known.keys[promote]
        stats.outlier_cols_cleared += int(cleared.sum())
        logger.debug("  outlier columns: %d chosen, %d cleared, %d entries", len(outliers), int(cleared.sum()), len(colp.row))
        outliers = outliers[cleared]
    clock = _tick(stats, "cert_column_pass", clock)
    inside = np.ones(n, dtype=bool)
    inside[outliers] = False
    min_delta = np.array([float(np.min(v[inside] - ref[inside])) if inside.any() else 0.0 for ref in refs])
    proven = gap + min_delta[ref_of_row] >= 0
    if raw_w is not None:
        # rows on the candidate pass's reference: also proven by their raw second-best bound (v ≥ 0)
        first_ref = ref_of_row == 0
        proven |= first_ref & (u - raw_w + float(v.min()) >= 0)
    todo = np.flatnonzero(~proven)
    if logger.isEnabledFor(logging.DEBUG) and len(refs) == 1:
        logger.debug("  first reference: gap q05/25/50/75/95 %s, v - V0 q0/01/05/50/95 %s, min_delta %s, outliers %d",
                     np.round(np.quantile(gap, [.05, .25, .5, .75, .95]), 3),
                     np.round(np.quantile(v - refs[0], [0, .01, .05, .5, .95]), 3), np.round(min_delta, 3), len(outliers))
    if logger.isEnabledFor(logging.DEBUG) and len(refs) > 1:
        last = ref_of_row == len(refs) - 1
        dv = v - refs[-1]
        logger.debug("  rows on the last reference: %d, gap q05/50/95 %s, v - V_last q0/01/05/50/95 %s, min_delta %s",
                     int(last.sum()), np.round(np.quantile(gap[last], [.05, .5, .95]), 3) if last.any() else None,
                     np.round(np.quantile(dv, [0, .01, .05, .5, .95]), 3), np.round(min_delta, 3))

    # 3. row passes under the current duals: entries within ``margin`` of violating become known
    if len(todo):
        ptr, idx = known.csr()
        # score ≥ cos − u − v where score = t + slack + err_i − u_i + (V_j − v_j), t = kernel − V_j
        v_excess = 2 * ops.scale if ops.integer else 2 * U32 * (1.0 + float(np.abs(v).max()))
        slack_est = 0.0 if ops.integer else 2 * U32 * (3.0 + float(err.max()) + 2 * float(np.abs(v).max()) + float(np.abs(u).max()))
        thr = u[todo] - err[todo] - margin - v_excess - slack_est
        clock = _tick(stats, "cert_bounds", clock)
        res = ps.threshold_pass(ops, todo, v, thr, row_cap, blk, ptr, idx, progress=progress)
        clock = _tick(stats, "cert_row_pass", clock)
        stats.row_pass_rows += len(todo)
        excess = max(0.0, float(np.max(res.shift - v)))
        refs.append(res.shift)
        ref_of_row[todo] = len(refs) - 1
        w[todo] = res.ref + res.slack + err[todo]
        if len(res.row):
            rows_t = todo[res.row]
            cols_t = res.col
            score = res.t + res.slack + excess + err[rows_t] - u[rows_t]
            keys = rows_t.astype(np.int64) * n + cols_t
            known.add(keys, kval=res.t + res.slack + res.shift[cols_t])  # ≥ kernel value
            idx_new = st.positions(known.keys, keys)
            maybe = score > -near
            clock = _tick(stats, "cert_bookkeeping", clock)
            known.ensure_exact(idx_new[maybe], a64, b64, stats)
            clock = _tick(stats, "cert_exact", clock)
            x = known.xval[idx_new]
            to_graph.append(keys[maybe & (x > u[rows_t] + v[cols_t] - near)])
    promote = _promote(known, np.concatenate(to_graph) if to_graph else np.empty(0, dtype=np.int64), u, v, promote_cap)
    if logger.isEnabledFor(logging.DEBUG):
        xr = known.keys[promote] // n
        viol = int(np.sum(known.xval[promote] > u[xr] + v[known.keys[promote] % n] + 1e-12))
        logger.debug("round: value %.6f, %d outlier columns, %d rows passed, %d to the graph (%d violating), "
                     "graph %d, known %d", float(np.sum(u) + np.sum(v)), len(outliers), len(todo), len(promote), viol,
                     int(known.graph.sum()), len(known.keys))
    # rows whose new reference does not hold yet (more near entries than the cap) need another pass
    if len(todo):
        still = todo[u[todo] - w[todo] + float(np.min(v - refs[-1])) < 0]
    else:
        still = todo
    _tick(stats, "cert_bookkeeping", clock)
    if len(promote) == 0 and len(still) == 0:
        return None
    return known.keys[promote]
