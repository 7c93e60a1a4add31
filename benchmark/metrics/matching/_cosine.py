"""Unit-norm rows and blocked cosine passes (the full cosine matrix never exists).

Every pass computes blocks ``rows_of_a[block] @ rows_of_b.T`` on the requested device and keeps only
small per-row / per-column summaries. The first (candidate) pass uses int8 codes with exact int32
sums where the CPU allows it (about 2× fp32 on AVX-512 VNNI), else fp32; later passes use fp32.
Values that decide the answer are recomputed in fp64 on the CPU; approximate values are only ever
used together with a rigorous error bound (:func:`candidate_operands`, :func:`fp32_cosine_error_bound`).
"""

from __future__ import annotations

import contextlib
import functools
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
    unit = torch.div(rows64, torch.where(live, norms, torch.ones_like(norms))[:, None])  # fp64 result
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


# Largest |raw int8 dot product| is dim · 127², which must fit the int32 accumulator.
INT8_MAX_DIM = (2**31 - 1) // (127 * 127)
# "auto" falls back to fp32 candidates when the int8 bound is looser than this (outlier dimensions).
INT8_MAX_ROW_ERROR = 0.05
CANDIDATE_PRECISIONS = ("auto", "int8", "fp32")


@dataclass
class CandidateOperands:
    """Operands of the cheap candidate pass and a rigorous bound on the error of its values.

    Candidate value of entry (i, j) = ``scale · (a[i] · b[j])`` computed with ``a``, ``b`` as stored
    (int8 with an exact int32 accumulator, or fp32). For every column j,
    |candidate value − exact cosine| ≤ ``row_err[i]``.
    """

    kind: str  # "int8" or "fp32"
    a: torch.Tensor  # [m, d] int8 or fp32, on the device
    b: torch.Tensor  # [n, d]
    scale: float
    row_err: np.ndarray  # [m] fp64


def _quantize_int8(unit64: torch.Tensor, chunk: int = 2048) -> tuple[torch.Tensor, float, np.ndarray]:
    """Symmetric int8 codes of unit rows with ONE scale for the whole dictionary (so raw int32 products
    keep the order of the cosines within rows and within columns).

    Returns (codes, scale, err) with err[i] ≥ ‖x_i − x̂_i‖ for x̂ = scale · codes (x = the fp64 rows).
    Any integer codes keep the bound valid: it is measured, not assumed. The work is done in fp32
    (half the memory traffic): the scale has 16 significant bits, so x̂ is exact in fp32; rounding
    x to fp32 moves it by ≤ 2⁻²⁴‖x‖ ≤ 2⁻²⁴, and the fp32 difference and norm are within a factor
    1 + (dim + 4)·2⁻²⁴ of the exact ones; the 1.01 factor and 1e-6 cover both (dim < 10⁵).
    No clamp is needed: |x| ≤ max_abs ≤ 127·scale, so |x·(1/scale)| < 127.5 even after fp32 rounding.
    """
    if unit64.numel():
        lo, hi = torch.aminmax(unit64)
        max_abs = max(float(hi), -float(lo))
    else:
        max_abs = 0.0
    if max_abs > 0:
        mantissa, exponent = np.frexp(max_abs / 127.0)
        scale = float(np.ldexp(np.ceil(mantissa * 2**16) / 2**16, exponent))  # ≥ max_abs / 127
    else:
        scale = 1.0
    codes = torch.empty(unit64.shape, dtype=torch.int8)
    err = np.empty(unit64.shape[0])
    for start in range(0, unit64.shape[0], chunk):
        rows32 = unit64[start : start + chunk].to(torch.float32)
        q = torch.mul(rows32, 1.0 / scale).round_()
        codes[start : start + chunk] = q
        torch.add(rows32, q, alpha=-scale, out=q)  # x − x̂ (q·scale is exact)
        err[start : start + chunk] = torch.linalg.vector_norm(q, dim=1).numpy()
    return codes, scale, err * 1.01 + 1e-6


@functools.lru_cache(maxsize=None)
def int8_matmul_is_exact(device: str = "cpu") -> bool:
    """Whether ``torch._int_mm`` on ``device`` returns exact int32 dot products (no int16 saturation
    inside the kernel), checked on extreme and random codes against an int64 reference."""
    if device != "cpu":
        return False  # CUDA's int8 kernels have shape restrictions; the fp32 pass is used there
    gen = torch.Generator().manual_seed(0)
    d = 1024
    a = torch.randint(-127, 128, (48, d), dtype=torch.int8, generator=gen)
    b = torch.randint(-127, 128, (40, d), dtype=torch.int8, generator=gen)
    a[:8] = 127
    a[8:16] = -127
    b[:8] = 127
    b[8:16, ::2] = -127
    b[8:16, 1::2] = 127
    try:
        got = torch._int_mm(a, b.T).numpy().astype(np.int64)
    except (RuntimeError, AttributeError):
        return False
    want = a.numpy().astype(np.int64) @ b.numpy().astype(np.int64).T
    return bool(np.array_equal(got, want))


