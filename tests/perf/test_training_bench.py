"""Batched multi-seed training vs a plain per-seed loop, measured in the same run.

Run: ``make bench`` (or ``pytest tests/perf/test_training_bench.py --benchmark-enable -o addopts=""``).

The baseline is what one would write to train the seeds one after another: a plain ``nn.Module`` SAE
(same initialisation, same loss, same Adam, same decoder renormalisation), autograd, ``torch.optim.Adam``
with its defaults, one seed at a time. Both sides get the same pre-generated batches and run with the
same torch thread count (the one ``train_batched`` picks), so only the training itself is compared.
The ratio is printed and stored in ``extra_info``; the issue's target, ≥ 3× for 5 seeds on CPU, is
asserted on the Song et al. TopK recipes the benchmark trains (the demo's minibatch-2,048 reference and
the full-batch reproduction). The zipf-hierarchy configurations (1,024 latents, batch 512) are
compute-bound: the dense products are the same total work batched or not. There batching plus the
hand-written gradient gave ~1.3-1.9× (1 thread, loaded 2-core machine) until wide TopK could train on
the fused kernel's sparse path (5.0× for TopK k 8 in stop 23's run; standard 1.4×). They, and the
full-batch Standard recipe (2.4-3.9×), are held to "not slower" (``MIN_SPEEDUP``).
"""

from __future__ import annotations

import os
import time

import pytest
import torch
from torch import nn

from benchmark.submission.manifest import Hyperparameters, RecipeSpec
from benchmark.data.organisms import Organism
from benchmark.training import train_batched
from benchmark.training.batched import _init_weights
from benchmark.training.loop import _lr_lambda, _thread_count

SEEDS = [42, 43, 44, 45, 46]

CONFIGS = {
    # Song et al.'s faithful reproduction (submissions/reproductions/song2025-topk.toml): full batch of
    # all 50,000 samples, 32 latents, k = 3, L1 0.01; a fixed 8 of its 30,000 steps.
    "song2025-fullbatch-topk": ("song2025-toy", dict(
        architecture="topk", width=32, steps=8, hp=dict(lr=1e-4, full_batch=True, k=3, l1_coefficient=0.01,
                                                        apply_b_dec_to_input=True, init="unit"))),
    "song2025-fullbatch-standard": ("song2025-toy", dict(
        architecture="standard", width=32, steps=8, hp=dict(lr=1e-4, full_batch=True, l1_coefficient=0.01,
                                                            apply_b_dec_to_input=True, init="tied", init_decoder_norm=0.1))),
    # the reference song2025 recipes (minibatches of 2,048)
    "song2025-batch2048-topk": ("song2025-toy", dict(
        architecture="topk", width=32, steps=60, hp=dict(lr=1e-3, batch_size=2048, k=3, l1_coefficient=0.01,
                                                         apply_b_dec_to_input=True, init="unit"))),
    # the demo's zipf-hierarchy recipes (submissions/reference/synthetic-zipf-*.toml): 1,024 latents, batch 512
    "zipf-hierarchy-topk-k8": ("zipf-hierarchy", dict(
        architecture="topk", width=1024, steps=15, hp=dict(lr=1e-3, batch_size=512, k=8, normalise_decoder=True, init="unit"))),
    "zipf-hierarchy-standard": ("zipf-hierarchy", dict(
        architecture="standard", width=1024, steps=15, hp=dict(lr=1e-3, batch_size=512, l1_coefficient=3e-3,
                                                              normalise_decoder=True, init="unit"))),
}
MIN_SPEEDUP = {name: 1.0 for name in CONFIGS} | {"song2025-batch2048-topk": 3.0, "song2025-fullbatch-topk": 3.0}


