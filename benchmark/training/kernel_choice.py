"""Which kernel trains a recipe on this machine: a short timed self-check, cached per process.

Candidates for a hand-written-gradient recipe (``_FastSAE``): the torch path (GEMMs plus element-wise
passes, :mod:`benchmark.training.fast_path`) and the fused C++ kernel (:mod:`benchmark.training.fused_kernel`),
dense or sparse (per active latent), on one thread or on ``max_threads``. Each candidate runs one step on the
first :data:`PROBE_SAMPLES` samples of the real first batch (best of :data:`PROBE_REPEATS`); a fused
candidate must also agree with the torch path's gradients on that slice (relative error below
:data:`AGREEMENT`) or it is dropped. The fastest wins. The CPU's feature flags and a tiny timed
fp32/bf16 matmul (:mod:`benchmark.training.cpu_features`) are recorded with the choice, which goes into
the training log (``log["kernel"]``), so a result says which computation produced it.

Nothing is hard-coded per machine: on a CPU without AVX2/FMA (x86) the fused kernel is not tried
(its 16-float vectors would run as scalar code); elsewhere the timing decides. Precision is never
chosen here: training stays float32 (bf16 changes the trajectories; see perf/README.md).
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmark.training import cpu_features
from benchmark.training.fused_kernel import FusedKernel, KernelShape, load_kernel

log = logging.getLogger(__name__)

#: The probe batch is the real batch up to this many samples. Smaller probes mislead: at 8,192 samples
#: the torch path's [S, B, width] intermediates fit in cache and it beat the fused kernel, which is
#: ~1.4× faster than it on the 50,000-sample batch of Song et al.'s recipes (measured, 1 thread).
PROBE_SAMPLES = 65_536
PROBE_REPEATS = 5
#: Run-time agreement check: max |fused - torch| / max |torch| per gradient tensor, on the probe batch.
#: Measured disagreement is ~1e-6 (float32 rounding; tests/training/test_training.py holds the kernel to
#: atol 1e-6 + rtol 1e-4 element-wise on constructed inputs), so 1e-3 only rejects a broken build.
AGREEMENT = 1e-3
FUSED_ARCHITECTURES = ("standard", "topk")


@dataclass(frozen=True)
class KernelChoice:
    """``name``: ``torch``, ``fused-dense`` or ``fused-sparse``; ``kernel`` (None for torch); ``threads``
    the fused kernel splits samples over; ``record``: what the training log keeps."""

    name: str
    kernel: FusedKernel | None = None
    threads: int = 1
    record: dict[str, Any] = field(default_factory=dict)


_cache: dict[tuple, KernelChoice] = {}
_lock = threading.Lock()


def choose_kernel(fast: Any, x: torch.Tensor, *, max_threads: int, threads: int | None = None,
                  only: str | None = None) -> KernelChoice:
    """The fastest correct kernel for ``fast`` (a ``_FastSAE``) on batches like ``x [B, d_in]``.

    ``threads`` fixes the fused kernel's thread count (e.g. one per process when several recipes
    train side by side); None lets the self-check try 1 and ``max_threads``. ``only="torch"`` or
    ``"fused"`` restricts the candidates (a forced fused choice still falls back to torch when the kernel
    is unavailable or disagrees). Cached per process by architecture, seeds, shapes, batch size and
    thread setting."""
    if only not in (None, "torch", "fused"):
        raise ValueError(f"unknown kernel {only!r} (torch, fused or None)")
    key = (fast.arch, fast.S, fast.d_in, fast.F, fast.k, fast.sparse, x.shape[0], x.device.type, max_threads, threads,
           torch.get_num_threads(), only)
    with _lock:
        if key not in _cache:
            _cache[key] = _self_check(fast, x, max_threads=max_threads, threads=threads, only=only)
        return _cache[key]


def _why_not_fused(fast: Any, x: torch.Tensor) -> str | None:
    if x.device.type != "cpu":
        return f"device {x.device.type}"
    if fast.arch not in FUSED_ARCHITECTURES:
        return f"no fused kernel for {fast.arch}"
    flags = cpu_features.cpu_flags()
    if platform.machine().lower() in ("x86_64", "amd64") and flags and not {"avx2", "fma"} <= flags:
        return "CPU without AVX2/FMA"
    return None


def _self_check(fast: Any, x: torch.Tensor, *, max_threads: int, threads: int | None,
                only: str | None) -> KernelChoice:
    record: dict[str, Any] = {"machine": cpu_features.describe()}
    why = "restricted to the torch path" if only == "torch" else _why_not_fused(fast, x)
    if why is not None:
        record["reason"] = why
        return KernelChoice("torch", record=record)
    # both ways through a block: which wins depends on how many latents fire (L0 against the width)
    shapes = [(name, KernelShape(fast.d_in, fast.F, fast.k or 0, sparse))
              for name, sparse in (("fused-dense", False), ("fused-sparse", True))]
    kernels = [(name, load_kernel(shape)) for name, shape in shapes]
    kernels = [(name, kernel) for name, kernel in kernels if kernel is not None]
    if not kernels:
        record["reason"] = "fused kernel unavailable (no compiler, failed build or unsupported shape)"
        return KernelChoice("torch", record=record)

    probe = x[: min(PROBE_SAMPLES, x.shape[0])].to(torch.float32).contiguous()
    reference = _grads_after(fast, None, 1, probe)
    candidates: dict[str, tuple[FusedKernel | None, int]] = {"torch": (None, 1)}
    for name, kernel in kernels:
        for n in ([threads] if threads else sorted({1, max(1, max_threads)})):
            label = f"{name}×{n}"
            error = _relative_error(_grads_after(fast, kernel, n, probe), reference)
            if error > AGREEMENT:
                log.warning("fused kernel %s disagrees with the torch path (relative error %.2g); not used", label, error)
                record.setdefault("rejected", {})[label] = f"relative error {error:.2g}"
            else:
                candidates[label] = (kernel, n)
    if only == "fused" and len(candidates) > 1:
        del candidates["torch"]
    timings = _interleaved_best(fast, candidates, probe)
    best = min(timings, key=timings.get)
    record.update(probe_samples=int(probe.shape[0]), probe_ms={k: round(v * 1e3, 3) for k, v in timings.items()})
    log.info("training kernel: %s (probe ms: %s)", best, record["probe_ms"])
    kernel, n = candidates[best]
    if kernel is not None:
        # the build's file name carries the hash of its source, flags, compiler and CPU flags
        record["build"] = kernel.library.name
    return KernelChoice(best.split("×")[0], kernel, n, record)


def _grads_after(fast: Any, kernel: FusedKernel | None, threads: int, probe: torch.Tensor) -> list[torch.Tensor]:
    fast.use_kernel(kernel, threads)
    try:
        fast.step_grads(probe, stats=False)
    finally:
        fast.use_kernel(None, 1)
    return [p.grad.detach().clone() for p in fast.params]


def _relative_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    worst = 0.0
    for a, b in zip(got, want):
        scale = float(b.abs().max()) or 1.0
        worst = max(worst, float((a - b).abs().max()) / scale)
    return worst


def _interleaved_best(fast: Any, candidates: dict[str, tuple[FusedKernel | None, int]], probe: torch.Tensor) -> dict[str, float]:
    """Best wall time of one probe step per candidate; rounds interleave the candidates so that a
    change in machine load (other processes) hits them alike."""
    best = {label: float("inf") for label in candidates}
    try:
        for _ in range(PROBE_REPEATS + 1):  # the first round warms up (allocations, thread pool)
            for label, (kernel, n) in candidates.items():
                fast.use_kernel(kernel, n)
                start = time.perf_counter()
                fast.step_grads(probe, stats=False)
                elapsed = time.perf_counter() - start
                if _ > 0:
                    best[label] = min(best[label], elapsed)
    finally:
        fast.use_kernel(None, 1)
    return best
