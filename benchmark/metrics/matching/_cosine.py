"""Unit-norm rows, exact fp64 cosines of listed entries, and the blocked fp32 pass of ``mean_max_cosine``.

The kernels of the matcher's cheap passes and their error bounds live in ``_kernels``, the passes
themselves in ``_passes``. Values that decide an answer are computed in fp64 on the CPU.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch

from benchmark.errors import CanonBenchError
from benchmark.metrics.matching._kernels import exact_matmul

logger = logging.getLogger(__name__)

# Bytes of fp32 cosine block kept alive at once (rows × columns × 4).
DEFAULT_BLOCK_BYTES = 256 * 2**20


def as_rows64(x: Any, name: str) -> torch.Tensor:
    """Return ``x`` (numpy array or torch tensor, shape [rows, dim], any float dtype) as CPU fp64."""
    return as_float_rows(x, name).to(torch.float64)


def as_float_rows(x: Any, name: str) -> torch.Tensor:
    """Validate ``x`` (numpy array or torch tensor, [rows, dim]) and return it on the CPU as fp32 or
    fp64 (fp32 stays fp32: :func:`unit_rows64` upcasts exactly while scaling, saving a copy)."""
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
    t = t.to(device="cpu")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float64)
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise CanonBenchError(f"empty dictionary of shape {tuple(t.shape)}", field=name)
    return t


def unit_rows64(rows64: torch.Tensor, name: str = "dictionary") -> tuple[torch.Tensor, np.ndarray]:
    """Scale each row to unit L2 norm in fp64; zero rows stay zero. Returns (unit rows, live mask).

    ``rows64`` may be fp32: every fp32 value is exact in fp64, and the norm and the division are
    computed in fp64."""
    norms = torch.linalg.vector_norm(rows64, dim=1, dtype=torch.float64)
    # a NaN or infinite entry makes its row norm non-finite (checking norms is far cheaper)
    bad = ~torch.isfinite(norms)
    if bool(bad.any()):
        raise CanonBenchError(f"row {int(bad.nonzero()[0, 0])} contains NaN or infinite values "
                              f"(or overflows fp64)", field=name)
    live = norms > 0
    # a copy divided in place: a mixed fp32 / fp64 division takes ~1.8x as long (0.046 s against 0.026 s for
    # 16K × 768 on 2 threads), same values
    unit = rows64.to(torch.float64, copy=True)
    unit.div_(torch.where(live, norms, torch.ones_like(norms))[:, None])
    return unit, live.numpy()


def resolve_device(device: str | torch.device | None) -> torch.device:
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CanonBenchError("CUDA was requested but is not available", field="device")
    return dev


def block_rows_for(n_cols: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    return int(max(64, min(8192, block_bytes // (4 * max(1, n_cols)))))


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


def entry_cosines64(a64: torch.Tensor, b64: torch.Tensor, keys: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """Exact (fp64) cosines of the entries ``keys`` = row·n + col (sorted, unique), n = len(b64).

    A sampled dense-dense product (``torch.sparse.sampled_addmm`` on the CSR pattern of the keys):
    each value is one fp64 dot product, without gathering copies of the rows (≈10× faster than
    gathering both operands for 10⁵–10⁶ entries)."""
    n = b64.shape[0]
    out = np.empty(len(keys))
    b_t = b64.T
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        rows, cols = part // n, part % n
        first, last = int(rows[0]), int(rows[-1]) + 1
        crow = np.searchsorted(rows, np.arange(first, last + 1))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            pattern = torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(cols),
                                              torch.zeros(len(part), dtype=torch.float64),
                                              size=(last - first, n), check_invariants=False)
        out[start : start + len(part)] = torch.sparse.sampled_addmm(pattern, a64[first:last], b_t, beta=0.0).values().numpy()
    return out


def dense_cosines64(a64: torch.Tensor, b64: torch.Tensor) -> np.ndarray:
    """Exact (fp64) cosine matrix between two (small) sets of unit rows."""
    return (a64 @ b64.T).numpy()


def row_max_cosines(
    a32: torch.Tensor, b32: torch.Tensor, a64: torch.Tensor, b64: torch.Tensor, block_rows: int, top: int = 4
) -> np.ndarray:
    """Per row of ``a``: the largest cosine with any row of ``b`` (fp32 search, fp64 recompute of the top few)."""
    m = a32.shape[0]
    top = min(top, b32.shape[0])
    cand = np.empty((m, top), dtype=np.int64)
    with exact_matmul():
        for start in range(0, m, block_rows):
            block = a32[start : start + block_rows] @ b32.T
            cand[start : start + len(block)] = torch.topk(block, top, dim=1).indices.cpu().numpy()
    rows = np.repeat(np.arange(m), top)
    vals = edge_cosines64(a64, b64, rows, cand.ravel()).reshape(m, top)
    return vals.max(axis=1)


# --- the candidate-pass API other metrics use (incoherence), on top of ``_kernels`` ----------------
# Kept so that metrics outside the matcher need not follow its internals; the kernel choice, the
# self-checks and the error bounds are ``_kernels``' (one implementation).

from benchmark.metrics.matching import _kernels  # noqa: E402  (after the helpers above; no cycle)

CANDIDATE_PRECISIONS = _kernels.CANDIDATE_PRECISIONS
fp32_cosine_error_bound = _kernels.fp32_cosine_error_bound
exact_fp32_matmul = _kernels.exact_matmul


def int8_matmul_is_exact(device: str = "cpu") -> bool:
    """Whether ``torch._int_mm`` on ``device`` passes the int8 self-check (exact int32 sums)."""
    return _kernels.kernel_verified("int8", device, 1024)


def candidate_operands(a64: torch.Tensor, b64: torch.Tensor, device: torch.device,
                       precision: str = "auto") -> _kernels.KernelOperands:
    """Kernel operands for ``a64 @ b64.T`` (fp64 unit rows) with their rigorous per-row error bound
    ``row_err``; ``precision`` is "auto" (chosen at run time) or a forced kind (see ``_kernels``)."""
    return _kernels.kernel_operands(a64, b64, device, precision)


def candidate_block(ops: _kernels.KernelOperands, rows: slice | torch.Tensor) -> torch.Tensor:
    """Raw kernel values of ``ops.a[rows]`` against every column: int32 or fp32 (bf16 widened, which is
    exact), to be multiplied by ``ops.scale``."""
    raw = ops.raw(rows)
    return raw if raw.dtype in (torch.int32, torch.float32) else raw.to(torch.float32)
