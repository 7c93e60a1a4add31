"""Exact maximum-weight matching of dictionary rows without the full cosine matrix.

Route (rows = the smaller dictionary; every live row is matched):
1. One blocked fp32 pass keeps each row's top-(k+1) cosines and each column's maximum.
2. Mutual best pairs beating the row's runner-up by ``fix_margin`` are fixed tentatively; the other
   rows × unused columns form the residual block, computed exactly in fp64 and solved on its top
   entries with sparse LAPJV (densely when that guess is proven wrong).
3. Bellman-Ford on the exchange graph of all exactly known entries gives LP duals (u, v ≥ 0), or an
   improving cycle/path; fixed pairs on it are released and step 2 repeats.
4. Certificate over every other entry: the duals are lifted along fixed pairs (still optimal), then
   row i is proven when u_i + min v over the columns it does not know ≥ its (k+1)-th fp32 cosine
   + the fp32 error bound. Other rows get their full row recomputed in fp32 blocks and every
   possibly violated entry is added with its exact fp64 value, then back to step 3. Weak duality
   turns a clean certificate into a proof: no assignment of the dense problem beats this one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from benchmark.matching import _cosine as cz
from benchmark.matching._duals import Duals, exchange_duals

logger = logging.getLogger(__name__)


@dataclass
class SolveStats:
    rounds: int = 0
    released_pairs: int = 0
    residual_rows: int = 0
    known_entries: int = 0
    fine_checked_rows: int = 0
    bf_iterations: int = 0
    timings: dict = field(default_factory=dict)


@dataclass
class RawSolution:
    row_col: np.ndarray  # σ for the live rows (indices into the columns)
    certified: bool
    method: str
    stats: SolveStats
    row_dual: np.ndarray | None = None
    col_dual: np.ndarray | None = None


def solve_dense(a64: torch.Tensor, b64: torch.Tensor) -> RawSolution:
    costs = cz.dense_cosines64(a64, b64)
    rows, cols = linear_sum_assignment(costs, maximize=True)
    row_col = np.empty(a64.shape[0], dtype=np.int64)
    row_col[rows] = cols
    return RawSolution(row_col, True, "dense", SolveStats())


class _KnownEntries:
    """Exactly known (fp64) entries outside the residual block, deduplicated, grouped per row."""

    def __init__(self, m: int, n: int):
        self.m, self.n = m, n
        self.keys = np.empty(0, dtype=np.int64)
        self.vals = np.empty(0)

    def add(self, rows: np.ndarray, cols: np.ndarray, a64: torch.Tensor, b64: torch.Tensor,
            vals: np.ndarray | None = None) -> np.ndarray:
        """Add entries (exact values computed unless given); returns the rows that gained entries."""
        keys = rows.astype(np.int64) * self.n + cols
        keys, first = np.unique(keys, return_index=True)
        new = ~np.isin(keys, self.keys, assume_unique=True)
        keys = keys[new]
        if not len(keys):
            return np.empty(0, dtype=np.int64)
        if vals is None:
            vals = cz.edge_cosines64(a64, b64, keys // self.n, keys % self.n)
        else:
            vals = vals[first][new]
        merged = np.concatenate([self.keys, keys])
        order = np.argsort(merged, kind="stable")
        self.keys = merged[order]
        self.vals = np.concatenate([self.vals, vals])[order]
        return np.unique(keys // self.n)

    @property
    def rows(self) -> np.ndarray:
        return self.keys // self.n

    @property
    def cols(self) -> np.ndarray:
        return self.keys % self.n

    def cols_of(self, rows: np.ndarray) -> list[np.ndarray]:
        starts = np.searchsorted(self.keys, rows.astype(np.int64) * self.n)
        ends = np.searchsorted(self.keys, (rows.astype(np.int64) + 1) * self.n)
        return [self.keys[s:e] % self.n for s, e in zip(starts, ends)]


def solve_certified(
    a64: torch.Tensor,
    b64: torch.Tensor,
    *,
    device: torch.device,
    k: int,
    max_rounds: int,
    block_rows: int | None,
    near_margin: float,
    add_per_row: int,
    fix_margin: float,
    progress: bool,
) -> RawSolution:
    """Exact assignment of all rows of ``a64`` (live unit rows, m ≤ n) to rows of ``b64``."""
    m, n = a64.shape[0], b64.shape[0]
    stats = SolveStats()
    clock = time.perf_counter()
    a32 = a64.to(device=device, dtype=torch.float32)
    b32 = b64.to(device=device, dtype=torch.float32)
    err = cz.fp32_cosine_error_bound(a64.shape[1])
    # fp32 comparisons of scores against fp64 duals round once more (|u|,|v| ≤ 4)
    err_cmp = err + 4e-6
    blk = block_rows or cz.block_rows_for(n)
    # the k largest entries of each row become known; the (k+1)-th bounds the rest of the row
    cand = cz.candidate_pass(a32, b32, k + 1, blk, progress)
    stats.timings["candidates"] = time.perf_counter() - clock
    k = min(k, n)
    if k < n:
        row_bound = cand.top_vals32[:, k].astype(np.float64) + err
    else:
        row_bound = np.full(m, -np.inf)

    clock = time.perf_counter()
    known = _KnownEntries(m, n)
    top_cols = np.ascontiguousarray(cand.top_cols[:, :k])
    top64 = cz.row_topk_cosines64(a64, b64, top_cols)
    known.add(np.repeat(np.arange(m), k), top_cols.ravel(), a64, b64, top64.ravel())
    stats.timings["exact_values"] = time.perf_counter() - clock

    # Tentatively fix mutual best pairs that beat the row's runner-up by fix_margin (one row per
    # column on exact ties); any wrong guess shows up as a negative cycle and is released.
    best_col = cand.top_cols[:, 0]
    fixed = cand.top_vals32[:, 0] >= cand.col_max32[best_col]
    if cand.top_cols.shape[1] > 1:
        fixed &= cand.top_vals32[:, 0] - cand.top_vals32[:, 1] >= fix_margin
    claimed, first = np.unique(best_col[fixed], return_index=True)
    keep = np.zeros(m, dtype=bool)
    keep[np.flatnonzero(fixed)[first]] = True
    fixed = keep
    fixed_col = np.where(fixed, best_col, -1)
    warm: Duals | None = None
    warm_rows = np.empty(0, dtype=np.int64)

    row_col = None
    residual_key = None
    residual_dense = False  # solve the residual block densely (after a sparse solve proved suboptimal)
    res_rows = res_cols = res_vals = None
    # per-row memory of a fine check: u at that time, round, slack δ ≥ 0 left on the unknown entries
    checked_u = np.full(m, np.nan)
    checked_round = np.full(m, -1, dtype=np.int64)
    checked_slack = np.full(m, -np.inf)
    col_dual_history: list[np.ndarray] = []
    duals: Duals | None = None
    for rnd in range(max_rounds):
        stats.rounds = rnd + 1
        clock = time.perf_counter()
        key = fixed.tobytes()
        if key != residual_key:
            residual_key = key
            res_rows = np.flatnonzero(~fixed)
            used = np.zeros(n, dtype=bool)
            used[fixed_col[fixed]] = True
            res_cols = np.flatnonzero(~used)
            row_col = fixed_col.copy()
            # fixed rows are matched to their top-1 column, whose exact value is known
            row_value = np.where(fixed, top64[:, 0], np.nan)
            if len(res_rows):
                res_vals = cz.dense_cosines64(a64[torch.from_numpy(res_rows)], b64[torch.from_numpy(res_cols)])
                r_loc, c_loc, top_r, top_c = _solve_residual(res_vals, residual_dense)
                row_col[res_rows[r_loc]] = res_cols[c_loc]
                row_value[res_rows[r_loc]] = res_vals[r_loc, c_loc]
            else:
                res_vals = np.empty((0, len(res_cols)))
            stats.residual_rows = len(res_rows)
            warm = None
            if len(res_rows) and len(top_r):
                # cheap pre-pass on the block's top entries; the full block then only corrects it
                pre = exchange_duals(
                    row_col, row_value, n,
                    np.concatenate([known.rows, res_rows[top_r]]), np.concatenate([known.cols, res_cols[top_c]]),
                    np.concatenate([known.vals, res_vals[top_r, top_c]]),
                )
                if isinstance(pre, Duals):
                    warm, warm_rows = pre, res_rows
        stats.timings["residual"] = stats.timings.get("residual", 0.0) + time.perf_counter() - clock

        clock = time.perf_counter()
        result = exchange_duals(
            row_col, row_value, n, known.rows, known.cols, known.vals, res_rows, res_cols, res_vals,
            warm=warm, warm_rows=warm_rows,
        )
        stats.timings["duals"] = stats.timings.get("duals", 0.0) + time.perf_counter() - clock
        stats.bf_iterations += result.iterations
        if not isinstance(result, Duals):
            col_to_row = np.full(n, -1, dtype=np.int64)
            col_to_row[row_col] = np.arange(m)
            on_cycle = col_to_row[result.columns]
            release = on_cycle[(on_cycle >= 0)]
            release = release[fixed[release]]
            if not len(release) and not residual_dense:
                # the sparse residual solve missed an entry of the residual block: solve it densely
                residual_dense, residual_key = True, None
                continue
            if not len(release):  # cannot happen in exact arithmetic: the dense residual solve is exact
                logger.warning("negative cycle without fixed pairs; releasing every fixed pair")
                release = np.flatnonzero(fixed)
            fixed[release] = False
            fixed_col[release] = -1
            stats.released_pairs += len(release)
            logger.debug("round %d: released %d fixed pairs on negative cycles", rnd, len(release))
            continue
        duals = warm = result
        clock = time.perf_counter()
        u, v = _lift_fixed_pairs(duals.row, duals.col, row_col, fixed, row_bound, known)
        col_dual_history.append(v)
        # Row i is proven when u_i + min v over the columns it does not know ≥ its row bound.
        proven = u + v.min() >= row_bound
        outside = np.ones(n, dtype=bool)
        outside[res_cols] = False
        if outside.any():
            proven |= ~fixed & (u + v[outside].min() >= row_bound)
        else:
            proven |= ~fixed
        had = checked_round >= 0
        if had.any():
            # an earlier fine check left slack δ_i on every unknown entry of row i under the duals of
            # its round; it still holds when u_i + v_j did not drop by more than δ_i anywhere
            drop = np.full(m, np.inf)
            for r_id in np.unique(checked_round[had]):
                rows_r = np.flatnonzero(checked_round == r_id)
                min_dv = float(np.min(v - col_dual_history[r_id]))
                drop[rows_r] = (u[rows_r] - checked_u[rows_r]) + min_dv
            proven |= had & (drop >= -checked_slack)
        todo = np.flatnonzero(~proven)
        stats.fine_checked_rows += len(todo)
        added = 0
        warm_rows = np.empty(0, dtype=np.int64)
        if len(todo):
            residual_row = ~fixed
            residual_mask = np.zeros(n, dtype=bool)
            residual_mask[res_cols] = True
            r_idx, c_idx, score = cz.worst_unknown_entries(
                a32, b32, todo, u, v, known.cols_of(todo), residual_row, residual_mask,
                err_cmp, add_per_row, max(64, blk // 2),
            )
            take = score > -near_margin
            warm_rows = known.add(r_idx[take], c_idx[take], a64, b64)
            added = int(take.sum())
            # slack left on the rest: −(largest score not taken), or −(smallest taken) if all were taken
            per_row = score.reshape(len(todo), -1)
            took = take.reshape(len(todo), -1)
            left = np.where(took, -np.inf, per_row).max(axis=1)
            all_taken = took.all(axis=1)
            left = np.where(all_taken, per_row.min(axis=1), left)
            checked_u[todo] = u[todo]
            checked_round[todo] = len(col_dual_history) - 1
            checked_slack[todo] = -left
        stats.timings["certificate"] = stats.timings.get("certificate", 0.0) + time.perf_counter() - clock
        stats.known_entries = len(known.keys)
        logger.debug("round %d: %d rows fine-checked, %d entries added", rnd, len(todo), added)
        if len(todo) == 0 or (added == 0 and bool(np.all(checked_slack[todo] >= 0))):
            return RawSolution(row_col, True, "sparse-certified", stats, u, v)
    logger.warning("matching not certified after %d rounds", max_rounds)
    return RawSolution(row_col, False, "sparse-uncertified", stats)


def _lift_fixed_pairs(
    u: np.ndarray, v: np.ndarray, row_col: np.ndarray, fixed: np.ndarray, row_bound: np.ndarray,
    known: _KnownEntries,
) -> tuple[np.ndarray, np.ndarray]:
    """Move dual value from each fixed row to its column, as far as stays provably feasible.

    Shortest-path duals give every column its smallest price, which leaves residual rows (whose
    unknown entries lie mostly in fixed columns) unprovable. For a fixed pair (i, σ(i)),
    u_i −= δ_i, v_σ(i) += δ_i keeps complementary slackness and the objective; it keeps every known
    constraint when δ_i ≤ row i's smallest known reduced cost, and row i's own bound test when
    δ_i ≤ u_i + min v − bound_i (v only grows). Both limits are applied.
    """
    red = u[known.rows] + v[known.cols] - known.vals
    red[known.cols == row_col[known.rows]] = np.inf
    row_slack = np.full(len(u), np.inf)
    np.minimum.at(row_slack, known.rows, red)
    lift = np.minimum(np.minimum(row_slack, u + v.min() - row_bound), 2.0)
    lift = np.where(fixed, np.maximum(lift - 1e-12, 0.0), 0.0)
    u = u - lift
    v = v.copy()
    v[row_col[fixed]] += lift[fixed]
    return u, v


def _solve_residual(res_vals: np.ndarray, dense: bool, k: int = 32) -> tuple[np.ndarray, ...]:
    """Maximum-weight assignment of the residual block (rows ≤ columns), plus its top-k entries.

    Large blocks are first solved on their row- and column-wise top-k entries with scipy's sparse
    LAPJV; that is only a guess (the exchange-graph duals over the whole block check it), and a dense
    solve is used when it fails or was proven suboptimal (``dense``).
    """
    r, c = res_vals.shape
    none = np.empty(0, dtype=np.int64)
    if dense or r * c <= 512 * 512 or min(r, c) <= k:
        return (*linear_sum_assignment(res_vals, maximize=True), none, none)
    vals_t = torch.from_numpy(res_vals)
    row_top = torch.topk(vals_t, k, dim=1).indices.numpy()
    col_top = torch.topk(vals_t, k, dim=0).indices.numpy()
    rows = np.concatenate([np.repeat(np.arange(r), k), col_top.ravel()])
    cols = np.concatenate([row_top.ravel(), np.tile(np.arange(c), k)])
    keys = np.unique(rows.astype(np.int64) * c + cols)
    rows, cols = keys // c, keys % c
    # weights shifted to [1, 3]: positive, so no stored entry is an explicit zero
    graph = sp.csr_matrix((2.0 - res_vals[rows, cols], (rows, cols)), shape=(r, c))
    try:
        return (*min_weight_full_bipartite_matching(graph), rows, cols)
    except ValueError:  # no full matching inside the top-k graph
        return (*linear_sum_assignment(res_vals, maximize=True), rows, cols)