def candidate_operands(
    a64: torch.Tensor, b64: torch.Tensor, device: torch.device, precision: str = "auto"
) -> CandidateOperands:
    """Operands for the candidate pass over ``a64 @ b64.T`` (fp64 unit rows) and their error bound.

    int8: exact int32 sums of int8 products, so the only error is the quantisation:
    a·b − â·b̂ = (a − â)·b + â·(b − b̂), hence |cos − scale·raw| ≤ ‖a − â‖·‖b‖ + ‖â‖·‖b − b̂‖ (Cauchy-
    Schwarz) ≤ ‖a − â‖ + (1 + ‖a − â‖)·max ‖b − b̂‖ for unit rows. ``precision="auto"`` picks int8 on CPUs
    where the int8 kernel is verified exact and the bound stays below INT8_MAX_ROW_ERROR, else fp32.
    """
    if precision not in CANDIDATE_PRECISIONS:
        raise CanonBenchError(f"unknown candidate precision {precision!r} {CANDIDATE_PRECISIONS}", field="candidates")
    dim = a64.shape[1]
    use_int8 = precision == "int8" or (
        precision == "auto" and device.type == "cpu" and dim <= INT8_MAX_DIM and int8_matmul_is_exact("cpu")
    )
    if precision == "int8" and (device.type != "cpu" or dim > INT8_MAX_DIM or not int8_matmul_is_exact("cpu")):
        raise CanonBenchError(f"int8 candidates need a CPU with exact int8 matmuls and dim ≤ {INT8_MAX_DIM}",
                              field="candidates")
    if use_int8:
        qa, sa, err_a = _quantize_int8(a64)
        qb, sb, err_b = _quantize_int8(b64)
        # unit rows: ‖b‖ ≤ 1 + 1e-12 and ‖â‖ ≤ ‖a‖ + ‖a − â‖; the relative slack covers the fp64
        # rounding of scale·raw, the absolute one that of the exact cosines themselves (≤ dim·2⁻⁵³)
        row_err = (err_a + (1.0 + err_a) * float(err_b.max())) * (1 + 1e-9) + 1e-9 + dim * 2.0**-50
        if precision == "int8" or float(row_err.max()) <= INT8_MAX_ROW_ERROR:
            return CandidateOperands("int8", qa.to(device), qb.to(device), sa * sb, row_err)
        logger.info("int8 candidate bound %.3g too loose (outlier dimensions?); using fp32", row_err.max())
    err = fp32_cosine_error_bound(dim)
    return CandidateOperands("fp32", a64.to(device, torch.float32), b64.to(device, torch.float32), 1.0,
                             np.full(a64.shape[0], err))


def candidate_block(ops: CandidateOperands, rows: slice | torch.Tensor) -> torch.Tensor:
    """Raw candidate values of ``ops.a[rows]`` against every column (int32 or fp32; times ops.scale)."""
    if ops.kind == "int8":
        return torch._int_mm(ops.a[rows], ops.b.T)
    return ops.a[rows] @ ops.b.T


@dataclass
class CandidatePass:
    """Summaries of one full blocked pass over the candidate values (fp64 copies of them)."""

    top_cols: np.ndarray  # [m, min(k, n)] int64, columns of each row's k largest candidate values
    top_vals: np.ndarray  # [m, min(k + 1, n)] float64, the k + 1 largest candidate values, descending
    col_max: np.ndarray  # [n] float64, each column's largest candidate value


def candidate_pass(ops: CandidateOperands, k: int, block_rows: int, progress: bool = False) -> CandidatePass:
    """Row-wise top-k columns, top-(k+1) values and column-wise maxima of the candidate values."""
    from tqdm.auto import tqdm

    m, n = ops.a.shape[0], ops.b.shape[0]
    k_cols, k_vals = min(k, n), min(k + 1, n)
    top_cols = np.empty((m, k_cols), dtype=np.int64)
    top_raw = np.empty((m, k_vals), dtype=np.float64)
    col_max = None
    starts = range(0, m, block_rows)
    with exact_fp32_matmul():
        for start in tqdm(starts, desc="cosine blocks", disable=not progress, leave=False):
            block = candidate_block(ops, slice(start, start + block_rows))
            rows = slice(start, start + len(block))
            # amax is several times faster than max(dim=0), which also computes indices
            blk_max = block.amax(dim=0)
            col_max = blk_max if col_max is None else torch.maximum(col_max, blk_max, out=col_max)
            if k_cols == 1 and k_vals == 2:
                # top-2 values without topk (about 1.5× cheaper): the arg-max, then the maximum of the
                # row with that one entry masked (a tie leaves an equal value, as topk would report)
                first = block.argmax(dim=1)
                arange = torch.arange(len(block), device=block.device)
                top_raw[rows, 0] = block[arange, first].cpu().numpy()
                lowest = torch.iinfo(block.dtype).min if not block.is_floating_point() else -torch.inf
                block[arange, first] = lowest
                top_raw[rows, 1] = block.amax(dim=1).cpu().numpy()
                top_cols[rows, 0] = first.cpu().numpy()
            else:
                vals, cols = torch.topk(block, k_vals, dim=1)
                top_cols[rows] = cols[:, :k_cols].cpu().numpy()
                top_raw[rows] = vals.cpu().numpy()
            del block
    return CandidatePass(top_cols, top_raw * ops.scale, col_max.cpu().numpy().astype(np.float64) * ops.scale)


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
