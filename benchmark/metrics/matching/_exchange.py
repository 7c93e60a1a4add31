"""The exchange-graph search of :func:`benchmark.metrics.matching._duals.exchange_duals` in C++.

``_exchange.cpp`` is built once per machine by :mod:`benchmark.native` (cached on disk) and loaded
with :mod:`ctypes`. Where it cannot be built (no compiler) the numpy search runs instead: same
distances, slower (at 16K × 16K and 15 % unshared the duals took ~5 s of a ~25 s match).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path

import numpy as np

from benchmark import native

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_exchange.cpp")

_state: dict[str, object] = {}
_lock = threading.Lock()


def _function():
    """The loaded C function, or None when this machine cannot build it (tried once per process)."""
    with _lock:
        if "fn" not in _state:
            _state["fn"] = None
            target = native.build_library(SOURCE, "exchange_paths", what="exchange-graph search",
                                          fallback="matching uses the numpy search")
            if target is not None:
                try:
                    fn = ctypes.CDLL(str(target)).exchange_shortest_paths
                    fn.restype = ctypes.c_int
                    fn.argtypes = ([ctypes.c_long, ctypes.c_long] + [ctypes.c_void_p] * 8
                                   + [ctypes.c_long, ctypes.c_double, ctypes.c_long, ctypes.c_void_p])
                    _state["fn"] = fn
                except (OSError, AttributeError) as exc:
                    log.warning("exchange-graph search %s cannot be loaded: %s; matching uses the numpy search", target, exc)
        return _state["fn"]


def available() -> bool:
    return _function() is not None


def shortest_paths(row_col: np.ndarray, row_value: np.ndarray, row_start: np.ndarray, e_cols: np.ndarray,
                   e_vals: np.ndarray, y: np.ndarray, pred: np.ndarray, start_rows: np.ndarray, tol: float,
                   check_every: int) -> tuple[bool, int] | None:
    """Distances on the exchange graph, in place: ``y [n]`` (fp64) and ``pred [n]`` (int64) start from the
    caller's values; ``row_col [m]``, ``row_value [m]``; the known entries of row i are
    ``e_cols / e_vals[row_start[i]:row_start[i + 1]]``; ``start_rows``: rows whose potential is new.

    Returns (final, rounds): final is False when the search stopped at a negative cycle (``pred``
    then holds it: a cycle of column j → σ(pred[j]), or more than n + 1 rounds); None when the C++
    search is unavailable."""
    fn = _function()
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
