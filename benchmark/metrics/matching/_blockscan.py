"""The candidate pass's per-block work in C++ (``_blockscan.cpp``): each row's two largest kernel values,
its top-``cap`` of t = value − shift, and each column's best rows by t − t_best(row), in one read of
the block instead of five torch sweeps (~2 s of a 16K × 16K pass on 2 cores, against ~0.4 s).

Built once per machine by :mod:`benchmark.native` (cached on disk), loaded with :mod:`ctypes`. Where it
cannot be built, :func:`benchmark.metrics.matching._passes.row_pass` keeps its torch path: same values,
and the same columns except where two t values of a row tie at its cap (torch's top-k order among ties
is unspecified; here the lower column comes first).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmark import native

SOURCE = Path(__file__).with_name("_blockscan.cpp")
_SIGNATURES = {
    "candidate_block": [ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_long]
    + [ctypes.c_void_p] * 4 + [ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_long],
}
LIBRARY = native.LazyLibrary(SOURCE, "candidate_block", _SIGNATURES, ("-pthread",),
                             what="candidate-pass block scan", fallback="the pass uses torch")


def available() -> bool:
    return LIBRARY.function("candidate_block") is not None


@dataclass
class ColumnRanking:
    """Running per-column lists over the blocks of a pass: the ``count`` largest t − t_best(row) of each
    column (``value`` [count, n] fp32, largest first) and their rows (``row`` [count, n], pass-relative)."""

    value: np.ndarray
    row: np.ndarray

    @classmethod
    def empty(cls, count: int, n: int) -> "ColumnRanking":
        return cls(np.full((count, n), -np.inf, dtype=np.float32), np.full((count, n), -1, dtype=np.int64))


@dataclass
class BlockScan:
    top_value: np.ndarray  # [r, cap] fp32 t values, largest first (lower column first among ties)
    top_col: np.ndarray  # [r, cap] int64
    raw_value: np.ndarray | None  # [r, 2] fp32: the two largest kernel values (−inf second when n = 1)
    raw_col: np.ndarray | None  # [r] int64: the first column holding the largest


def scan_block(block: torch.Tensor, shift: torch.Tensor, cap: int, raw_top2: bool, ranking: ColumnRanking | None,
               first_row: int) -> BlockScan:
    """One block ``[r, n]`` of fp32 kernel values (CPU) against the column shifts ``[n]`` (fp32): see
    :class:`BlockScan`; ``ranking`` (if any) is updated in place with rows ``first_row …``. Requires
    :func:`available`."""
    fn = LIBRARY.function("candidate_block")
    if fn is None:
        raise RuntimeError("the candidate-pass block scan is not built on this machine")
    values = np.ascontiguousarray(block.numpy(), dtype=np.float32)
    r, n = values.shape
    shift_np = np.ascontiguousarray(shift.numpy(), dtype=np.float32)
    if len(shift_np) != n or not 0 < cap <= n:
        raise ValueError(f"block scan: shift has {len(shift_np)} entries for {n} columns, cap {cap}")
    top_value = np.empty((r, cap), dtype=np.float32)
    top_col = np.empty((r, cap), dtype=np.int64)
    raw_value = np.empty((r, 2), dtype=np.float32) if raw_top2 else None
    raw_col = np.empty(r, dtype=np.int64) if raw_top2 else None
    count = 0 if ranking is None else ranking.value.shape[0]
    if ranking is not None and (ranking.value.shape != (count, n) or ranking.row.shape != (count, n)):
        raise ValueError("block scan: the column ranking does not fit the block")
    null = ctypes.c_void_p(None)
    status = fn(values.ctypes.data, r, n, shift_np.ctypes.data, cap, top_value.ctypes.data, top_col.ctypes.data,
                raw_value.ctypes.data if raw_top2 else null, raw_col.ctypes.data if raw_top2 else null, count,
                ranking.value.ctypes.data if count else null, ranking.row.ctypes.data if count else null, first_row,
                max(1, torch.get_num_threads()))
    if status == 2:
        raise MemoryError("candidate-pass block scan: memory could not be allocated")
    return BlockScan(top_value, top_col, raw_value, raw_col)
