"""The passes' per-block work in C++ (``_blockscan.cpp``), in one read of each block.

- Candidate pass (:func:`scan_block`): each row's two largest kernel values, its top-``cap`` of
  t = value − shift, and each column's best rows by t − t_best(row), instead of five torch sweeps
  (~2 s of a 16K × 16K pass on 2 cores, against ~0.4 s).
- Threshold pass (:func:`threshold_scan`): each row's entries with t above its threshold, known entries
  left out, at most ``cap`` (the largest) with the next value as the row's bound, instead of a boolean
  mask, ``nonzero``, a filter and a top-k over every row with too many entries.

Blocks are fp32, bf16 (read as the fp32 numbers they are, without a converted copy of the block) or
int32 (int8 kernels: exact sums, integer shifts).

Built once per machine by :mod:`benchmark.native` (cached on disk), loaded with :mod:`ctypes`. Where it
cannot be built, :func:`benchmark.metrics.matching._passes.row_pass` and ``threshold_pass`` keep their
torch paths: same values, and the same columns except where two t values of a row tie at its cap
(torch's top-k order among ties is unspecified; here the lower column comes first).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmark import native

SOURCE = Path(__file__).with_name("_blockscan.cpp")
_ARGS = ([ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_long] + [ctypes.c_void_p] * 4
         + [ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_long])
_THRESHOLD_ARGS = ([ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long]
                   + [ctypes.c_void_p] * 7 + [ctypes.c_long])
#: per block type: (candidate scan, threshold scan, the type of shifts, thresholds and results)
_SCANS = {
    torch.float32: ("candidate_block", "threshold_block", np.dtype(np.float32)),
    torch.bfloat16: ("candidate_block_bf16", "threshold_block_bf16", np.dtype(np.float32)),
    torch.int32: ("candidate_block_i32", "threshold_block_i32", np.dtype(np.int32)),
}
LIBRARY = native.LazyLibrary(SOURCE, "candidate_block",
                             {**{scan[0]: _ARGS for scan in _SCANS.values()},
                              **{scan[1]: _THRESHOLD_ARGS for scan in _SCANS.values()}}, ("-pthread",),
                             what="pass block scans", fallback="the passes use torch")
#: what stands for "no value" in each result type (the torch path's markers too)
_LOWEST = {np.dtype(np.float32): -np.inf, np.dtype(np.int32): np.iinfo(np.int32).min}


def _block_array(block: torch.Tensor, which: int, what: str):
    """(C function, contiguous block as numpy (bf16 as its 16-bit patterns), result dtype)."""
    if block.dtype not in _SCANS:
        raise TypeError(f"{what}: no scan for {block.dtype} blocks (fp32, bf16 or int32)")
    fn = LIBRARY.function(_SCANS[block.dtype][which])
    if fn is None:
        raise RuntimeError(f"the {what} is not built on this machine")
    block = block.contiguous()
    values = block.view(torch.int16).numpy() if block.dtype == torch.bfloat16 else block.numpy()
    return fn, values, _SCANS[block.dtype][2]


def available() -> bool:
    return LIBRARY.function("candidate_block") is not None


@dataclass
class ColumnRanking:
    """Running per-column lists over the blocks of a pass: the ``count`` largest t − t_best(row) of each
    column (``value`` [count, n] in the blocks' type, largest first; −inf or INT32_MIN where fewer rows
    were seen) and their rows (``row`` [count, n], pass-relative)."""

    value: np.ndarray
    row: np.ndarray

    @classmethod
    def empty(cls, count: int, n: int, dtype=np.float32) -> "ColumnRanking":
        dtype = np.dtype(dtype)
        return cls(np.full((count, n), _LOWEST[dtype], dtype=dtype), np.full((count, n), -1, dtype=np.int64))


@dataclass
class BlockScan:
    top_value: np.ndarray  # [r, cap] t values (the block's type), largest first (lower column first among ties)
    top_col: np.ndarray  # [r, cap] int64
    raw_value: np.ndarray | None  # [r, 2]: the two largest kernel values (second −inf or INT32_MIN when n = 1)
    raw_col: np.ndarray | None  # [r] int64: the first column holding the largest


def scan_block(block: torch.Tensor, shift: torch.Tensor, cap: int, raw_top2: bool, ranking: ColumnRanking | None,
               first_row: int) -> BlockScan:
    """One block ``[r, n]`` of kernel values (CPU; fp32, bf16, or int32 for int8 kernels) against the
    column shifts ``[n]`` (fp32; int32 for int32 blocks): see :class:`BlockScan`,
    whose values have that type too; ``ranking`` (if any) is updated in place with rows ``first_row …``.
    Requires :func:`available`."""
    fn, values, dtype = _block_array(block, 0, "candidate-pass block scan")
    r, n = values.shape
    shift_np = np.ascontiguousarray(shift.numpy())
    if shift_np.dtype != dtype or len(shift_np) != n or not 0 < cap <= n:
        raise ValueError(f"block scan: shift has {len(shift_np)} {shift_np.dtype} entries for {n} {block.dtype} "
                         f"columns, cap {cap}")
    top_value = np.empty((r, cap), dtype=dtype)
    top_col = np.empty((r, cap), dtype=np.int64)
    raw_value = np.empty((r, 2), dtype=dtype) if raw_top2 else None
    raw_col = np.empty(r, dtype=np.int64) if raw_top2 else None
    count = 0 if ranking is None else ranking.value.shape[0]
    if ranking is not None and (ranking.value.shape != (count, n) or ranking.row.shape != (count, n)
                                or ranking.value.dtype != dtype):
        raise ValueError("block scan: the column ranking does not fit the block")
    null = ctypes.c_void_p(None)
    status = fn(values.ctypes.data, r, n, shift_np.ctypes.data, cap, top_value.ctypes.data, top_col.ctypes.data,
                raw_value.ctypes.data if raw_top2 else null, raw_col.ctypes.data if raw_top2 else null, count,
                ranking.value.ctypes.data if count else null, ranking.row.ctypes.data if count else null, first_row,
                max(1, torch.get_num_threads()))
    if status == 2:
        raise MemoryError("candidate-pass block scan: memory could not be allocated")
    return BlockScan(top_value, top_col, raw_value, raw_col)


@dataclass
class ThresholdScan:
    count: np.ndarray  # [r] entries kept per row (≤ cap)
    col: np.ndarray  # [r, cap] int64: the kept columns, largest t first (lower column first among ties)
    t: np.ndarray  # [r, cap] their t values (the block's type)
    ref: np.ndarray  # [r] the (cap+1)-th largest t where over, else the row's threshold
    over: np.ndarray  # [r] bool: more than cap entries were above the threshold


def threshold_scan(block: torch.Tensor, shift: torch.Tensor, threshold: torch.Tensor, cap: int,
                   known_ptr: np.ndarray, known_idx: np.ndarray) -> ThresholdScan:
    """Entries of a block ``[r, n]`` of kernel values (CPU; fp32, bf16, or int32 for int8 kernels) with
    t = value − shift_j ``[n]`` above the row's ``threshold`` ``[r]`` (both fp32; int32 for int32 blocks), the known
    columns of row p (``known_idx[known_ptr[p]:known_ptr[p + 1]]``, ascending) left out: see
    :class:`ThresholdScan`. Requires :func:`available`."""
    fn, values, dtype = _block_array(block, 1, "threshold block scan")
    r, n = values.shape
    shift_np = np.ascontiguousarray(shift.numpy())
    thr_np = np.ascontiguousarray(threshold.numpy())
    ptr = np.ascontiguousarray(known_ptr, dtype=np.int64)
    idx = np.ascontiguousarray(known_idx, dtype=np.int64)
    if (shift_np.dtype != dtype or thr_np.dtype != dtype or len(shift_np) != n or len(thr_np) != r
            or len(ptr) != r + 1 or not 0 < cap <= n):
        raise ValueError(f"threshold scan: shift {shift_np.dtype}[{len(shift_np)}], threshold {thr_np.dtype}[{len(thr_np)}], "
                         f"known_ptr [{len(ptr)}] for a {block.dtype} block [{r}, {n}], cap {cap}")
    count = np.empty(r, dtype=np.int64)
    col = np.empty((r, cap), dtype=np.int64)
    t = np.empty((r, cap), dtype=dtype)
    ref = np.empty(r, dtype=dtype)
    over = np.empty(r, dtype=np.uint8)
    status = fn(values.ctypes.data, r, n, shift_np.ctypes.data, thr_np.ctypes.data, cap, ptr.ctypes.data,
                idx.ctypes.data, col.ctypes.data, t.ctypes.data, count.ctypes.data, ref.ctypes.data, over.ctypes.data,
                max(1, torch.get_num_threads()))
    if status == 2:
        raise MemoryError("threshold block scan: memory could not be allocated")
    return ThresholdScan(count, col, t, ref, over.astype(bool))
