"""Optimal LP duals for a given assignment, by shortest paths on the exchange graph.

Problem (rows are the smaller side, every row matched):
    max Σ c[i, σ(i)]   dual:  min Σ u_i + Σ v_j   s.t.  u_i + v_j ≥ c_ij,  v_j ≥ 0.
With u_i = c[i, σ(i)] − v[σ(i)], the constraints become difference constraints on columns,
    v[σ(i)] − v[j] ≤ c[i, σ(i)] − c[i, j],
i.e. an edge σ(i) → j of weight c[i, σ(i)] − c[i, j] for every known entry (i, j). Then
y = shortest distances from a virtual source joined to every column with weight 0 and v = −y
satisfy every constraint, v ≥ 0, and v = 0 on unmatched columns, exactly when the assignment is optimal on the known entries.
Otherwise there is a negative cycle, or a negative path into an unmatched column (an improving
exchange); it is reported, not hidden.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from benchmark.metrics.matching import _exchange
from benchmark.metrics.matching import _sets as st

logger = logging.getLogger(__name__)

# A relaxation must improve a distance by more than this to count (ties never loop).
RELAX_TOL = 1e-12


@dataclass
class Duals:
    row: np.ndarray  # u, fp64 [m]
    col: np.ndarray  # v ≥ 0, fp64 [n]
    iterations: int
    pred: np.ndarray  # shortest-path predecessor row of each column (−1: none)


@dataclass
class NegativeCycle:
    """The assignment is not optimal on the known entries: an improving cycle or path exists."""

    columns: np.ndarray  # columns on the negative cycles / improving paths found
    iterations: int
    pred: np.ndarray | None = None  # shortest-path predecessor row of each column when it was found
    path_ends: np.ndarray | None = None  # unmatched columns reached at negative distance (improving paths)


def _cycle_columns(pred_row: np.ndarray, row_col: np.ndarray) -> np.ndarray:
    """Columns lying on cycles of the functional graph j → σ(pred_row[j]) (−1: no predecessor)."""
    n = len(pred_row)
    step = np.where(pred_row >= 0, row_col[np.maximum(pred_row, 0)], -1)
    jump = step.copy()
    hops = 1
    while hops < n + 1:
        ok = jump >= 0
        nxt = np.full(n, -1, dtype=np.int64)
        nxt[ok] = jump[jump[ok]]
        jump = nxt
        hops *= 2
    return st.unique(jump[jump >= 0])


def exchange_duals(
    row_col: np.ndarray,
    row_value: np.ndarray,
    n_cols: int,
    edge_rows: np.ndarray,
    edge_cols: np.ndarray,
    edge_vals: np.ndarray,
    dense_rows: np.ndarray | None = None,
    dense_cols: np.ndarray | None = None,
    dense_vals: np.ndarray | None = None,
    check_every: int = 16,
    warm: "Duals | None" = None,
    warm_rows: np.ndarray | None = None,
    start_col: np.ndarray | None = None,
    native: bool = True,
) -> Duals | NegativeCycle:
    """Bellman-Ford (vectorised, frontier-driven) on the exchange graph of an assignment.

    row_col[i] = σ(i), row_value[i] = c[i, σ(i)] (fp64). Known entries: the sparse triples
    (edge_rows, edge_cols, edge_vals) plus an optional dense block dense_vals[len(dense_rows),
    len(dense_cols)]. Returns duals whose constraints hold on every known entry up to ~1e-12, or the
    columns of a negative cycle (the assignment is not optimal on the known entries).
    ``warm``: the result of an earlier call with the same assignment and fewer known entries; only
    ``warm_rows`` (rows that gained entries) then start the search.
    ``start_col``: column duals to start from (≥ 0, 0 on unmatched columns; any assignment): the
    result is then the smallest feasible v ≥ start_col, so duals move only where the constraints
    force them (certificates made under earlier duals stay valid where nothing changed). It can
    fail (an unmatched column forced above 0) where cold duals would not: retry without it.
    ``native``: search with the C++ queue (:mod:`._exchange`) when it is available and there is no dense
    block (same distances; a negative cycle is reported from its predecessors when it shows up, which
    may be another cycle than the numpy rounds would meet first).
    """
    m = len(row_col)
    if warm is not None:
        y, pred = -warm.col, warm.pred.copy()
    elif start_col is not None:
        y = -np.asarray(start_col, dtype=np.float64).copy()
        pred = np.full(n_cols, -1, dtype=np.int64)
    else:
        y = np.zeros(n_cols)
        pred = np.full(n_cols, -1, dtype=np.int64)
    col_to_row = np.full(n_cols, -1, dtype=np.int64)
    col_to_row[row_col] = np.arange(m)
    is_improved = np.zeros(n_cols, dtype=bool)
    order = st.stable_order(edge_rows, m)
    e_rows, e_cols, e_vals = edge_rows[order], edge_cols[order], edge_vals[order]
    row_start = np.searchsorted(e_rows, np.arange(m + 1))
    has_dense = dense_rows is not None and len(dense_rows) > 0 and len(dense_cols) > 0
    if has_dense:
        dense_pos = np.full(m, -1, dtype=np.int64)
        dense_pos[dense_rows] = np.arange(len(dense_rows))
    changed_rows = np.arange(m) if warm is None else st.unique(warm_rows)
    it = 0
    if native and not has_dense:
        found = _exchange.shortest_paths(row_col, row_value, row_start, e_cols, e_vals, y, pred, changed_rows,
                                         RELAX_TOL, check_every)
        if found is not None:
            final, it = found
            if not final:
                return NegativeCycle(_cycle_columns(pred, row_col), it, pred)
            changed_rows = changed_rows[:0]  # done: the numpy rounds below have nothing to do
    while len(changed_rows):
        it += 1
        pot = y[row_col] + row_value  # p_i; candidate distance of j through row i: p_i − c_ij
        # sparse entries of the changed rows
        lo, hi = row_start[changed_rows], row_start[changed_rows + 1]
        counts = hi - lo
        sel = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        cand_cols = e_cols[sel]
        cand = pot[e_rows[sel]] - e_vals[sel]
        best = y.copy()
        np.minimum.at(best, cand_cols, cand)
        dense_best = None
        if has_dense:
            local = dense_pos[changed_rows]
            local = local[local >= 0]
            if len(local):
                through = pot[dense_rows[local]][:, None] - dense_vals[local]
                dense_best = through.min(axis=0)
                best[dense_cols] = np.minimum(best[dense_cols], dense_best)
        improved = np.flatnonzero(best < y - RELAX_TOL)
        if not len(improved):
            break
        y[improved] = best[improved]
        is_improved[improved] = True
        # predecessors of improved columns (a row achieving the minimum; any one of them on ties)
        hit = best[cand_cols] == cand
        hit &= is_improved[cand_cols]
        pred[cand_cols[hit]] = e_rows[sel][hit]
        if dense_best is not None:
            # argmin only for the columns that improved through the dense block (few)
            from_dense = np.flatnonzero((dense_best <= best[dense_cols]) & is_improved[dense_cols])
            if len(from_dense):
                arg = through[:, from_dense].argmin(axis=0)
                pred[dense_cols[from_dense]] = dense_rows[local[arg]]
        is_improved[improved] = False
        changed_rows = col_to_row[improved]  # distinct: σ is one-to-one, improved columns are distinct
        changed_rows = np.sort(changed_rows[changed_rows >= 0])
        if it % check_every == 0 or it > n_cols + 1:
            cyc = _cycle_columns(pred, row_col)
            if len(cyc) or it > n_cols + 1:
                return NegativeCycle(cyc, it, pred)
    # A negative distance at an unmatched column is an improving alternating path ending there.
    unmatched = np.ones(n_cols, dtype=bool)
    unmatched[row_col] = False
    bad = np.flatnonzero(unmatched & (y < -RELAX_TOL))
    if len(bad):
        return NegativeCycle(_path_columns(bad, pred, row_col), it, pred, bad[np.argsort(y[bad])])
    v = -y
    u = row_value - v[row_col]
    return Duals(u, v, it, pred)


def _path_columns(ends: np.ndarray, pred_row: np.ndarray, row_col: np.ndarray) -> np.ndarray:
    """Every column on the predecessor paths leading to ``ends``."""
    seen = np.zeros(len(pred_row), dtype=bool)
    frontier = ends
    while len(frontier):
        seen[frontier] = True
        rows = pred_row[frontier]
        nxt = row_col[rows[rows >= 0]]
        frontier = st.unique(nxt[~seen[nxt]])
    return np.flatnonzero(seen)


def apply_improvement(row_col: np.ndarray, found: NegativeCycle) -> np.ndarray | None:
    """The assignment after the exchanges ``found`` proves improving: every negative cycle of the
    predecessor graph (column j is taken by row pred[j], which leaves column σ(pred[j])), else the
    improving paths into unmatched columns, most negative first, as long as they share no column.
    None when nothing can be applied."""
    if found.pred is None:
        return None
    pred = found.pred
    new = row_col.copy()
    changed = False
    done = np.zeros(len(pred), dtype=bool)
    for c0 in found.columns if found.path_ends is None else []:
        if done[c0]:
            continue
        # walk back from c0 until a column repeats: that column lies on a cycle
        seen, j = set(), int(c0)
        while j not in seen and pred[j] >= 0 and not done[j]:
            seen.add(j)
            j = int(row_col[pred[j]])
        if pred[j] < 0 or done[j] or j not in seen:
            continue
        start = j
        while True:
            r = int(pred[j])
            done[j] = True
            new[r] = j
            j = int(row_col[r])
            if j == start:
                break
        changed = True
    for end in (found.path_ends if found.path_ends is not None else []):
        path, j = [], int(end)
        while pred[j] >= 0 and not done[j] and len(path) <= len(row_col):
            r = int(pred[j])
            path.append((r, j))
            j = int(row_col[r])
        if pred[j] >= 0 or done[j] or len(path) > len(row_col):
            continue  # blocked by an applied path, or not a simple path
        cols = [c for _, c in path] + [j]
        if len(set(cols)) != len(cols):
            continue
        for r, c in path:
            new[r] = c
        done[cols] = True
        changed = True
    if not changed or len(st.unique(new)) != len(new):
        return None
    return new
