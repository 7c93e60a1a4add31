"""Exact maximum-weight matching of dictionary rows without the full cosine matrix.

Route (rows = the smaller dictionary; every live row is matched):
1. One blocked candidate pass (int8 codes with exact int32 sums, or fp32) keeps each row's top-(k+1)
   candidate values and each column's maximum; every candidate value is within a rigorous per-row
   bound of the exact cosine.
2. Mutual best pairs beating the row's runner-up by ``fix_margin`` are fixed tentatively; the other
   rows × unused columns form the residual block, computed exactly in fp64 and solved on its top
   entries with sparse LAPJV (repaired by pricing when that guess is proven wrong, densely as a
   last resort).
3. Bellman-Ford on the exchange graph of all exactly known entries gives LP duals (u, v ≥ 0), or an
   improving cycle/path; fixed pairs on it are released and step 2 repeats.
4. Certificate over every other entry: the duals are lifted along fixed pairs (still optimal), then
   row i is proven when u_i + min v over the columns it does not know ≥ its (k+1)-th candidate
   value + the candidate error bound. Other rows get their full row recomputed in fp32 blocks and every
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

from benchmark.metrics.matching import _cosine as cz
from benchmark.metrics.matching._duals import Duals, exchange_duals

logger = logging.getLogger(__name__)


@dataclass
class SolveStats:
    rounds: int = 0
    released_pairs: int = 0
    residual_rows: int = 0
    known_entries: int = 0
    fine_checked_rows: int = 0
    bf_iterations: int = 0
    residual_retries: int = 0  # residual solves redone after a proven-suboptimal guess
    candidates: str = ""  # precision of the candidate pass: "int8" or "fp32"
    candidate_error: float = 0.0  # largest rigorous bound on |candidate value − cosine|
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


def solve_dense(a64: torch.Tensor, b64: torch.Tensor) -> RawSolution:
    costs = cz.dense_cosines64(a64, b64)
    rows, cols = linear_sum_assignment(costs, maximize=True)
    row_col = np.empty(a64.shape[0], dtype=np.int64)
    row_col[rows] = cols
    row_value = np.empty(a64.shape[0])
    row_value[rows] = costs[rows, cols]
    return RawSolution(row_col, True, "dense", SolveStats(), row_value=row_value)


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
    candidates: str = "auto",
) -> RawSolution:
    """Exact assignment of all rows of ``a64`` (live unit rows, m ≤ n) to rows of ``b64``."""
    m, n = a64.shape[0], b64.shape[0]
    stats = SolveStats()
    clock = time.perf_counter()
    ops = cz.candidate_operands(a64, b64, device, candidates)
    stats.candidates = ops.kind
    # fine checks always run in fp32 (tight bound); with int8 candidates the fp32 copies are made
    # only if some row needs one
    fp32_rows: list[torch.Tensor] = [ops.a, ops.b] if ops.kind == "fp32" else []
    err = cz.fp32_cosine_error_bound(a64.shape[1])
    # fp32 comparisons of scores against fp64 duals round once more (|u|,|v| ≤ 4)
    err_cmp = err + 4e-6
    blk = block_rows or cz.block_rows_for(n)
    # the k largest entries of each row become known; the (k+1)-th bounds the rest of the row
    cand = cz.candidate_pass(ops, k, blk, progress)
    stats.candidate_error = float(ops.row_err.max())
    row_err = ops.row_err
    del ops
    stats.timings["candidates"] = time.perf_counter() - clock
    k = min(k, n)
    if k < n:
        row_bound = cand.top_vals[:, k] + row_err
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
    fixed = cand.top_vals[:, 0] >= cand.col_max[best_col]
    if cand.top_vals.shape[1] > 1:
        fixed &= cand.top_vals[:, 0] - cand.top_vals[:, 1] >= fix_margin
    claimed, first = np.unique(best_col[fixed], return_index=True)
    keep = np.zeros(m, dtype=bool)
    keep[np.flatnonzero(fixed)[first]] = True
    fixed = keep
    fixed_col = np.where(fixed, best_col, -1)
    warm: Duals | None = None
    warm_rows = np.empty(0, dtype=np.int64)

    row_col = None
    residual_key = None
    # how the residual block is solved: "sparse" (top-k guess), then "priced" (guess repaired by
    # pricing) when the guess was proven suboptimal, then "dense" if even that failed
    residual_mode = "sparse"
    resolve = False  # re-solve the same residual block in the next round
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
        if key != residual_key or resolve:
            if key != residual_key:
                residual_key = key
                used = np.zeros(n, dtype=bool)
                used[fixed_col[fixed]] = True
                res_vals = _residual_block(a64, b64, np.flatnonzero(~fixed), np.flatnonzero(~used),
                                           res_rows, res_cols, res_vals)
                res_rows, res_cols = np.flatnonzero(~fixed), np.flatnonzero(~used)
            resolve = False
            row_col = fixed_col.copy()
            # fixed rows are matched to their top-1 column, whose exact value is known
            row_value = np.where(fixed, top64[:, 0], np.nan)
            if len(res_rows):
                r_loc, c_loc, top_r, top_c = _solve_residual(res_vals, residual_mode)
                row_col[res_rows[r_loc]] = res_cols[c_loc]
                row_value[res_rows[r_loc]] = res_vals[r_loc, c_loc]
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
            if not len(release) and residual_mode != "dense":
                # the residual solve missed an entry of the residual block: repair it, or solve densely
                residual_mode = "priced" if residual_mode == "sparse" else "dense"
                resolve = True
                stats.residual_retries += 1
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
            if not fp32_rows:
                fp32_rows = [a64.to(device=device, dtype=torch.float32), b64.to(device=device, dtype=torch.float32)]
            r_idx, c_idx, score = cz.worst_unknown_entries(
                *fp32_rows, todo, u, v, known.cols_of(todo), residual_row, residual_mask,
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
            return RawSolution(row_col, True, "sparse-certified", stats, u, v, row_value)
    logger.warning("matching not certified after %d rounds", max_rounds)
    return RawSolution(row_col, False, "sparse-uncertified", stats, row_value=row_value)


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


def _residual_block(
    a64: torch.Tensor, b64: torch.Tensor, rows: np.ndarray, cols: np.ndarray,
    old_rows: np.ndarray | None, old_cols: np.ndarray | None, old_vals: np.ndarray | None,
) -> np.ndarray:
    """Exact (fp64) cosines of rows × cols (sorted index arrays). Released fixed pairs only grow the
    block, so the entries of the previous block (old_*) are copied and only new rows/columns computed."""
    rows_t, cols_t = torch.from_numpy(rows), torch.from_numpy(cols)
    if not len(rows):
        return np.empty((0, len(cols)))
    reuse = (old_vals is not None and len(old_rows) > 0 and bool(np.isin(old_rows, rows).all())
             and bool(np.isin(old_cols, cols).all()))
    if not reuse:
        return cz.dense_cosines64(a64[rows_t], b64[cols_t])
    out = np.empty((len(rows), len(cols)))
    at_r, at_c = np.searchsorted(rows, old_rows), np.searchsorted(cols, old_cols)
    new_r = np.setdiff1d(np.arange(len(rows)), at_r)
    new_c = np.setdiff1d(np.arange(len(cols)), at_c)
    out[np.ix_(at_r, at_c)] = old_vals
    if len(new_r):
        out[new_r] = cz.dense_cosines64(a64[torch.from_numpy(rows[new_r])], b64[cols_t])
    if len(new_c):
        out[np.ix_(at_r, new_c)] = cz.dense_cosines64(a64[torch.from_numpy(old_rows)],
                                                      b64[torch.from_numpy(cols[new_c])])
    return out


def _solve_residual(res_vals: np.ndarray, mode: str, k: int = 32, max_pricing: int = 6) -> tuple[np.ndarray, ...]:
    """Maximum-weight assignment of the residual block (rows ≤ columns), plus the sparse entries used.

    Large blocks are solved on their row- and column-wise top-k entries with scipy's sparse LAPJV
    (mode "sparse": only a guess; the caller's exchange-graph duals over the whole block check it).
    Mode "priced" then repairs the guess: LP duals of the sparse solution on its graph are checked
    against every entry of the block, violated entries are added and the graph re-solved, until no
    entry violates (optimal on the whole block) or ``max_pricing`` rounds pass. Mode "dense", tiny
    blocks, and graphs without a full matching use scipy's dense solver.
    """
    r, c = res_vals.shape
    none = np.empty(0, dtype=np.int64)
    if mode == "dense" or r * c <= 512 * 512 or min(r, c) <= k:
        return (*linear_sum_assignment(res_vals, maximize=True), none, none)
    vals_t = torch.from_numpy(res_vals)
    row_top = torch.topk(vals_t, k, dim=1).indices.numpy()
    col_top = torch.topk(vals_t, k, dim=0).indices.numpy()
    rows = np.concatenate([np.repeat(np.arange(r), k), col_top.ravel()])
    cols = np.concatenate([row_top.ravel(), np.tile(np.arange(c), k)])
    keys = np.unique(rows.astype(np.int64) * c + cols)
    chunk = max(1, (64 * 2**20) // (8 * c))
    for _ in range(max_pricing):
        rows, cols = keys // c, keys % c
        # weights shifted to [1, 3]: positive, so no stored entry is an explicit zero
        graph = sp.csr_matrix((2.0 - res_vals[rows, cols], (rows, cols)), shape=(r, c))
        try:
            r_loc, c_loc = min_weight_full_bipartite_matching(graph)
        except ValueError:  # no full matching inside the graph
            break
        if mode == "sparse":
            return r_loc, c_loc, rows, cols
        row_col = np.empty(r, dtype=np.int64)
        row_col[r_loc] = c_loc
        duals = exchange_duals(row_col, res_vals[np.arange(r), row_col], c, rows, cols, res_vals[rows, cols])
        if not isinstance(duals, Duals):  # not optimal on its own graph (rounding): let the caller decide
            return r_loc, c_loc, rows, cols
        new_keys = []
        for start in range(0, r, chunk):
            slack = res_vals[start : start + chunk] - duals.row[start : start + chunk, None]
            slack -= duals.col[None, :]
            rr, cc = np.nonzero(slack > 1e-12)
            new_keys.append((rr + start).astype(np.int64) * c + cc)
        new_keys = np.concatenate(new_keys)
        logger.debug("residual pricing: %d violated entries", len(new_keys))
        grown = np.union1d(keys, new_keys)
        if not len(new_keys) or len(grown) == len(keys):  # optimal on the block (up to rounding)
            return r_loc, c_loc, rows, cols
        keys = grown
    return (*linear_sum_assignment(res_vals, maximize=True), keys // c, keys % c)
