"""Batched multi-seed trainer: equals per-seed training, stated initialisations, recovers a toy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from benchmark.errors import CanonBenchError
from benchmark.manifest import Hyperparameters, RecipeSpec
from benchmark.organisms import Organism
from benchmark.training import BatchedSAE, train_batched


def recipe(architecture: str, *, width: int = 24, seeds=(3, 4, 5), **hp) -> RecipeSpec:
    defaults = dict(lr=3e-3, steps=40, batch_size=64, init="unit")
    defaults.update(hp)
    return RecipeSpec(architecture=architecture, width=width, seeds=list(seeds), trains_on="synthetic",
                      presets=["song2025-toy"], hyperparameters=Hyperparameters(**defaults))


def scipy_mcc(a: np.ndarray, b: np.ndarray) -> float:
    """Independent MCC: dense signed cosines, scipy assignment, mean over matched rows."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = a @ b.T
    rows, cols = linear_sum_assignment(-cos)
    return float(cos[rows, cols].mean())


@pytest.fixture(scope="module")
def toy_batches():
    organism = Organism("song2025-toy")
    return [organism.samples(i * 64, (i + 1) * 64) for i in range(40)]


CASES = {
    "standard": dict(l1_coefficient=1e-2, init="tied", init_decoder_norm=0.1, normalise_decoder=False),
    "topk": dict(k=3, l1_coefficient=1e-2),
    "batchtopk": dict(k=3),
    "jumprelu": dict(l0_coefficient=1e-3, jumprelu_init_threshold=0.05, jumprelu_bandwidth=0.05),
    "gated": dict(l1_coefficient=1e-2),
    "matryoshka": dict(k=3, matryoshka_widths=[8, 16]),
}


@pytest.mark.parametrize("architecture", sorted(CASES))
def test_batched_equals_per_seed(architecture, toy_batches):
    spec = recipe(architecture, **CASES[architecture])
    together = train_batched(spec, toy_batches, d_in=16, quiet=True)
    alone = train_batched(spec, toy_batches, d_in=16, quiet=True, seeds=[4])
    a, b = together.saes[4], alone.saes[4]
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=2e-5, rtol=1e-4), name
    if a.threshold is not None:
        assert torch.allclose(a.threshold, b.threshold, atol=2e-5)
    # and the seeds really differ from each other
    assert not torch.allclose(together.saes[3].W_dec, together.saes[4].W_dec)
    assert together.log["steps"] == 40 and len(together.log["final"]["mse"]) == 3


def test_initialisations_follow_their_stated_form():
    tied = BatchedSAE(recipe("standard", init="tied", init_decoder_norm=0.1, seeds=[42, 43]), 16, [42, 43])
    assert torch.allclose(tied.W_enc, tied.W_dec.transpose(1, 2))
    assert torch.allclose(tied.W_dec.norm(dim=-1), torch.full((2, 24), 0.1))
    gen = torch.Generator().manual_seed(42)  # "tied" is a Gaussian [d_in, d_sae] draw from the seed
    w = torch.randn(16, 24, generator=gen)
    assert torch.allclose(tied.W_enc[0], w / w.norm(dim=0, keepdim=True) * 0.1)
    unit = BatchedSAE(recipe("topk", k=3, init="unit"), 16, [3, 4, 5])
    assert torch.allclose(unit.W_dec.norm(dim=-1), torch.ones(3, 24), atol=1e-6)
    assert torch.allclose(unit.W_enc, unit.W_dec.transpose(1, 2))
    kaiming = BatchedSAE(recipe("topk", k=3, init="kaiming"), 16, [3])
    assert not torch.allclose(kaiming.W_enc, kaiming.W_dec.transpose(1, 2))
    assert float(unit.b_enc.detach().abs().sum() + unit.b_dec.detach().abs().sum()) == 0.0


def test_callable_and_short_iterables(toy_batches):
    spec = recipe("topk", k=3)
    by_step = train_batched(spec, lambda step: toy_batches[step], d_in=16, quiet=True, seeds=[3])
    by_list = train_batched(spec, toy_batches, d_in=16, quiet=True, seeds=[3])
    assert torch.equal(by_step.saes[3].W_dec, by_list.saes[3].W_dec)
    short = train_batched(spec, toy_batches[:10], d_in=16, quiet=True, seeds=[3])
    assert short.log["steps"] == 10
    with pytest.raises(CanonBenchError, match="shape"):
        train_batched(spec, [torch.zeros(8, 5)], d_in=16, quiet=True)


def test_bad_recipes_are_refused():
    with pytest.raises(CanonBenchError, match="needs k"):
        train_batched(recipe("topk"), [torch.zeros(4, 16)], d_in=16, quiet=True)
    with pytest.raises(CanonBenchError, match="matryoshka_widths"):
        train_batched(recipe("matryoshka", k=2), [torch.zeros(4, 16)], d_in=16, quiet=True)


def test_jumprelu_threshold_gets_the_straight_through_gradient():
    """d/dθ of θ·H(pre-θ)-style STE: -(θ/ε)·1[|pre-θ|<ε/2] per element (rectangle kernel)."""
    from benchmark.training import _JumpReLU, _Step

    pre = torch.tensor([[0.095, 0.2, 0.0, 0.11]])
    theta = torch.full((1, 4), 0.1, requires_grad=True)
    eps = 0.05
    _JumpReLU.apply(pre, theta, eps).sum().backward()
    window = ((pre - 0.1).abs() < eps / 2).float()
    assert torch.allclose(theta.grad, -(0.1 / eps) * window)
    theta.grad = None
    _Step.apply(pre, theta, eps).sum().backward()
    assert torch.allclose(theta.grad, -(1 / eps) * window)


def test_topk_recovers_the_song_toy():
    organism = Organism("song2025-toy")
    spec = recipe("topk", width=32, seeds=[0, 1], k=3, lr=2e-2, steps=400, batch_size=256)
    result = train_batched(spec, organism.batches(256, 400), d_in=16, quiet=True)
    truth = organism.true_dictionary().numpy()
    scores = [scipy_mcc(truth, sae.W_dec.numpy()) for sae in result.saes.values()]
    rng = np.random.default_rng(0)
    chance = np.mean([scipy_mcc(rng.standard_normal((32, 16)), rng.standard_normal((32, 16))) for _ in range(20)])
    # a short run: most of the 32 features found (the faithful 30k-step recipe gets 0.95-0.99)
    assert min(scores) > 0.8 and min(scores) > chance + 0.3, (scores, chance)
    assert result.log["final"]["l0"] == pytest.approx([3.0, 3.0], abs=0.05)
