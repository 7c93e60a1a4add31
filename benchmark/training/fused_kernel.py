"""Build, load and call the fused C++ training kernel (``fused_step.cpp``) for one SAE shape.

The kernel computes a whole step's loss terms and analytic gradients for S small ReLU or TopK SAEs in
one pass over the batch (see the .cpp file's header for the maths and the two ways through a block).
It is compiled at run time with the machine's C++ compiler for the exact shape (``-march=native``,
shape constants baked in), which is what makes its inner loops fully vectorised, and loaded with
:mod:`ctypes`; :mod:`benchmark.native` builds it and caches the build on disk.

Agreement with the torch path (:mod:`benchmark.training.fast_path`): same maths, float32 throughout,
different summation order, so equal to rounding, not bit for bit. Tolerances, tested on constructed
inputs in ``tests/training/test_training.py``: one step's loss terms within atol 1e-6 + rtol 1e-5 and
gradients within atol 1e-6 + rtol 1e-4 of autograd; 200 Adam steps end within atol 1e-4 + rtol 1e-3 of
the torch path's SAEs; at run time a build more than 1e-3 (relative to the largest gradient) away from
the torch path on the real batch is not used. A trained SAE's provenance names the kernel that made it.

Nothing here decides *whether* the kernel is used: :mod:`benchmark.training.kernel_choice` does, from
a timed self-check on the real shapes. Every failure here (no compiler, a failed build, an
unsupported shape) returns ``None`` so that the caller keeps the torch path.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmark import native

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("fused_step.cpp")

#: Samples per thread range are multiples of this: a multiple of every build's lane width (8 floats per
#: vector with AVX2, 16 with AVX-512), so only a range's last vector can be partial.
LANES = 16
MAX_WIDTH = 4096
MAX_D_IN = 256
MAX_TOPK = 16


@dataclass(frozen=True)
class KernelShape:
    """What a build is specialised for: ``d_in`` (a multiple of 16), ``width``, ``k`` (0 = ReLU) and
    whether the backward pass runs per active latent (``sparse``)."""

    d_in: int
    width: int
    k: int
    sparse: bool

    def supported(self) -> str | None:
        """Why this shape cannot be built, or None."""
        if self.d_in % LANES or not 0 < self.d_in <= MAX_D_IN:
            return f"d_in {self.d_in} is not a multiple of {LANES} up to {MAX_D_IN}"
        if not 0 < self.width <= MAX_WIDTH:
            return f"width {self.width} is outside 1..{MAX_WIDTH}"
        if not 0 <= self.k <= min(MAX_TOPK, self.width):
            return f"k {self.k} is outside 0..{MAX_TOPK}"
        return None


class FusedKernel:
    """One loaded build: :meth:`step` adds a batch's gradients to caller-owned buffers."""

    def __init__(self, shape: KernelShape, library: Path):
        self.shape = shape
        self.library = library
        self._lib = ctypes.CDLL(str(library))
        built = (ctypes.c_int * 4)()
        self._lib.sae_fused_shape(built)
        if tuple(built) != (shape.d_in, shape.width, shape.k, int(shape.sparse)):
            raise OSError(f"{library} was built for {tuple(built)}, not {shape}")
        fn = self._lib.sae_fused_step
        fn.restype = None
        fn.argtypes = ([ctypes.c_int, ctypes.c_long, ctypes.c_long, ctypes.c_long] + [ctypes.c_void_p] * 6
                       + [ctypes.c_float, ctypes.c_float] + [ctypes.c_void_p] * 5)
        self._fn = fn
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        self._lock = threading.Lock()

    def _executor(self, threads: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pool_size != threads:
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sae-kernel")
                self._pool_size = threads
            return self._pool

    def step(self, x_BD: torch.Tensor, x_DB: torch.Tensor, enc_SFD: torch.Tensor, bias_SF: torch.Tensor,
             dec_SFD: torch.Tensor, b_dec_SD: torch.Tensor, *, l1_over_B: float, grad_scale: float,
             threads: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        """Gradients of one batch: ``(g_enc [S,F,D], g_bias [S,F], g_dec [S,F,D], g_b_dec [S,D], sums [S,3])``.

        Inputs are contiguous float32 CPU tensors: ``x_BD [B, d_in]`` and the same batch transposed
        ``x_DB [d_in, B]``; ``enc_SFD`` (= W_encᵀ) and ``dec_SFD`` (= W_dec) ``[S, width, d_in]``;
        ``bias_SF`` the effective encoder bias; ``b_dec_SD``. ``g_enc`` / ``g_bias`` are w.r.t. x and
        the effective bias. ``sums[s]`` = (Σ squared residual, number of active latents, Σ z), float64.
        ``threads`` > 1 splits the samples into that many ranges (ctypes releases the GIL); the
        partial sums are added in range order, so a thread count always gives the same numbers."""
        S, F, D = enc_SFD.shape
        B = x_BD.shape[0]
        # the build's shape is baked into its loops: a mismatch would read out of bounds, never just err
        expected = {"x_BD": (B, self.shape.d_in), "x_DB": (self.shape.d_in, B), "enc_SFD": (S, self.shape.width, self.shape.d_in),
                    "bias_SF": (S, self.shape.width), "dec_SFD": (S, self.shape.width, self.shape.d_in), "b_dec_SD": (S, self.shape.d_in)}
        got = {"x_BD": x_BD, "x_DB": x_DB, "enc_SFD": enc_SFD, "bias_SF": bias_SF, "dec_SFD": dec_SFD, "b_dec_SD": b_dec_SD}
        for name, shape in expected.items():
            if tuple(got[name].shape) != shape:
                raise ValueError(f"fused kernel built for {self.shape}: {name} has shape {tuple(got[name].shape)}, not {shape}")
        for t in (x_BD, x_DB, enc_SFD, bias_SF, dec_SFD, b_dec_SD):
            if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
                raise ValueError("fused kernel inputs must be contiguous float32 CPU tensors")
        bounds = _ranges(B, max(1, threads))
        outs = [(torch.zeros(S, F, D), torch.zeros(S, F), torch.zeros(S, F, D), torch.zeros(S, D), np.zeros((S, 3)))
                for _ in bounds]

        def run(i: int) -> None:
            lo, hi = bounds[i]
            g_enc, g_bias, g_dec, g_bdec, sums = outs[i]
            self._fn(S, B, lo, hi, x_BD.data_ptr(), x_DB.data_ptr(), enc_SFD.data_ptr(), bias_SF.data_ptr(),
                     dec_SFD.data_ptr(), b_dec_SD.data_ptr(), l1_over_B, grad_scale, g_enc.data_ptr(),
                     g_bias.data_ptr(), g_dec.data_ptr(), g_bdec.data_ptr(), sums.ctypes.data)

        if len(bounds) == 1:
            run(0)
        else:
            list(self._executor(len(bounds)).map(run, range(len(bounds))))
        total = outs[0]
        for part in outs[1:]:
            for acc, add in zip(total[:4], part[:4]):
                acc.add_(add)
            total[4][:] += part[4]
        return total


def _ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges of ``range(n)`` whose inner bounds are multiples of :data:`LANES`."""
    blocks = -(-n // LANES)
    parts = max(1, min(parts, blocks))
    cuts = [min(n, (blocks * i // parts) * LANES) for i in range(parts + 1)]
    return [(cuts[i], cuts[i + 1]) for i in range(parts) if cuts[i + 1] > cuts[i]]


_loaded: dict[KernelShape, FusedKernel | None] = {}
_load_lock = threading.Lock()


def load_kernel(shape: KernelShape) -> FusedKernel | None:
    """The kernel for ``shape``, built (or taken from the disk cache) once per process; None when it
    cannot be built here (the reason is logged)."""
    with _load_lock:
        if shape not in _loaded:
            _loaded[shape] = _build(shape)
        return _loaded[shape]


def _build(shape: KernelShape) -> FusedKernel | None:
    why = shape.supported()
    if why:
        log.debug("fused kernel: %s", why)
        return None
    defines = (f"-DD_IN={shape.d_in}", f"-DWIDTH={shape.width}", f"-DTOPK_K={shape.k}", f"-DSPARSE={int(shape.sparse)}")
    stem = f"sae_fused_{shape.d_in}x{shape.width}_k{shape.k}{'_sparse' if shape.sparse else ''}"
    target = native.build_library(SOURCE, stem, defines, what="fused kernel", fallback="training uses the torch path")
    if target is None:
        return None
    try:
        return FusedKernel(shape, target)
    except OSError as exc:
        log.warning("fused kernel %s cannot be loaded: %s; training uses the torch path", target, exc)
        return None
