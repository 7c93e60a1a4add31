"""Unit-norm rows and blocked cosine passes (the full cosine matrix never exists).

Every pass computes blocks ``rows_of_a[block] @ rows_of_b.T`` on the requested device in fp32 and
keeps only small per-row / per-column summaries. Values that decide the answer are recomputed in
fp64 on the CPU; fp32 values are only ever used together with :func:`fp32_cosine_error_bound`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from benchmark.errors import CanonBenchError

logger = logging.getLogger(__name__)

# Bytes of fp32 cosine block kept alive at once (rows × columns × 4).
DEFAULT_BLOCK_BYTES = 256 * 2**20


def as_rows64(x: Any, name: str) -> torch.Tensor:
    """Return ``x`` (numpy array or torch tensor, shape [rows, dim], any float dtype) as CPU fp64."""
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        raise CanonBenchError(f"expected a numpy array or torch tensor, got {type(x).__name__}", field=name)
    if t.ndim != 2:
        raise CanonBenchError(f"expected a 2-D array [latents, dim], got shape {tuple(t.shape)}", field=name)
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise CanonBenchError(f"expected a float array, got {t.dtype}", field=name)
    t = t.to(device="cpu", dtype=torch.float64)
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise CanonBenchError(f"empty dictionary of shape {tuple(t.shape)}", field=name)
    return t


def unit_rows64(rows64: torch.Tensor, name: str = "dictionary") -> tuple[torch.Tensor, np.ndarray]:
    """Scale each row to unit L2 norm in fp64; zero rows stay zero. Returns (unit rows, live mask)."""
    norms = torch.linalg.vector_norm(rows64, dim=1)
    # a NaN or infinite entry makes its row norm non-finite (checking norms is far cheaper)
    bad = ~torch.isfinite(norms)
    if bool(bad.any()):
        raise CanonBenchError(f"row {int(bad.nonzero()[0, 0])} contains NaN or infinite values "
                              f"(or overflows fp64)", field=name)
    live = norms > 0
    unit = rows64 / torch.where(live, norms, torch.ones_like(norms))[:, None]
    return unit, live.numpy()


def resolve_device(device: str | torch.device | None) -> torch.device:
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CanonBenchError("CUDA was requested but is not available", field="device")
    return dev


def fp32_cosine_error_bound(dim: int) -> float:
    """Upper bound on |fp32 cosine − exact cosine| for unit rows of length ``dim``.

    Rounding each fp64 unit vector to fp32 moves the product by at most (2u + u²); any fp32
    summation order adds at most γ_dim = dim·u/(1 − dim·u) (Higham, Thm 3.5) times Σ|a_k b_k| ≤ 1+3u.
    The 1.5 factor and the additive term cover the small remaining products; u = 2⁻²⁴.
    """
    u = 2.0**-24
    gamma = dim * u / (1 - dim * u)
    return 1.5 * (gamma * (1 + 3 * u) + 2 * u + u * u) + 1e-9


@contextlib.contextmanager
def exact_fp32_matmul() -> Iterator[None]:
    """Forbid TF32 / bf16 shortcuts inside fp32 matmuls, so the error bound above holds."""
    old_precision = torch.get_float32_matmul_precision()
    old_cuda = torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old_precision)
        torch.backends.cuda.matmul.allow_tf32 = old_cuda


def block_rows_for(n_cols: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    return int(max(64, min(8192, block_bytes // (4 * max(1, n_cols)))))


@dataclass
class CandidatePass:
    """Summaries of one full blocked pass over the cosine matrix (fp32 values)."""

    top_cols: np.ndarray  # [m, k] int64, columns of each row's k largest cosines, descending
    top_vals32: np.ndarray  # [m, k] float32
    col_max32: np.ndarray  # [n] float32, each column's largest cosine


def candidate_pass(
    a32: torch.Tensor, b32: torch.Tensor, k: int, block_rows: int, progress: bool = False
) -> CandidatePass:
    """Row-wise top-k and column-wise maximum of ``a32 @ b32.T``, in row blocks."""
    from tqdm.auto import tqdm

    m, n = a32.shape[0], b32.shape[0]
    k = min(k, n)
    top_cols = np.empty((m, k), dtype=np.int64)
    top_vals = np.empty((m, k), dtype=np.float32)
    col_max = torch.full((n,), -torch.inf, device=b32.device)
    b32_t = b32.T
    starts = range(0, m, block_rows)
    with exact_fp32_matmul():
        for start in tqdm(starts, desc="cosine blocks", disable=not progress, leave=False):
            block = a32[start : start + block_rows] @ b32_t
            vals, cols = torch.topk(block, k, dim=1)
            top_cols[start : start + len(block)] = cols.cpu().numpy()
            top_vals[start : start + len(block)] = vals.cpu().numpy()
            # amax is several times faster than max(dim=0), which also computes indices
            torch.maximum(col_max, block.amax(dim=0), out=col_max)
    return CandidatePass(top_cols, top_vals, col_max.cpu().numpy())


def row_topk_cosines64(a64: torch.Tensor, b64: torch.Tensor, top_cols: np.ndarray) -> np.ndarray:
    """Exact (fp64) cosines of row i with columns top_cols[i, :] (batched, [m, k])."""
    m, k = top_cols.shape
    out = np.empty((m, k), dtype=np.float64)
    chunk = max(64, (64 * 2**20) // (8 * k * a64.shape[1]))
    cols_t = torch.from_numpy(top_cols)
    for start in range(0, m, chunk):
        blk = b64[cols_t[start : start + chunk]]
        out[start : start + chunk] = torch.bmm(blk, a64[start : start + chunk, :, None])[:, :, 0].numpy()
    return out


def edge_cosines64(a64: torch.Tensor, b64: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Exact (fp64) cosines of the listed (row, col) pairs of unit rows."""
    out = np.empty(len(rows), dtype=np.float64)
    chunk = max(1024, (32 * 2**20) // (8 * a64.shape[1]))
    for start in range(0, len(rows), chunk):
        r = torch.from_numpy(rows[start : start + chunk])
        c = torch.from_numpy(cols[start : start + chunk])
        out[start : start + chunk] = torch.einsum("ed,ed->e", a64[r], b64[c]).numpy()
    return out


def dense_cosines64(a64: torch.Tensor, b64: torch.Tensor) -> np.ndarray:
    """Exact (fp64) cosine matrix between two (small) sets of unit rows."""
    return (a64 @ b64.T).numpy()


def worst_unknown_entries(
    a32: torch.Tensor,
    b32: torch.Tensor,
    rows: np.ndarray,
    row_dual: np.ndarray,
    col_dual: np.ndarray,
    known_cols: list[np.ndarray],
    residual_row: np.ndarray,
    residual_cols_mask: np.ndarray,
    err: float,
    cap: int,
    block_rows: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each listed row: its ``cap`` largest reduced-cost violations among unknown entries.

    The score of entry (i, j) is ``fp32 cosine + err − u_i − v_j``: a positive score means the dual
    constraint u_i + v_j ≥ cos_ij may fail. Known entries (whose exact value the solver already has) get
    −inf. Returns (row, col, score) triples of the top ``cap`` scores per row (all of them, any sign).
    """
    out_r, out_c, out_s = [], [], []
    dev = b32.device
    v32 = torch.from_numpy(col_dual).to(device=dev, dtype=torch.float32)
    cap = min(cap, b32.shape[0])
    with exact_fp32_matmul():
        for start in range(0, len(rows), block_rows):
            rows_blk = rows[start : start + block_rows]
            idx = torch.from_numpy(rows_blk).to(dev)
            score = a32[idx] @ b32.T
            score += err
            score -= v32[None, :]
            score -= torch.from_numpy(row_dual[rows_blk]).to(device=dev, dtype=torch.float32)[:, None]
            kr = [np.full(len(kc), p, dtype=np.int64) for p, kc in enumerate(known_cols[start : start + block_rows])]
            if kr:
                kr_all = torch.from_numpy(np.concatenate(kr)).to(dev)
                kc_all = torch.from_numpy(np.concatenate(known_cols[start : start + block_rows])).to(dev)
                score[kr_all, kc_all] = -torch.inf
            res_local = np.flatnonzero(residual_row[rows_blk])
            if len(res_local):
                res_cols = torch.from_numpy(np.flatnonzero(residual_cols_mask)).to(dev)
                rl = torch.from_numpy(res_local).to(dev)
                score[rl[:, None], res_cols[None, :]] = -torch.inf
            vals, cols = torch.topk(score, cap, dim=1)
            out_r.append(np.repeat(rows_blk, cap))
            out_c.append(cols.cpu().numpy().ravel())
            out_s.append(vals.cpu().numpy().ravel().astype(np.float64))
    if not out_r:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0)
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_s)


def row_max_cosines(
    a32: torch.Tensor, b32: torch.Tensor, a64: torch.Tensor, b64: torch.Tensor, block_rows: int, top: int = 4
) -> np.ndarray:
    """Per row of ``a``: the largest cosine with any row of ``b`` (fp32 search, fp64 recompute of the top few)."""
    m = a32.shape[0]
    top = min(top, b32.shape[0])
    cand = np.empty((m, top), dtype=np.int64)
    with exact_fp32_matmul():
        for start in range(0, m, block_rows):
            block = a32[start : start + block_rows] @ b32.T
            cand[start : start + len(block)] = torch.topk(block, top, dim=1).indices.cpu().numpy()
    rows = np.repeat(np.arange(m), top)
    vals = edge_cosines64(a64, b64, rows, cand.ravel()).reshape(m, top)
    return vals.max(axis=1)
