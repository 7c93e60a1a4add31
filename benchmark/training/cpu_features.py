"""What this CPU offers, measured once per process: feature flags and a tiny timed matmul.

Machines of one kind differ: some have AMX (bf16 matmul several times the fp32 rate), others only
AVX512-BF16 (bf16 matmul can be slower than fp32), others neither. Kernel choices are made from these
measurements at run time (see :mod:`benchmark.training.kernel_choice`), never from a hard-coded
assumption, and the numbers are written into the training log.
"""

from __future__ import annotations

import functools
import platform
import time
from pathlib import Path
from typing import Any

import torch

#: Flags worth recording (a subset of /proc/cpuinfo's).
INTERESTING = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
               "amx_tile", "amx_bf16", "amx_int8")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _best_of(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@functools.lru_cache(maxsize=1)
def matmul_probe(size: int = 256, repeats: int = 5) -> dict[str, float]:
    """fp32 and bf16 GFLOP/s of one ``size``² CPU matmul on one thread (best of ``repeats``; a few ms).

    ``bf16_speedup`` > 1 means bf16 matmuls are faster here (AMX, or AVX512-BF16 that pays off)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=gen)
        b = torch.randn(size, size, generator=gen)
        flop = 2.0 * size ** 3
        fp32 = flop / _best_of(lambda: a @ b, repeats) / 1e9
        a16, b16 = a.bfloat16(), b.bfloat16()
        bf16 = flop / _best_of(lambda: a16 @ b16, repeats) / 1e9
    finally:
        torch.set_num_threads(previous)
    # three significant digits, not fixed decimals: where bf16 is emulated (AVX2-only CPUs) its rate is ~1/60 of
    # fp32's, and rounding to 0.01 turned a measured 0.016 into 0.02
    return {"fp32_gflops": _sig3(fp32), "bf16_gflops": _sig3(bf16), "bf16_speedup": _sig3(bf16 / fp32)}


def _sig3(value: float) -> float:
    return float(f"{value:.3g}")


def describe() -> dict[str, Any]:
    """The record written into training logs: CPU model, the interesting flags, the matmul probe."""
    flags = cpu_flags()
    return {"cpu": cpu_model(), "flags": sorted(f for f in INTERESTING if f in flags), **matmul_probe()}
