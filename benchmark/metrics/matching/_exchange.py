"""The matcher's searches on the assignment graph in C++: the exchange-graph shortest paths of
:func:`benchmark.metrics.matching._duals.exchange_duals` and a warm-started assignment solve.

``_exchange.cpp`` is built once per machine by :mod:`benchmark.native` (cached on disk) and loaded
with :mod:`ctypes`. Where it cannot be built (no compiler) the numpy search and scipy's sparse LAPJV
run instead: same results, slower (at 16K × 16K and 15 % unshared the duals took ~5 s of a ~25 s match).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark import native

SOURCE = Path(__file__).with_name("_exchange.cpp")

_SIGNATURES = {
    "exchange_shortest_paths": [ctypes.c_long, ctypes.c_long] + [ctypes.c_void_p] * 8
    + [ctypes.c_long, ctypes.c_double, ctypes.c_long, ctypes.c_void_p],
    "warm_assignment": [ctypes.c_long, ctypes.c_long] + [ctypes.c_void_p] * 6 + [ctypes.c_double, ctypes.c_void_p],
}
LIBRARY = native.LazyLibrary(SOURCE, "exchange_paths", _SIGNATURES, what="assignment-graph searches",
                             fallback="matching uses the numpy search and scipy's solver")


def available() -> bool:
    return LIBRARY.function("exchange_shortest_paths") is not None


def shortest_paths(row_col: np.ndarray, row_value: np.ndarray, row_start: np.ndarray, e_cols: np.ndarray,
                   e_vals: np.ndarray, y: np.ndarray, pred: np.ndarray, start_rows: np.ndarray, tol: float,
                   check_every: int) -> tuple[bool, int] | None:
    """Distances on the exchange graph, in place: ``y [n]`` (fp64) and ``pred [n]`` (int64) start from the
    caller's values; ``row_col [m]``, ``row_value [m]``; the known entries of row i are
    ``e_cols / e_vals[row_start[i]:row_start[i + 1]]``; ``start_rows``: rows whose potential is new.

    Returns (final, rounds): final is False when the search stopped at a negative cycle (``pred``
    then holds it: a cycle of column j → σ(pred[j]), or more than n + 1 rounds); None when the C++
    search is unavailable."""
    fn = LIBRARY.function("exchange_shortest_paths")
    if fn is None:
        return None
    m, n = len(row_col), len(y)
    if y.dtype != np.float64 or pred.dtype != np.int64 or not (y.flags.c_contiguous and pred.flags.c_contiguous):
        raise ValueError("y must be contiguous float64 and pred contiguous int64 (written in place)")
    ints = [np.ascontiguousarray(a, dtype=np.int64) for a in (row_col, row_start, e_cols, start_rows)]
    floats = [np.ascontiguousarray(a, dtype=np.float64) for a in (row_value, e_vals)]
    if len(ints[1]) != m + 1 or len(ints[2]) != len(floats[1]) or len(floats[0]) != m or len(pred) != n:
        raise ValueError("exchange graph arrays disagree in length")
    rounds = np.zeros(1, dtype=np.int64)
    status = fn(m, n, ints[0].ctypes.data, floats[0].ctypes.data, ints[1].ctypes.data, ints[2].ctypes.data,
                floats[1].ctypes.data, y.ctypes.data, pred.ctypes.data, ints[3].ctypes.data, len(ints[3]), tol,
                check_every, rounds.ctypes.data)
    if status == 2:
        raise MemoryError("exchange-graph search: scratch memory could not be allocated")
    return status == 0, int(rounds[0])


@dataclass
class WarmSolve:
    status: str  # "optimal", "no-full-matching" or "bad-start" (the caller solves from scratch)
    row_col: np.ndarray  # [m] σ (optimal on the graph when status is "optimal")
    row: np.ndarray  # u [m], fp64
    col: np.ndarray  # v [n], fp64
    augmented: int  # rows that needed an augmenting path
    scanned: int  # graph entries scanned by the searches
    cursor_steps: int  # columns offered through a dummy row


_WARM_STATUS = {0: "optimal", 1: "no-full-matching", 3: "bad-start"}


def warm_assignment(row_start: np.ndarray, e_cols: np.ndarray, e_vals: np.ndarray, row_col: np.ndarray,
                    col_duals: np.ndarray, tol: float) -> WarmSolve | None:
    """Maximum-value assignment of every row on a sparse graph, continued from a previous optimum.

    The graph: row i's entries are ``e_cols / e_vals [row_start[i]:row_start[i + 1]]`` (values
    maximised, any sign). ``row_col [m]`` (−1: free) and ``col_duals [n]`` are the previous optimum's σ
    and column duals on a graph that has since gained entries (v ≥ 0, 0 on σ's free columns). Rows
    whose entries now violate those duals by more than ``tol`` (or that are free) are re-assigned by
    shortest augmenting paths; the rest keep their columns unless a path moves them. None when the C++
    searches are unavailable. Inputs are not modified."""
    fn = LIBRARY.function("warm_assignment")
    if fn is None:
        return None
    m, n = len(row_col), len(col_duals)
    ints = [np.ascontiguousarray(a, dtype=np.int64) for a in (row_start, e_cols)]
    vals = np.ascontiguousarray(e_vals, dtype=np.float64)
    if len(ints[0]) != m + 1 or len(ints[1]) != len(vals) or (len(vals) and int(ints[0][-1]) != len(vals)):
        raise ValueError("assignment graph arrays disagree in length")
    if len(ints[1]) and (int(ints[1].min()) < 0 or int(ints[1].max()) >= n):
        raise ValueError("assignment graph has a column outside [0, n)")
    sigma = np.array(row_col, dtype=np.int64)
    u = np.zeros(m, dtype=np.float64)
    v = np.array(col_duals, dtype=np.float64)
    stats = np.zeros(3, dtype=np.int64)
    status = fn(m, n, ints[0].ctypes.data, ints[1].ctypes.data, vals.ctypes.data, sigma.ctypes.data,
                u.ctypes.data, v.ctypes.data, tol, stats.ctypes.data)
    if status == 2:
        raise MemoryError("warm assignment: scratch memory could not be allocated")
    return WarmSolve(_WARM_STATUS[status], sigma, u, v, int(stats[0]), int(stats[1]), int(stats[2]))
