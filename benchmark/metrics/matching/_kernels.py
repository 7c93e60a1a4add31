"""The arithmetic of the cheap passes over all m·n cosines: int8, bf16 or fp32, chosen at run time.

Every kernel comes with a rigorous per-row bound on |kernel value − exact cosine| (``row_err``), so a
kernel only changes speed, never the answer. Which kernels are offered is decided once per process
and device (cached):

1. CPU flags from /proc/cpuinfo (``amx_int8``, ``avx512_vnni``, ``avx_vnni`` for int8; ``amx_bf16``,
   ``avx512_bf16`` for bf16) say which low-precision kinds have native instructions; kinds without
   them are emulated and are not timed. Where the flags cannot be read (not Linux/x86), every kind
   is tried. fp32 is always a candidate.
2. A self-check proves the property each bound rests on, on this machine's kernel: int8 sums are
   exact int32 (no int16 saturation); bf16 products are accumulated in at least fp32 and only the
   result is rounded to bf16 (checked on sums with heavy cancellation, where bf16 partial sums
   would show). A kind that fails is never used.
3. One matmul of each remaining kind, shaped like a block of the pass (up to 1024 × 16384 outputs,
   written into a reused output as the passes write theirs), is timed (the best after a warm-up,
   until two calls agree; ~0.2 s in all for 16K dictionaries at d = 768 on an AMX machine, ~10 ms
   where one kind qualifies) and the fastest wins; a kind with a tighter bound (fp32 < bf16 < int8)
   is preferred within PREFER_TIGHTER_WITHIN (1.5×) of the fastest. Nothing measured on one machine
   is hard-coded.

``candidates=`` (argument) or the ``CANONBENCH_MATCH_KERNEL`` environment variable force a kind
(tests do); a forced kind that fails its self-check raises.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from benchmark.errors import CanonBenchError

logger = logging.getLogger(__name__)

KINDS = ("int8", "bf16", "fp32")
CANDIDATE_PRECISIONS = ("auto", *KINDS)
ENV_VAR = "CANONBENCH_MATCH_KERNEL"
# Kinds whose bound is tighter come later in KINDS; prefer them when this close to the fastest. A
# looser bound costs more than its products: at 16K, d = 768, 30 % unshared int8's bound (0.023 against
# bf16's 0.0075) left 5,187 rows to row passes against 3,709, 4.2 s against 3.1 s, while its probe
# product took 1.5-2.6x bf16's time on an AMX machine and came within 1.1x of it on a noisy run.
PREFER_TIGHTER_WITHIN = 1.5
# int8 falls back to the next kind when its bound is looser than this (outlier dimensions).
INT8_MAX_ROW_ERROR = 0.05
# Largest |raw int8 dot product| is dim · 127², which must fit the int32 accumulator.
INT8_MAX_DIM = (2**31 - 1) // (127 * 127)
U32 = 2.0**-24  # unit roundoff of fp32
U_BF16 = 2.0**-8  # unit roundoff of bf16 (8-bit significand, round to nearest)
NATIVE_FLAGS = {"int8": ("amx_int8", "avx512_vnni", "avx_vnni"), "bf16": ("amx_bf16", "avx512_bf16")}


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU feature flags of the first processor in ``path``, or None when they cannot be read."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def _device_key(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return device.type


@contextlib.contextmanager
def exact_matmul() -> Iterator[None]:
    """Forbid TF32 and reduced-precision (bf16/fp16) reductions inside matmuls, so the bounds hold."""
    old_precision = torch.get_float32_matmul_precision()
    cuda_mm = torch.backends.cuda.matmul
    old = (cuda_mm.allow_tf32, cuda_mm.allow_bf16_reduced_precision_reduction)
    torch.set_float32_matmul_precision("highest")
    cuda_mm.allow_tf32 = False
    cuda_mm.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old_precision)
        cuda_mm.allow_tf32, cuda_mm.allow_bf16_reduced_precision_reduction = old


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Self-checks and probes run on one CPU thread: on a loaded machine, waiting for a descheduled
    second thread costs milliseconds per call and would swamp the small matmuls being timed."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def output_dtype(kind: str) -> torch.dtype:
    """The type of ``kind``'s raw products: int32 for int8, bf16 for bf16, fp32 for fp32."""
    return {"int8": torch.int32, "bf16": torch.bfloat16}.get(kind, torch.float32)


