"""perf/song_table.py's balanced schedule: its split is the best one, and training seeds in pieces
gives the SAEs that training them together gives."""

from __future__ import annotations

import importlib.util
import itertools
import random
from pathlib import Path

import pytest
import torch

from benchmark.data.organisms import Organism
from benchmark.submission.manifest import Hyperparameters, RecipeSpec
from benchmark.training import train_batched


def _song_table():
    path = Path(__file__).resolve().parents[2] / "perf" / "song_table.py"
    module_spec = importlib.util.spec_from_file_location("song_table", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_balanced_shares_is_the_best_split_of_the_seeds():
    """Against every assignment of every seed to one of two processes (brute force)."""
    song_table = _song_table()
    rng = random.Random(0)
    for _ in range(15):
        seeds = {"a": list(range(rng.randint(1, 5))), "b": list(range(10, 10 + rng.randint(0, 5))),
                 "c": list(range(20, 20 + rng.randint(1, 3)))}
        costs = {name: rng.uniform(0.5, 5.0) for name in seeds}
        shares = song_table.balanced_shares(costs, seeds)
        assert len(shares) == 2
        for name, all_seeds in seeds.items():  # each seed in exactly one share
            assert sorted(shares[0].get(name, []) + shares[1].get(name, [])) == all_seeds
        larger = max(sum(costs[name] * len(part) for name, part in share.items()) for share in shares)
        items = [(name, seed) for name in seeds for seed in seeds[name]]
        best = min(max(sum(costs[n] for (n, _), side in zip(items, sides) if side == s) for s in (0, 1))
                   for sides in itertools.product((0, 1), repeat=len(items)))
        assert larger == pytest.approx(best)


@pytest.mark.parametrize("architecture", ["standard", "topk"])
def test_seeds_trained_in_pieces_equal_seeds_trained_together(architecture):
    """The balanced schedule trains some of a recipe's seeds in one process and the rest in another."""
    hp = dict(lr=1e-3, steps=30, batch_size=2048, l1_coefficient=1e-2, init="unit", apply_b_dec_to_input=True,
              k=3 if architecture == "topk" else None)
    spec = RecipeSpec(architecture=architecture, width=32, seeds=[42, 43, 44], trains_on="synthetic",
                      presets=["song2025-toy"], hyperparameters=Hyperparameters(**hp))
    batches = Organism("song2025-toy").batches(2048, 30)
    whole = train_batched(spec, batches, d_in=16, quiet=True, kernel="fused")
    pieces = {}
    for seeds in ([42], [43, 44]):
        part = train_batched(spec.model_copy(update={"seeds": seeds}), batches, d_in=16, quiet=True, kernel="fused")
        pieces.update(part.saes)
    assert sorted(pieces) == [42, 43, 44]
    for seed in (42, 43, 44):
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            a, b = getattr(whole.saes[seed], name), getattr(pieces[seed], name)
            # the self-check may pick another kernel for fewer seeds: equal to float rounding, not bit for bit
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (seed, name, (a - b).abs().max())