class PlainSAE(nn.Module):
    """One SAE, written the straightforward way (autograd does the backward pass)."""

    def __init__(self, recipe: RecipeSpec, d_in: int, seed: int):
        super().__init__()
        hp = recipe.hyperparameters
        w_enc, w_dec = _init_weights(hp.init, seed, d_in, recipe.width, hp.init_decoder_norm)
        self.W_enc, self.W_dec = nn.Parameter(w_enc), nn.Parameter(w_dec)
        self.b_enc, self.b_dec = nn.Parameter(torch.zeros(recipe.width)), nn.Parameter(torch.zeros(d_in))
        self.architecture, self.k = recipe.architecture, hp.k
        self.centre = hp.apply_b_dec_to_input
        self.l1 = hp.l1_coefficient or 0.0

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        sae_in = x - self.b_dec if self.centre else x
        pre = sae_in @ self.W_enc + self.b_enc
        if self.architecture == "topk":
            values, indices = pre.topk(self.k, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
        else:
            z = torch.relu(pre)
        x_hat = z @ self.W_dec + self.b_dec
        return (x_hat - x).pow(2).mean() + self.l1 * z.sum(-1).mean()


def plain_per_seed_loop(recipe: RecipeSpec, batches: list[torch.Tensor], d_in: int) -> list[PlainSAE]:
    hp = recipe.hyperparameters
    out = []
    for seed in recipe.seeds:
        sae = PlainSAE(recipe, d_in, seed)
        if hp.normalise_decoder:
            with torch.no_grad():
                sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)
        optimiser = torch.optim.Adam(sae.parameters(), lr=hp.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, _lr_lambda(hp))
        for x in batches:
            optimiser.zero_grad()
            sae.loss(x).backward()
            optimiser.step()
            schedule.step()
            if hp.normalise_decoder:
                with torch.no_grad():
                    sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)
        out.append(sae)
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batched_vs_per_seed_loop(benchmark, name):
    preset, cfg = CONFIGS[name]
    organism = Organism(preset)
    hp = Hyperparameters(steps=cfg["steps"], **cfg["hp"])
    recipe = RecipeSpec(architecture=cfg["architecture"], width=cfg["width"], seeds=SEEDS, trains_on="synthetic",
                        presets=[preset], hyperparameters=hp)
    batch_of = organism.batches(hp.effective_batch_size, hp.steps)
    batches = [batch_of(i) for i in range(hp.steps)]
    d_in = organism.d_in

    def batched():
        return train_batched(recipe, batches, d_in=d_in, quiet=True)

    threads = _thread_count(torch.device("cpu"), len(SEEDS), batches[0].shape[0], d_in, recipe.width)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        batched()  # warm-up (allocator, kernels)
        plain_per_seed_loop(recipe, batches[:2], d_in)
        # interleave the two sides so that a change in machine load hits both alike
        loop_times, batched_times = [], []
        for _ in range(2):
            start = time.perf_counter()
            plain_per_seed_loop(recipe, batches, d_in)
            loop_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            batched()
            batched_times.append(time.perf_counter() - start)
        benchmark.pedantic(batched, rounds=1, iterations=1)
    finally:
        torch.set_num_threads(previous)
    if benchmark.stats is not None:  # None under --benchmark-disable: the pedantic run was untimed
        batched_times.append(benchmark.stats.stats.min)
    batched_s = min(batched_times)
    loop_s = min(loop_times)
    ratio = loop_s / batched_s
    benchmark.extra_info.update({"per_seed_loop_s": loop_s, "batched_s": batched_s, "speedup": ratio,
                                 "seeds": len(SEEDS), "steps": hp.steps, "threads": threads,
                                 "batched_s_per_step": batched_s / hp.steps})
    print(f"\n{name}: plain per-seed loop {loop_s:.2f}s, batched {batched_s:.2f}s "
          f"({batched_s / hp.steps * 1e3:.1f} ms/step), speedup {ratio:.2f}x for {len(SEEDS)} seeds, {threads} thread(s)")
    assert ratio >= MIN_SPEEDUP[name], f"batched training only {ratio:.2f}x faster than a plain per-seed loop"


# --- Song et al.'s table: the fused kernel (as the self-check picks it) against the previous implementation
SONG_STEPS = 60  # of 30,000: the per-step cost is constant after the first step (see below)
SONG_RECIPES = ("submissions/reproductions/song2025-standard.toml", "submissions/reproductions/song2025-topk.toml")
SONG_TARGET = 3.0  # 30 CPU-minutes → under 10 minutes on 2 cores
QUIET_LOAD = 1.5


def test_song_table_vs_previous_implementation(benchmark):
    """Both faithful Song et al. recipes (5 seeds, full batch of 50,000, width 32), SONG_STEPS steps each.

    Previous: the torch path (GEMMs + element-wise passes, one thread: what `train_batched` ran before the
    fused kernel). New: whatever the kernel self-check picks here (fused C++ kernel, its thread count).
    The one-off costs (kernel build, self-check, both cached per process) are paid in a warm-up run, so the
    ratio is the per-step ratio that decides the 30,000-step table. Sides alternate, best of 2 each."""
    from pathlib import Path

    from benchmark.submission.manifest import load_manifest

    root = Path(__file__).resolve().parents[2]
    organism = Organism("song2025-toy")
    recipes = []
    for path in SONG_RECIPES:
        recipe = load_manifest(root / path).submission.recipe
        hp = recipe.hyperparameters.model_copy(update={"steps": SONG_STEPS})
        recipes.append(recipe.model_copy(update={"hyperparameters": hp}))
    x = organism.batches(None, 1)(0)

    def table(kernel):
        return [train_batched(r, lambda step: x, d_in=16, quiet=True, kernel=kernel) for r in recipes]

    table("torch"), table(None)  # warm-up: build, self-check
    previous, new, logs = [], [], None
    for _ in range(2):
        start = time.perf_counter(); table("torch"); previous.append(time.perf_counter() - start)  # noqa: E702
        start = time.perf_counter(); logs = table(None); new.append(time.perf_counter() - start)  # noqa: E702
    benchmark.pedantic(table, args=(None,), rounds=1, iterations=1)
    ratio = min(previous) / min(new)
    kernels = {r.architecture: f"{res.log['kernel']['name']}×{res.log['kernel'].get('threads', 1)}"
               for r, res in zip(recipes, logs)}
    load = os.getloadavg()[0]
    full_table_min = min(new) / SONG_STEPS * 30_000 / 60
    benchmark.extra_info.update(previous_s=min(previous), new_s=min(new), speedup=ratio, steps=SONG_STEPS,
                                kernels=kernels, load_average=load, projected_table_min=full_table_min)
    print(f"\nSong table, {SONG_STEPS} steps per recipe: previous {min(previous):.2f}s, new {min(new):.2f}s, "
          f"speed-up {ratio:.2f}x, kernels {kernels}, load {load:.1f}; projected 30,000 steps: {full_table_min:.1f} min")
    if load < QUIET_LOAD:  # on a shared machine the ratio is recorded, not judged
        assert ratio >= 1.0, "the self-check picked a kernel slower than the previous implementation"
        if logs[0].log["kernel"]["name"] != "torch":  # without a working compiler both sides are the torch path
            assert ratio >= SONG_TARGET, f"only {ratio:.2f}x (target {SONG_TARGET}x)"
    else:
        print(f"  load {load:.1f} ≥ {QUIET_LOAD}: not asserted, rerun on a quiet machine")