def raw_matmul(kind: str, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b.T in the kernel's own arithmetic: int32 for int8, bf16 for bf16, fp32 for fp32; into ``out``
    (contiguous [len(a), len(b)] of that type) when given."""
    if kind == "int8":
        return torch._int_mm(a, b.T) if out is None else torch._int_mm(a, b.T, out=out)
    return a @ b.T if out is None else torch.matmul(a, b.T, out=out)


# --- self-checks ---------------------------------------------------------------------------------


def _int8_exact(device: torch.device, dim: int) -> bool:
    """``torch._int_mm`` returns exact int32 dot products (no int16 saturation), extreme codes included."""
    if device.type != "cpu" or dim > INT8_MAX_DIM:
        return False  # CUDA int8 kernels have shape restrictions; fp32/bf16 are used there
    gen = torch.Generator().manual_seed(0)
    for d in sorted({5, 1024, min(max(dim, 1), INT8_MAX_DIM)}):
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
        if not np.array_equal(got, a.numpy().astype(np.int64) @ b.numpy().astype(np.int64).T):
            return False
    return True


def _bf16_fp32_accumulation(device: torch.device, dim: int) -> bool:
    """bf16 @ bf16 sums the (exact) products in at least fp32 and rounds only the result to bf16:
    |out − â·b̂| ≤ 2⁻⁸·|â·b̂|·(1 + γ) + γ·Σ|â_k b̂_k| with γ = γ_dim of fp32, on sums with heavy
    cancellation (partial sums ≈ ½ Σ|â_k b̂_k| above a result near 0), where bf16 partial sums or a
    bf16 accumulator would exceed the bound by orders of magnitude."""
    gen = torch.Generator().manual_seed(1)
    for d in sorted({64, 768, max(2, dim)}):
        a = torch.randn(64, d, dtype=torch.float64, generator=gen)
        b = torch.randn(48, d, dtype=torch.float64, generator=gen)
        # cancellation: b_j = |a_j| with the sign pattern +…+ −…− so the running sum climbs, then falls
        half = d // 2
        b[:16] = a[:16].abs()
        a[:16, :half] = a[:16, :half].abs()
        a[:16, half:] = -a[:16, half:].abs()
        a = torch.nn.functional.normalize(a, dim=1)
        b = torch.nn.functional.normalize(b, dim=1)
        ah, bh = a.to(torch.bfloat16), b.to(torch.bfloat16)
        try:
            with exact_matmul():
                out = raw_matmul("bf16", ah.to(device), bh.to(device)).to("cpu", torch.float64)
        except RuntimeError:
            return False
        ref = ah.double() @ bh.double().T  # products exact; fp64 sum error ≪ the tolerances below
        absprod = ah.double().abs() @ bh.double().abs().T
        gamma = d * U32 / (1 - d * U32)
        bound = U_BF16 * ref.abs() * (1 + gamma) + gamma * absprod * 1.01 + 1e-30
        if not bool(((out - ref).abs() <= bound).all()):
            return False
    return True


@functools.lru_cache(maxsize=None)
def kernel_verified(kind: str, device: str = "cpu", dim: int = 768) -> bool:
    """Whether ``kind`` passes its self-check on ``device`` for rows of length ``dim`` (cached)."""
    dev = torch.device(device)
    with _one_thread():
        if kind == "int8":
            return _int8_exact(dev, dim)
        if kind == "bf16":
            return _bf16_fp32_accumulation(dev, dim)
    return kind == "fp32"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: Largest probe: about the pass's shape. Smaller products hide what decides at scale: on one AMX
#: machine, into a reused output, int8 and bf16 took the same time per output at 1024 × 8192 (0.65 ns)
#: while a 16K × 16K pass's products took 0.31 s in int8 against 0.17 s in bf16 (2 threads); int8
#: slows as the columns grow (1.08 ns at 1024 × 16384, bf16 0.77 ns).
PROBE_ROWS, PROBE_COLS = 1024, 16384
SMALL_PROBE = (128, 512)
#: A kind this many times slower than the best so far cannot win: it is not timed further. A first call's
#: own slowness must not condemn a kind (bf16's at d = 2304 ran 2.6x its steady time), fp32 on AMX is ~8x.
LOSER_FACTOR = 4.0
#: Timed calls after the warm-up: until two in a row agree within PROBE_AGREE, at most PROBE_MAX_TIMED.
PROBE_AGREE, PROBE_MAX_TIMED = 1.25, 6


@functools.lru_cache(maxsize=None)
def probe_timings(device: str = "cpu", dim: int = 768, rows: int = SMALL_PROBE[0],
                  cols: int = SMALL_PROBE[1]) -> dict[str, float]:
    """Seconds for one [rows, dim] × [dim, cols] matmul of each native, verified kind into a reused
    output (the best after a warm-up, timed until two calls in a row agree). A kind whose product on an
    eighth of the rows, scaled up (large probes only), or whose warm-up call took LOSER_FACTOR times
    the best so far cannot win and is not timed further (that time is recorded). Products up to the
    small probe's size run on one CPU thread (on a loaded machine a descheduled second thread costs
    milliseconds, which would swamp them); larger ones on the threads the pass will use. Where only
    one kind qualifies there is nothing to choose: it is timed on the small probe, for the record."""
    dev = torch.device(device)
    flags = cpu_flags() if dev.type == "cpu" else None
    kinds = [kind for kind in KINDS
             if (kind == "fp32" or flags is None or any(f in flags for f in NATIVE_FLAGS[kind]))  # else emulated
             and kernel_verified(kind, device, dim)]
    if len(kinds) == 1 or rows * cols <= SMALL_PROBE[0] * SMALL_PROBE[1]:
        rows, cols = min(rows, SMALL_PROBE[0]), min(cols, SMALL_PROBE[1])
        thread_scope = _one_thread()
    else:
        thread_scope = contextlib.nullcontext()
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(rows, dim, generator=gen) - 0.5
    convert = {
        "int8": lambda t: t.mul(254).round().to(torch.int8),
        "bf16": lambda t: t.to(torch.bfloat16),
        "fp32": lambda t: t,
    }
    out: dict[str, float] = {}
    with thread_scope:
        for kind in kinds:
            x = convert[kind](a).to(dev)
            # the columns repeat the rows: values do not change a product's speed, and drawing and
            # converting 16384 × 768 numbers per kind took a quarter of the probe
            y = x.repeat((cols + rows - 1) // rows, 1)[:cols].contiguous()
            # into one output buffer, as the passes write their blocks (a fresh output per call pays its
            # page faults: int8's 32 MiB int32 output took 0.015 s fresh and 0.006 s reused)
            buf = torch.empty(x.shape[0], y.shape[0], dtype=output_dtype(kind), device=dev)

            def timed(rows: torch.Tensor) -> float:
                _sync(dev)
                start = time.perf_counter()
                raw_matmul(kind, rows, y, buf[: rows.shape[0]])
                _sync(dev)
                return time.perf_counter() - start

            times = []
            with exact_matmul():
                if out and x.shape[0] * y.shape[0] >= PROBE_ROWS * PROBE_COLS // 4:
                    # a kind that cannot win shows it on an eighth of the rows (timed after a warm-up at that
                    # size): fp32's one full warm-up call was 0.05 s of a 0.17 s probe on an AMX machine.
                    # Only on large probes: a small product's fixed costs, scaled up, would condemn any kind
                    part = x[: x.shape[0] // 8]
                    estimate = min(timed(part), timed(part)) * x.shape[0] / part.shape[0]
                    if estimate > LOSER_FACTOR * min(out.values()):
                        out[kind] = estimate
                        continue
                times.append(timed(x))  # warm-up
                if out and times[0] > LOSER_FACTOR * min(out.values()):
                    out[kind] = times[0]
                    continue
                # first calls of a shape can run slow for a while (bf16 at d = 2304 on an AMX machine:
                # 0.099, 0.082, 0.047, 0.043 s; its steady 0.036 s ties int8): time until two calls agree
                while len(times) < 1 + PROBE_MAX_TIMED:
                    times.append(timed(x))
                    if len(times) >= 3 and max(times[-2:]) <= PROBE_AGREE * min(times[-2:]):
                        break
            out[kind] = min(times[1:])
    return out


@dataclass(frozen=True)
class KernelChoice:
    kind: str
    reason: str
    timings: dict = field(default_factory=dict)  # probe seconds per kind that was timed
    flags: tuple = ()  # the CPU flags that informed the choice


def choose_kernel(device: torch.device, dim: int, requested: str = "auto",
                  probe: tuple[int, int] = SMALL_PROBE) -> KernelChoice:
    """The candidate-pass kernel for ``device`` and rows of length ``dim`` (see the module doc), timed
    on a ``probe`` = (rows, cols) product (:func:`probe_timings`)."""
    if requested not in CANDIDATE_PRECISIONS:
        raise CanonBenchError(f"unknown candidates {requested!r} {CANDIDATE_PRECISIONS}", field="candidates")
    reason = "argument"
    if requested == "auto" and os.environ.get(ENV_VAR):
        requested, reason = os.environ[ENV_VAR].strip().lower(), ENV_VAR
        if requested not in CANDIDATE_PRECISIONS:
            raise CanonBenchError(f"{ENV_VAR}={requested!r} is not one of {CANDIDATE_PRECISIONS}", field="candidates")
    key = _device_key(device)
    flags = cpu_flags() if device.type == "cpu" else None
    relevant = tuple(sorted(f for f in (flags or ()) if any(f in v for v in NATIVE_FLAGS.values())))
    if requested != "auto":
        if not kernel_verified(requested, key, dim):
            raise CanonBenchError(f"{requested} candidates failed their self-check on {key} (dim {dim})",
                                  field="candidates")
        return KernelChoice(requested, f"forced by {reason}", {}, relevant)
    timings = probe_timings(key, dim, *probe)
    fastest = min(timings, key=timings.get)
    kind = fastest
    for tighter in KINDS[KINDS.index(fastest) + 1:]:
        if tighter in timings and timings[tighter] <= PREFER_TIGHTER_WITHIN * timings[fastest]:
            kind = tighter
    return KernelChoice(kind, "fastest verified kernel in the self-check", dict(timings), relevant)


# --- operands and their error bounds -------------------------------------------------------------


def fp32_cosine_error_bound(dim: int) -> float:
    """Upper bound on |fp32 cosine − exact cosine| for unit rows of length ``dim``.

    Rounding each fp64 unit vector to fp32 moves the product by at most (2u + u²); any fp32
    summation order adds at most γ_dim = dim·u/(1 − dim·u) (Higham, Thm 3.5) times Σ|a_k b_k| ≤ 1+3u.
    The 1.5 factor and the additive term cover the small remaining products; u = 2⁻²⁴.
    """
    gamma = dim * U32 / (1 - dim * U32)
    return 1.5 * (gamma * (1 + 3 * U32) + 2 * U32 + U32 * U32) + 1e-9


@dataclass
class KernelOperands:
    """Operands of the cheap passes and a rigorous bound on their values.

    Kernel value of entry (i, j) = ``scale · raw(a[i], b[j])`` (int32 sums of int8 codes, bf16 or fp32
    products as the kernel returns them); for every column j, |kernel value − exact cosine| ≤ ``row_err[i]``.
    """

    kind: str
    a: torch.Tensor  # [m, d] on the device
    b: torch.Tensor  # [n, d]
    scale: float
    row_err: np.ndarray  # [m] fp64
    choice: KernelChoice | None = None
    # one output buffer that the passes' blocks reuse (shared with transposed()): a fresh product per
    # block pays a page fault per 4 KiB of it, 0.36 s of a 16K × 16K bf16 pass's products on 2 threads
    # against 0.18 s into a reused buffer
    _scratch: list = field(default_factory=lambda: [None], repr=False, compare=False)

    def raw(self, rows: slice | torch.Tensor, cols: slice | torch.Tensor | None = None, *,
            reuse: bool = False) -> torch.Tensor:
        """[len(rows), len(cols)] raw products (every column by default). ``reuse``: into the shared
        buffer, which the next ``reuse`` call overwrites."""
        a, b = self.a[rows], (self.b if cols is None else self.b[cols])
        return raw_matmul(self.kind, a, b, self.buffer(a.shape[0], b.shape[0]) if reuse else None)

    def raw_t(self, cols: slice | torch.Tensor, *, reuse: bool = False) -> torch.Tensor:
        """[len(cols), m]: the transposed block of the listed columns against every row (``reuse``: as
        :meth:`raw`)."""
        b = self.b[cols]
        return raw_matmul(self.kind, b, self.a, self.buffer(b.shape[0], self.a.shape[0]) if reuse else None)

    def buffer(self, rows: int, cols: int) -> torch.Tensor:
        """A [rows, cols] view of the shared output buffer (grown when too small)."""
        buf = self._scratch[0]
        if buf is None or buf.numel() < rows * cols or buf.device != self.a.device:
            buf = self._scratch[0] = torch.empty(rows * cols, dtype=output_dtype(self.kind), device=self.a.device)
        return buf[: rows * cols].view(rows, cols)

    @property
    def integer(self) -> bool:
        return self.kind == "int8"

    def transposed(self) -> "KernelOperands":
        """The same kernel with the roles of rows and columns swapped (row_err then only serves
        the fp32 rounding estimates of the passes, which use its maximum)."""
        return KernelOperands(self.kind, self.b, self.a, self.scale, np.full(self.b.shape[0], float(self.row_err.max())),
                              self.choice, self._scratch)


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


def _round_bf16(unit64: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, np.ndarray]:
    """bf16 copies of unit rows and err[i] ≥ ‖x_i − x̂_i‖ (x = the fp64 rows, x̂ = their bf16 copies).

    Measured in fp32 (half the memory traffic of fp64): x̂ is the bf16 rounding of y = fp32(x), so y − x̂
    is exact in fp32 (Sterbenz: x̂ lies within a factor 2 of y), ‖x − y‖ ≤ 2⁻²⁴‖x‖ ≤ 2⁻²⁴(1 + 1e-6) for
    unit rows, and the fp32 norm is within a factor 1 + (dim + 4)·2⁻²⁴ of the exact one. Any codes keep
    the bound valid: it is measured, not assumed."""
    codes = torch.empty(unit64.shape, dtype=torch.bfloat16)
    err = np.empty(unit64.shape[0])
    for start in range(0, unit64.shape[0], chunk):
        rows32 = unit64[start : start + chunk].to(torch.float32)
        h = rows32.to(torch.bfloat16)
        codes[start : start + chunk] = h
        rows32 -= h.to(torch.float32)
        err[start : start + chunk] = torch.linalg.vector_norm(rows32, dim=1).numpy()
    growth = 1.0 + (unit64.shape[1] + 4) * U32
    # + 1e-37: components in fp32's subnormal range round with an absolute error ≤ 2⁻¹⁵⁰ instead
    return codes, err * growth * (1 + 1e-9) + U32 * (1 + 1e-6) + 1e-37


def kernel_operands(a64: torch.Tensor, b64: torch.Tensor, device: torch.device, requested: str = "auto") -> KernelOperands:
    """Operands for the passes over ``a64 @ b64.T`` (fp64 unit rows) with their rigorous error bounds.

    int8: exact int32 sums of int8 codes; the only error is quantisation:
      a·b − â·b̂ = (a − â)·b + â·(b − b̂) ⇒ |cos − scale·raw| ≤ e_a + (1 + e_a)·E_b (Cauchy-Schwarz,
      e_a = ‖a − â‖ measured per row, E_b = max ‖b − b̂‖).
    bf16: the same quantisation term for bf16 rounding, plus the verified arithmetic: products of
      bf16 numbers are exact in fp32, any fp32 summation order adds ≤ γ_d·Σ|â_k b̂_k| ≤ γ_d·‖â‖‖b̂‖,
      and the bf16 result adds ≤ 2⁻⁸·|sum| ≤ 2⁻⁸(1 + γ_d)‖â‖‖b̂‖, with ‖â‖ ≤ 1 + e_a, ‖b̂‖ ≤ 1 + E_b.
    fp32: :func:`fp32_cosine_error_bound`.
    Every bound also carries dim·2⁻⁵⁰ for the fp64 rounding of the exact cosines themselves.
    "auto" takes :func:`choose_kernel`'s kind; an int8 bound above INT8_MAX_ROW_ERROR (outlier
    dimensions) moves "auto" to the next verified kind.
    """
    dim = a64.shape[1]
    choice = choose_kernel(device, dim, requested, (min(a64.shape[0], PROBE_ROWS), min(b64.shape[0], PROBE_COLS)))
    key = _device_key(device)
    # after the chosen kind: the others by probe time (untimed ones last), fp32 always available
    others = sorted((k for k in KINDS if k != choice.kind and k != "int8"),
                    key=lambda k: (k not in choice.timings, choice.timings.get(k, 0.0), k != "fp32"))
    order = [choice.kind] + others
    for kind in order:
        if kind != choice.kind and not kernel_verified(kind, key, dim):
            continue
        exact_slack = 1e-9 + dim * 2.0**-50
        if kind == "int8":
            qa, sa, err_a = _quantize_int8(a64)
            qb, sb, err_b = _quantize_int8(b64)
            e_b = float(err_b.max()) if len(err_b) else 0.0
            row_err = (err_a + (1.0 + err_a) * e_b) * (1 + 1e-9) + exact_slack
            if choice.reason.startswith("forced") or float(row_err.max()) <= INT8_MAX_ROW_ERROR:
                return KernelOperands("int8", qa.to(device), qb.to(device), sa * sb, row_err, choice)
            logger.info("int8 candidate bound %.3g too loose (outlier dimensions?); trying the next kernel", row_err.max())
            choice = KernelChoice(choice.kind, choice.reason + "; int8 bound too loose", choice.timings, choice.flags)
            continue
        if kind == "bf16":
            ha, err_a = _round_bf16(a64)
            hb, err_b = _round_bf16(b64)
            e_b = float(err_b.max()) if len(err_b) else 0.0
            gamma = dim * U32 / (1 - dim * U32)
            arith = (gamma + U_BF16 * (1 + gamma)) * (1 + err_a) * (1 + e_b)
            row_err = (err_a + (1.0 + err_a) * e_b + arith) * (1 + 1e-9) + exact_slack
            return KernelOperands("bf16", ha.to(device), hb.to(device), 1.0, row_err, _with_kind(choice, "bf16"))
        err = fp32_cosine_error_bound(dim) + exact_slack
        return KernelOperands("fp32", a64.to(device, torch.float32), b64.to(device, torch.float32), 1.0,
                              np.full(a64.shape[0], err), _with_kind(choice, "fp32"))
    raise AssertionError("fp32 is always available")


def _with_kind(choice: KernelChoice, kind: str) -> KernelChoice:
    if choice.kind == kind:
        return choice
    return KernelChoice(kind, choice.reason, choice.timings, choice.flags)
