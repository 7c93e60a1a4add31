"""16K × 16K seed-like matching: the exact matcher against scipy's dense assignment (same run).

Not collected by the default test run. Run with
    .venv/bin/pytest tests/perf/test_matching_bench.py --benchmark-enable -s
Size: CANONBENCH_MATCH_N (default 16384), dimension CANONBENCH_MATCH_D (default 768); arithmetic of the
exact matcher's first pass: CANONBENCH_MATCH_CANDIDATES (auto, int8 or fp32; default auto).
Targets (issue 4): ≥ 10× faster than the dense baseline, ≤ ¼ of its peak memory, same MCC to 1e-6.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from benchmark.metrics.matching import match_dictionaries

N = int(os.environ.get("CANONBENCH_MATCH_N", "16384"))
D = int(os.environ.get("CANONBENCH_MATCH_D", "768"))
CANDIDATES = os.environ.get("CANONBENCH_MATCH_CANDIDATES", "auto")

_spec = importlib.util.spec_from_file_location(
    "matching_scaling", Path(__file__).resolve().parents[2] / "perf" / "matching_scaling.py"
)
scaling = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scaling)

_values: dict[str, float] = {}


@pytest.fixture(scope="module")
def pair():
    return scaling.seed_like_pair(N, D)


def test_dense_scipy(benchmark, pair):
    benchmark.group = f"matching {N}x{N} d={D}"
    value, _ = benchmark.pedantic(scaling.dense_scipy_value, args=pair, rounds=1, iterations=1)
    _values["dense"] = value


def test_exact_matcher(benchmark, pair):
    benchmark.group = f"matching {N}x{N} d={D}"
    match = benchmark.pedantic(match_dictionaries, args=pair, kwargs={"method": "sparse", "candidates": CANDIDATES},
                               rounds=1, iterations=1)
    assert match.certified
    dense = _values.get("dense")
    if dense is None:
        dense, _ = scaling.dense_scipy_value(*pair)
    assert abs(match.value - dense) <= 1e-6


def test_speed_and_memory_ratio():
    """Each solver in its own subprocess (peak RSS belongs to one solver); ratios from the same run."""
    sparse = scaling.run_worker("sparse", N, D, "cpu", CANDIDATES)
    dense = scaling.run_worker("dense", N, D, "cpu")
    speedup = dense["seconds"] / sparse["seconds"]
    memory_ratio = sparse["peak_bytes"] / dense["peak_bytes"]
    print(f"\n{N}x{N} d={D} ({sparse['candidates']} candidates, load {os.getloadavg()[0]:.1f}): "
          f"exact {sparse['seconds']:.1f}s {sparse['peak_bytes'] / 2**30:.2f} GiB; "
          f"scipy dense {dense['seconds']:.1f}s (LSA {dense['lsa_seconds']:.1f}s) "
          f"{dense['peak_bytes'] / 2**30:.2f} GiB; speed-up {speedup:.1f}x, memory ratio {memory_ratio:.3f}, "
          f"|dMCC| {abs(sparse['value'] - dense['value']):.1e}")
    assert sparse["certified"]
    assert abs(sparse["value"] - dense["value"]) <= 1e-6
    assert memory_ratio <= 0.25
    assert speedup >= 10, f"speed-up {speedup:.1f}x below the 10x target"
