"""The description-length task's kernels against naive baselines doing the same work (same run).

Not collected by the default test run. Run with
    .venv/bin/pytest tests/perf/test_description_length_bench.py --benchmark-enable -o addopts="" -s
Size: CANONBENCH_MDL_N latents (default 4096), dimension CANONBENCH_MDL_D (default 768); the description
length uses as many tokens as latents. The naive search holds the full m × m cosine matrix and loops
over rows in Python; the naive description length decodes a dense code per ladder step and loops over
latents. Both must give the same numbers; the ratios are printed (wall time and peak memory, each in
its own subprocess).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from benchmark.metrics.description_length import description_length
from benchmark.metrics.incoherence import two_term_representations

N = int(os.environ.get("CANONBENCH_MDL_N", "4096"))
D = int(os.environ.get("CANONBENCH_MDL_D", "768"))

_spec = importlib.util.spec_from_file_location(
    "description_length_scaling", Path(__file__).resolve().parents[2] / "perf" / "description_length_scaling.py"
)
scaling = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scaling)

_values: dict[str, object] = {}


@pytest.fixture(scope="module")
def dictionary():
    return scaling.sae_like_dictionary(N, D)


@pytest.fixture(scope="module")
def sae_and_tokens(dictionary):
    return scaling.topk_sae_and_tokens(dictionary, N)


def test_naive_search(benchmark, dictionary):
    benchmark.group = f"two-term search {N}x{D}"
    _values["naive"] = benchmark.pedantic(scaling.naive_two_term, args=(dictionary,), kwargs={"tau": 0.95},
                                          rounds=1, iterations=1)


def test_blocked_search(benchmark, dictionary):
    benchmark.group = f"two-term search {N}x{D}"
    found = benchmark.pedantic(two_term_representations, args=(dictionary,), kwargs={"tau": 0.95, "k": 16, "candidates": "fp32"},
                               rounds=1, iterations=1)
    naive = _values.get("naive")
    if naive is None:
        naive = scaling.naive_two_term(dictionary, tau=0.95)
    assert np.allclose(np.nan_to_num(found.pair_cosine, nan=-1), np.nan_to_num(naive, nan=-1), atol=1e-9)


def test_naive_description_length(benchmark, sae_and_tokens):
    sae, acts = sae_and_tokens
    benchmark.group = f"description length {N} latents x {N} tokens, d={D}"
    _values["naive_dl"] = benchmark.pedantic(scaling.naive_description_length, args=(sae, acts.numpy()),
                                             kwargs={"epsilon": 0.01}, rounds=1, iterations=1)


def test_module_description_length(benchmark, sae_and_tokens):
    sae, acts = sae_and_tokens
    benchmark.group = f"description length {N} latents x {N} tokens, d={D}"
    batches = [acts[i:i + 1024] for i in range(0, len(acts), 1024)]
    got = benchmark.pedantic(description_length, args=(sae, batches), kwargs={"epsilon": 0.01}, rounds=1, iterations=1)
    bins, bits = _values.get("naive_dl") or scaling.naive_description_length(sae, acts.numpy(), epsilon=0.01)
    assert got.bins == bins and got.description_length == pytest.approx(bits, abs=1e-6)


def test_ratios_in_subprocesses():
    """Wall time and peak memory of each side in its own process (peak memory belongs to one side)."""
    blocked = scaling.run_worker("search-fp32", N, D)
    naive = scaling.run_worker("naive", N, D)
    fast = scaling.run_worker("dl", N, D, N)
    slow = scaling.run_worker("naive-dl", N, D, N)
    print(f"\nload {scaling.loadavg()}: search speed-up {naive['seconds'] / blocked['seconds']:.1f}x, memory ratio "
          f"{blocked['peak_gib'] / naive['peak_gib']:.3f} ({blocked['seconds']:.1f}s/{blocked['peak_gib']:.2f} GiB vs "
          f"{naive['seconds']:.1f}s/{naive['peak_gib']:.2f} GiB); description length speed-up "
          f"{slow['seconds'] / fast['seconds']:.1f}x, memory ratio {fast['peak_gib'] / max(slow['peak_gib'], 1e-9):.3f}")
    assert np.allclose(blocked["pair_cosine"], naive["pair_cosine"], atol=1e-9)
    assert fast["bins"] == slow["bins"]
    if N >= 4096:  # below that the m × m matrix is smaller than the blocked search's fixed buffers
        assert blocked["peak_gib"] < naive["peak_gib"]
