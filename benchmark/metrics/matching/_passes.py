"""Blocked passes over kernel values (the full cosine matrix never exists).

A *row pass* ranks, for each listed row i, the columns by ``t_ij = kernel(i, j) − shift_j`` and keeps
the ``cap`` largest among the columns not yet known for that row. What it proves: for every unknown
column j not returned, ``t_ij ≤ last_i + slack``, where ``last_i`` is the smallest value returned.
Together with the kernel bound, ``cos_ij ≤ last_i + slack + row_err_i + shift_j``: the row's
reference bound, valid for every entry that stays unknown, whatever the duals do later.

For int8 kernels the shift is rounded down to the integer grid (``shift_int · scale``, exact in fp64) and
everything runs on exact int32 values, so slack = 0. For float kernels the fp32 subtraction rounds
once: slack = 2⁻²⁴·(max|t| + max|shift|)·2.

A *column pass* does the same for listed columns against every row, with a per-row shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from benchmark.metrics.matching import _blockscan
from benchmark.metrics.matching import _sets as st
from benchmark.metrics.matching._kernels import U32, KernelOperands, exact_matmul

INT32_MIN = torch.iinfo(torch.int32).min
# integer shifts must stay far from int32 overflow (|raw| ≤ dim·127² ≤ 2³¹ − 1 already)
_INT_SHIFT_MAX = 2**29


@dataclass
class PassResult:
    index: np.ndarray  # [r, cap] int64, columns (row pass) or rows (column pass), best first
    value: np.ndarray  # [r, cap] fp64, t values (kernel − shift), descending; −inf where fewer exist
    shift: np.ndarray  # the shift actually used (fp64; exact multiples of scale for int8)
    slack: float  # rounding slack of t (0 for int8)
    raw_col: np.ndarray | None = None  # [r] column of each row's largest kernel value (no shift)
    raw_val: np.ndarray | None = None  # [r, 2] the two largest kernel values of each row (no shift)
    col_index: np.ndarray | None = None  # [n, col_top] rows of each column's largest t_ij − best_i, best first
    col_value: np.ndarray | None = None  # [n, col_top] those values (fp64; a ranking, no bound attached)


def _shift_for(ops: KernelOperands, shift: np.ndarray, device: torch.device):
    """(shift as used in fp64, shift tensor in the kernel's domain, integer?). Integer shifts are
    rounded down (shift used ≤ shift requested); fp32 shifts may differ by 2⁻²⁴·|shift|."""
    if ops.integer and (len(shift) == 0 or float(np.abs(shift).max()) / ops.scale < _INT_SHIFT_MAX):
        q = np.floor(shift / ops.scale).astype(np.int64)
        return q.astype(np.float64) * ops.scale, torch.from_numpy(q.astype(np.int32)).to(device), True
    s32 = shift.astype(np.float32)
    return s32.astype(np.float64), torch.from_numpy(s32).to(device), False


def _block_values(ops: KernelOperands, raw: torch.Tensor, integer: bool) -> torch.Tensor:
    if integer:
        return raw  # int32, exact; scale applied to the few values kept
    if raw.dtype != torch.float32:
        return raw.to(torch.float32)
    if ops.kind == "int8":
        return raw.to(torch.float32) * ops.scale
    return raw


def _scan_values(ops: KernelOperands, raw: torch.Tensor, integer: bool, native_scan: bool) -> torch.Tensor:
    """A block as the pass reads it: the C++ scans read bf16 products as they are (a converted fp32
    copy of a 4096 × 16384 block costs a read and a write of it); everything else as :func:`_block_values`."""
    if native_scan and raw.dtype == torch.bfloat16:
        return raw
    return _block_values(ops, raw, integer)


def _local_csr(known_ptr: np.ndarray, known_idx: np.ndarray, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ptr [len(sel) + 1], columns): the known entries of the selected rows as their own CSR, from
    the CSR ``known_ptr``/``known_idx`` over all rows."""
    lo = known_ptr[sel]
    counts = known_ptr[sel + 1] - lo
    ptr = np.zeros(len(sel) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    pos = np.repeat(lo - ptr[:-1], counts) + np.arange(ptr[-1])
    return ptr, known_idx[pos]


def _known_positions(known_ptr: np.ndarray, known_idx: np.ndarray, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(local row, column) of the known entries of the selected rows (CSR ptr/idx over all rows)."""
    ptr, cols = _local_csr(known_ptr, known_idx, sel)
    return np.repeat(np.arange(len(sel)), np.diff(ptr)), cols


def row_pass(
    ops: KernelOperands,
    rows: np.ndarray | None,
    shift: np.ndarray,
    cap: int,
    block_rows: int,
    known_ptr: np.ndarray | None = None,
    known_idx: np.ndarray | None = None,
    progress: bool = False,
    raw_top2: bool = False,
    col_top: int = 0,
) -> PassResult:
    """Top-``cap`` columns of t_ij = kernel(i, j) − shift_j per listed row (all rows when None),
    known entries (CSR ``known_ptr``/``known_idx`` over all rows) excluded. With ``raw_top2``, also
    each row's two largest kernel values before the shift and the column of the largest (an argmax
    and a masked max: a cheap second bound, cos_ij ≤ second + row_err_i for every other column,
    that does not depend on the shift being any good).

    With ``col_top`` > 0 (no known entries), each column's ``col_top`` rows with the largest
    ``t_ij − best_i`` (best_i = the row's largest t), taken from the same blocks: the ranking a column
    pass with row shift best_i gives (per column the two differ by the constant shift_j), without
    a second product over the columns."""
    if col_top and known_ptr is not None:
        raise ValueError("col_top ranks every entry of a column: it cannot exclude known entries")
    from tqdm.auto import tqdm

    dev = ops.b.device
    n = ops.b.shape[0]
    rows_all = np.arange(ops.a.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    cap = min(cap, n)
    shift_used, shift_t, integer = _shift_for(ops, shift, dev)
    index = np.empty((len(rows_all), cap), dtype=np.int64)
    value = np.empty((len(rows_all), cap), dtype=np.float64)
    t_max = 0.0
    contiguous = rows is None
    raw_col = np.empty(len(rows_all), dtype=np.int64) if raw_top2 else None
    raw_val = np.empty((len(rows_all), 2)) if raw_top2 else None
    col_top = min(col_top, len(rows_all))
    col_vals = col_rows = None  # running per-column best [col_top, n] (kernel domain) and their rows
    # blocks on the CPU with nothing to exclude: one C++ read per block does what the torch ops below do
    native_scan = dev.type == "cpu" and known_ptr is None and _blockscan.available()
    ranking = (_blockscan.ColumnRanking.empty(col_top, n, np.int32 if integer else np.float32)
               if native_scan and col_top else None)
    with exact_matmul():
        for start in tqdm(range(0, len(rows_all), block_rows), desc="kernel rows", disable=not progress, leave=False):
            sel = rows_all[start : start + block_rows]
            take = slice(int(sel[0]), int(sel[-1]) + 1) if contiguous else torch.from_numpy(sel).to(dev)
            block = _scan_values(ops, ops.raw(take, reuse=True), integer, native_scan)
            if native_scan:
                found = _blockscan.scan_block(block, shift_t, cap, raw_top2, ranking, start)
                del block
                if raw_top2:
                    raw_val[start : start + len(sel)] = _raw_pair(found.raw_value, ops, integer)
                    raw_col[start : start + len(sel)] = found.raw_col
                v, t_max = _top_values(torch.from_numpy(found.top_value), ops, integer, t_max)
                value[start : start + len(sel)] = v
                index[start : start + len(sel)] = found.top_col
                continue
            if raw_top2:
                rr = torch.arange(len(sel), device=dev)
                best = block.argmax(dim=1)
                top = block[rr, best].clone()
                block[rr, best] = INT32_MIN if integer else -torch.inf
                second = block.amax(dim=1) if n > 1 else torch.full_like(top, INT32_MIN if integer else -torch.inf)
                block[rr, best] = top
                raw_val[start : start + len(sel)] = _raw_pair(torch.stack([top, second], dim=1).cpu().numpy(), ops, integer)
                raw_col[start : start + len(sel)] = best.cpu().numpy()
            block -= shift_t
            if known_ptr is not None:
                lr, kc = _known_positions(known_ptr, known_idx, sel)
                if len(lr):
                    fill = INT32_MIN if integer else -torch.inf
                    block[torch.from_numpy(lr).to(dev), torch.from_numpy(kc).to(dev)] = fill
            vals, idx = torch.topk(block, cap, dim=1)
            if col_top:
                block -= vals[:, :1]
                col_vals, col_rows = _merge_column_top(block, col_top, start, col_vals, col_rows)
            del block
            v, t_max = _top_values(vals, ops, integer, t_max)
            value[start : start + len(sel)] = v
            index[start : start + len(sel)] = idx.cpu().numpy()
    result = PassResult(index, value, shift_used, _pass_slack(integer, t_max, shift_used), raw_col, raw_val)
    if col_top:
        if ranking is not None:
            col_vals, col_rows = torch.from_numpy(ranking.value), torch.from_numpy(ranking.row)
        result.col_value = _top_values(col_vals.T.contiguous(), ops, integer, 0.0)[0]
        result.col_index = rows_all[col_rows.T.cpu().numpy()]
    return result


def _raw_pair(pair: np.ndarray, ops: KernelOperands, integer: bool) -> np.ndarray:
    """[r, 2] raw kernel values of a block in fp64 (int8 sums scaled; the INT32_MIN marker becomes −inf)."""
    pair = pair.astype(np.float64)
    return np.where(pair == INT32_MIN, -np.inf, pair * ops.scale) if integer else pair


#: Rows of a block whose per-column top values set the first block's floor (see _merge_column_top).
_COLUMN_FLOOR_ROWS = 512


def _merge_column_top(block: torch.Tensor, count: int, first_row: int, best: torch.Tensor | None,
                      best_rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` largest values per column of ``block [r, n]`` (its rows are ``first_row`` …
    of the pass) merged with the running ``best [count, n]`` (rows ``best_rows``), best first.

    A top-k down the columns of a large block is slow (strided; ~0.5 s for 4096 × 16384), so only
    entries above a floor are ranked: the running count-th value, or for the first block the count-th
    value of its first rows (every column keeps ≥ count entries at or above it). Small cases take
    the plain top-k."""
    r, n = block.shape
    if (best is None and r <= _COLUMN_FLOOR_ROWS) or (best is not None and best.shape[0] < count):
        vals, rows = torch.topk(block, min(count, r), dim=0)
        rows += first_row
        if best is not None:
            merged = torch.cat([best, vals])
            vals, pick = torch.topk(merged, min(count, merged.shape[0]), dim=0)
            rows = torch.gather(torch.cat([best_rows, rows]), 0, pick)
        return vals, rows
    if best is None:
        floor = torch.topk(block[:max(_COLUMN_FLOOR_ROWS, count)], count, dim=0).values[-1]
        hit_rows, hit_cols = (block >= floor).nonzero(as_tuple=True)
    else:
        hit_rows, hit_cols = (block > best[-1]).nonzero(as_tuple=True)
    vals, rows, cols = block[hit_rows, hit_cols], hit_rows + first_row, hit_cols
    if best is not None:
        vals = torch.cat([best.reshape(-1), vals])
        rows = torch.cat([best_rows.reshape(-1), rows])
        cols = torch.cat([torch.arange(n, device=block.device).repeat(count), cols])
    picked, rank = st.top_per_group(cols, vals, count)
    out_vals = torch.empty(count, n, dtype=block.dtype, device=block.device)
    out_rows = torch.empty(count, n, dtype=torch.int64, device=block.device)
    out_vals[rank, cols[picked]] = vals[picked]
    out_rows[rank, cols[picked]] = rows[picked]
    return out_vals, out_rows


def _top_values(vals: torch.Tensor, ops: KernelOperands, integer: bool, t_max: float) -> tuple[np.ndarray, float]:
    """Top-k kernel values of one block as fp64 (int8 sums scaled; the excluded marker becomes −inf) and the
    running largest |value| of a float kernel, which its rounding slack is proportional to."""
    v = vals.cpu().numpy().astype(np.float64)
    if integer:
        return np.where(v == INT32_MIN, -np.inf, v * ops.scale), t_max
    finite = v[np.isfinite(v)]
    return v, (max(t_max, float(np.abs(finite).max())) if len(finite) else t_max)


def _pass_slack(integer: bool, t_max: float, shift_used: np.ndarray) -> float:
    """Bound on the float rounding of ``kernel − shift`` over a pass (0 for exact integer sums)."""
    if integer:
        return 0.0
    return 2 * U32 * (t_max + (float(np.abs(shift_used).max()) if len(shift_used) else 0.0)) + 1e-12


def column_pass(
    ops: KernelOperands,
    cols: np.ndarray,
    row_shift: np.ndarray,
    cap: int,
    block_cols: int,
    known_ptr: np.ndarray | None = None,
    known_idx: np.ndarray | None = None,
) -> PassResult:
    """Top-``cap`` rows of t_ij = kernel(i, j) − row_shift_i per listed column, known entries
    (CSR over columns: ``known_ptr``/``known_idx`` hold rows) excluded."""
    dev = ops.b.device
    m = ops.a.shape[0]
    cap = min(cap, m)
    shift_used, shift_t, integer = _shift_for(ops, row_shift, dev)
    index = np.empty((len(cols), cap), dtype=np.int64)
    value = np.empty((len(cols), cap), dtype=np.float64)
    t_max = 0.0
    with exact_matmul():
        for start in range(0, len(cols), block_cols):
            sel = np.asarray(cols[start : start + block_cols], dtype=np.int64)
            block = _block_values(ops, ops.raw_t(torch.from_numpy(sel).to(dev), reuse=True), integer)
            block -= shift_t
            if known_ptr is not None:
                lc, kr = _known_positions(known_ptr, known_idx, sel)
                if len(lc):
                    block[torch.from_numpy(lc).to(dev), torch.from_numpy(kr).to(dev)] = INT32_MIN if integer else -torch.inf
            vals, idx = torch.topk(block, cap, dim=1)
            v, t_max = _top_values(vals, ops, integer, t_max)
            value[start : start + len(sel)] = v
            index[start : start + len(sel)] = idx.cpu().numpy()
    return PassResult(index, value, shift_used, _pass_slack(integer, t_max, shift_used))


def _block_best(ops: KernelOperands, raw: torch.Tensor, shift_t: torch.Tensor, integer: bool) -> tuple[np.ndarray, np.ndarray]:
    """(largest t, its first position) of each row of a block of raw kernel values, t = value − shift
    (``shift_t`` [block columns] in the kernel's domain: int32 for int8 kernels, else fp32); t in fp64
    cosine units. On the CPU one C++ read of the block; elsewhere torch's convert, subtract and max."""
    if raw.device.type == "cpu" and _blockscan.available():
        found = _blockscan.scan_block(_scan_values(ops, raw, integer, True), shift_t, 1, False, None, 0)
        best = found.top_value[:, 0].astype(np.float64)
        return (best * ops.scale if integer else best), found.top_col[:, 0]
    vals = _block_values(ops, raw, integer)
    best, where = (vals - shift_t).max(dim=1)
    best = best.cpu().numpy().astype(np.float64)
    return (best * ops.scale if integer else best), where.cpu().numpy()


def max_over_rows(ops: KernelOperands, rows: np.ndarray, row_shift: np.ndarray, block_cols: int) -> np.ndarray:
    """max over the listed rows i of (kernel(i, j) − row_shift_i), for every column j (a heuristic:
    no bound is attached; for int8 kernels the shifts are rounded to the integer grid first). Used for
    the c-transform of sampled row prices."""
    dev = ops.b.device
    flipped = ops.transposed()  # blocks of columns against the listed rows
    listed = torch.from_numpy(rows).to(dev)
    _, shift_t, integer = _shift_for(ops, row_shift, dev)
    out = np.empty(ops.b.shape[0])
    with exact_matmul():
        for start in range(0, ops.b.shape[0], block_cols):
            raw = flipped.raw(slice(start, start + block_cols), listed, reuse=True)
            out[start : start + len(raw)] = _block_best(ops, raw, shift_t, integer)[0]
    return out


def argmax_rows(ops: KernelOperands, rows: np.ndarray, block: int) -> np.ndarray:
    """For each listed row, the column with the largest kernel value (a heuristic: no bound)."""
    dev = ops.b.device
    out = np.empty(len(rows), dtype=np.int64)
    integer = ops.integer
    zero = torch.zeros(ops.b.shape[0], dtype=torch.int32 if integer else torch.float32, device=dev)
    with exact_matmul():
        for start in range(0, len(rows), block):
            sel = torch.from_numpy(np.asarray(rows[start : start + block])).to(dev)
            out[start : start + len(sel)] = _block_best(ops, ops.raw(sel, reuse=True), zero, integer)[1]
    return out


def argmax_cols(ops: KernelOperands, cols: np.ndarray, block: int) -> np.ndarray:
    """For each listed column, the row with the largest kernel value (a heuristic: no bound)."""
    return argmax_rows(ops.transposed(), cols, block)


def _threshold_t_bound(ops: KernelOperands, shift: np.ndarray, threshold: np.ndarray) -> float:
    """Bound on |t| and the threshold a float threshold pass compares (cosine units): |t| ≤ max|kernel| +
    max|shift|, kernel ≤ 1 + max row_err; its slack is one fp32 rounding of t and one of the threshold."""
    return (1.0 + float(ops.row_err.max()) + float(np.abs(shift).max(initial=0.0))
            + float(np.abs(threshold).max(initial=0.0)))


def threshold_slack_bound(ops: KernelOperands, shift: np.ndarray, threshold: np.ndarray) -> float:
    """An upper bound, known before the pass, on what :func:`threshold_pass` adds to ``threshold``:
    its slack plus the fp32 rounding of the threshold itself. Thresholds lowered by this much give
    ``ref + slack ≤`` the unlowered value. 0 for integer kernels (thresholds rounded down, slack 0).
    Shapes: shift [r], threshold [c]; cosine units."""
    if ops.integer:
        return 0.0
    # the pass rounds shift and threshold to fp32 (≤ U32 relative each) before bounding t; +1 covers it
    return 4 * U32 * (_threshold_t_bound(ops, shift, threshold) + 1.0) + 4e-12


@dataclass
class ThresholdPass:
    """Entries of listed rows with t_ij = kernel − shift_j above a per-row threshold (known excluded).

    What it proves: for every listed row, every unknown entry not returned has t ≤ ``ref[p] + slack``."""

    row: np.ndarray  # position in the listed rows of each returned entry
    col: np.ndarray
    t: np.ndarray  # fp64 t values of the returned entries
    ref: np.ndarray  # [len(rows)] bound on the t of the entries not returned
    shift: np.ndarray
    slack: float


def threshold_pass(
    ops: KernelOperands,
    rows: np.ndarray,
    shift: np.ndarray,
    threshold: np.ndarray,
    cap: int,
    block_rows: int,
    known_ptr: np.ndarray | None = None,
    known_idx: np.ndarray | None = None,
    progress: bool = False,
) -> ThresholdPass:
    """Entries with t_ij > threshold_i (at most ``cap`` per row: rows with more keep their ``cap``
    largest) for the listed rows. One comparison per entry instead of a top-k. Known entries (CSR
    ``known_ptr``/``known_idx`` over all rows, each row's columns ascending) are left out."""
    from tqdm.auto import tqdm

    dev = ops.b.device
    n = ops.b.shape[0]
    rows = np.asarray(rows, dtype=np.int64)
    cap = min(cap, n)
    shift_used, shift_t, integer = _shift_for(ops, shift, dev)
    if integer:
        thr_used = np.floor(threshold / ops.scale)
        thr_t = torch.from_numpy(np.clip(thr_used, INT32_MIN + 1, 2**31 - 1).astype(np.int32)).to(dev)
        thr_used = thr_used * ops.scale
        slack = 0.0
    else:
        thr_used = threshold.astype(np.float32).astype(np.float64)
        thr_t = torch.from_numpy(threshold.astype(np.float32)).to(dev)
        slack = 2 * U32 * _threshold_t_bound(ops, shift_used, thr_used) + 1e-12
    ref = thr_used.copy()
    out_r, out_c, out_t = [], [], []
    fill = INT32_MIN if integer else -torch.inf
    # on the CPU one C++ read per block does what the torch ops below do
    native_scan = dev.type == "cpu" and _blockscan.available()
    with exact_matmul():
        for start in tqdm(range(0, len(rows), block_rows), desc="kernel rows", disable=not progress, leave=False):
            sel = rows[start : start + block_rows]
            block = _scan_values(ops, ops.raw(torch.from_numpy(sel).to(dev), reuse=True), integer, native_scan)
            if native_scan:
                if known_ptr is not None:
                    local_ptr, local_idx = _local_csr(known_ptr, known_idx, sel)
                else:
                    local_ptr, local_idx = np.zeros(len(sel) + 1, dtype=np.int64), np.empty(0, dtype=np.int64)
                found = _blockscan.threshold_scan(block, shift_t, thr_t[start : start + len(sel)], cap, local_ptr,
                                                  local_idx)
                del block
                kept = np.arange(found.col.shape[1])[None, :] < found.count[:, None]
                t = found.t[kept].astype(np.float64)
                out_r.append(start + np.repeat(np.arange(len(sel)), found.count))
                out_c.append(found.col[kept])
                out_t.append(t * ops.scale if integer else t)
                over = np.flatnonzero(found.over)
                bound = found.ref[over].astype(np.float64)
                ref[start + over] = bound * ops.scale if integer else bound
                continue
            block -= shift_t
            if known_ptr is not None:
                lr, kc = _known_positions(known_ptr, known_idx, sel)
                if len(lr):
                    block[torch.from_numpy(lr).to(dev), torch.from_numpy(kc).to(dev)] = fill
            r, c = (block > thr_t[start : start + len(sel), None]).nonzero(as_tuple=True)
            r_np = r.cpu().numpy()
            counts = np.bincount(r_np, minlength=len(sel))
            over = np.flatnonzero(counts > cap)
            if len(over):  # more entries than the cap: keep the cap largest, the next one bounds the rest
                over_t = torch.from_numpy(over).to(dev)
                vals, idx = torch.topk(block[over_t], cap + 1, dim=1)
                v = vals.cpu().numpy().astype(np.float64)
                if integer:
                    v = np.where(v == INT32_MIN, -np.inf, v * ops.scale)
                ref[start + over] = v[:, -1]
                out_r.append(np.repeat(start + over, cap))
                out_c.append(idx[:, :cap].cpu().numpy().ravel())
                out_t.append(v[:, :cap].ravel())
                keep = torch.from_numpy(counts[r_np] <= cap).to(dev)
                r, c = r[keep], c[keep]
                r_np = r.cpu().numpy()
            if len(r):
                t = block[r, c].cpu().numpy().astype(np.float64)
                out_r.append(start + r_np)
                out_c.append(c.cpu().numpy())
                out_t.append(t * ops.scale if integer else t)
            del block
    cat = (lambda xs, dt: np.concatenate(xs) if xs else np.empty(0, dtype=dt))
    t_all = cat(out_t, np.float64)
    keep = np.isfinite(t_all)
    return ThresholdPass(cat(out_r, np.int64)[keep], cat(out_c, np.int64)[keep], t_all[keep], ref, shift_used, slack)
