"""Model organisms: each generator matches its stated statistics; data are deterministic; export."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from benchmark.errors import CanonBenchError
from benchmark.data.organisms import CHUNK_ROWS, PRESETS, Organism, export_preset, get_preset


def test_song_toy_is_the_papers_data_draw_for_draw():
    """Independent re-draw of the published process: A = randn(32, 16) row-normalised, then per
    sample ``choice(32, 3, replace=False)`` and ``|randn(3)|`` from RandomState(42)."""
    organism = Organism("song2025-toy")
    rng = np.random.RandomState(42)
    a = rng.randn(32, 16)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    expected_codes = np.zeros((5, 32))
    for i in range(5):
        idx = rng.choice(32, 3, replace=False)
        expected_codes[i, idx] = np.abs(rng.randn(3))
    x, codes = organism.samples(0, 5, with_codes=True)
    np.testing.assert_allclose(organism.true_dictionary().numpy(), a, atol=1e-6)
    np.testing.assert_allclose(codes.numpy(), expected_codes, atol=1e-6)
    np.testing.assert_allclose(x.numpy(), expected_codes @ a, atol=1e-5)


def test_song_toy_statistics():
    organism = Organism("song2025-toy")
    x, codes = organism.samples(0, 50_000, with_codes=True)
    assert x.shape == (50_000, 16) and codes.shape == (50_000, 32)
    assert torch.all((codes > 0).sum(1) == 3)  # exactly 3 active
    magnitudes = codes[codes > 0].double()
    # |N(0,1)|: mean sqrt(2/pi), second moment 1
    assert abs(magnitudes.mean().item() - math.sqrt(2 / math.pi)) < 0.01
    assert abs(magnitudes.pow(2).mean().item() - 1.0) < 0.02
    freq = (codes > 0).double().mean(0)
    assert torch.allclose(freq, torch.full_like(freq, 3 / 32), atol=5 * math.sqrt(3 / 32 * 29 / 32 / 50_000))
    with pytest.raises(IndexError):
        organism.samples(49_990, 50_001)


def test_chunks_are_deterministic_and_seamless():
    organism = Organism("zipf-hierarchy")
    whole = organism.samples(0, 2 * CHUNK_ROWS)
    window = Organism("zipf-hierarchy").samples(CHUNK_ROWS - 10, CHUNK_ROWS + 10)
    assert torch.equal(window, whole[CHUNK_ROWS - 10 : CHUNK_ROWS + 10])
    other_seed = Organism("zipf-hierarchy", seed=1).samples(0, 10)
    assert not torch.equal(other_seed, whole[:10])
    eval_rows = organism.samples(0, 10, split="eval")
    assert not torch.equal(eval_rows, whole[:10])
    batch = organism.batches(512, 10)
    assert torch.equal(batch(1), whole[512:1024])


def test_a_batch_as_large_as_the_training_set_is_one_tensor():
    """Full-batch recipes name the batch size: every step gets the same tensor (no copy per step), whose
    rows are the training set's first rows, like the batch_size=None form."""
    organism = Organism("song2025-toy")
    size = organism.preset.n_samples
    for batch_size in (size, size - 7, None):  # size - 7: one batch per epoch, the tail skipped
        batch = organism.batches(batch_size, 3)
        assert batch(0) is batch(2)
        assert torch.equal(batch(1), organism.samples(0, batch_size or size))
    two_per_epoch = organism.batches(size // 2, 3)
    assert not torch.equal(two_per_epoch(0), two_per_epoch(1))


@pytest.fixture(scope="module")
def zipf_sample():
    organism = Organism("zipf-hierarchy")
    x, codes = organism.samples(0, 8 * CHUNK_ROWS, with_codes=True)
    return organism, x, codes


def test_zipf_firing_probabilities_closed_form(zipf_sample):
    organism, _, _ = zipf_sample
    p = organism.preset.params
    ranks = np.arange(1, organism.n_features + 1)
    expected = p["min_prob"] + (p["max_prob"] - p["min_prob"]) * ranks ** (-p["zipf_exponent"])
    got = np.sort(organism.firing_probabilities.numpy())[::-1]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_zipf_free_features_fire_at_their_probability(zipf_sample):
    organism, _, codes = zipf_sample
    in_forest = torch.zeros(organism.n_features, dtype=torch.bool)
    for parents, kids in zip(organism.hierarchy_parents, organism.hierarchy):
        in_forest[kids.reshape(-1)] = True
    free = ~in_forest  # roots and features outside the hierarchy keep their marginal rate exactly
    n = codes.shape[0]
    p = organism.firing_probabilities[free].double()
    freq = (codes[:, free] > 0).double().mean(0)
    z = (freq - p) / torch.sqrt(p * (1 - p) / n)
    assert z.abs().max() < 5.0
    # the whole free set: sum of rates within 1%
    assert abs(freq.sum().item() / p.sum().item() - 1) < 0.01


def test_zipf_hierarchy_implication_and_exclusivity(zipf_sample):
    organism, _, codes = zipf_sample
    active = codes > 0
    assert organism.hierarchy, "preset should have a hierarchy"
    saw_children = 0
    for parents, kids in zip(organism.hierarchy_parents, organism.hierarchy):
        kid_active = active[:, kids]  # [n, parents, branching]
        assert int(kid_active.sum(-1).max()) <= 1  # siblings mutually exclusive
        child_without_parent = kid_active.any(-1) & ~active[:, parents]
        assert not bool(child_without_parent.any())  # a child fires only with its parent
        saw_children += int(kid_active.sum())
    assert saw_children > 100  # the check above was not vacuous


def test_zipf_magnitudes_are_folded_normal(zipf_sample):
    organism, _, codes = zipf_sample
    mu = organism.magnitude_means.double()
    sigma = organism.preset.params["magnitude_std"]
    # closed-form mean of |N(mu, sigma)|
    folded_mean = sigma * math.sqrt(2 / math.pi) * torch.exp(-mu**2 / (2 * sigma**2)) + mu * (
        1 - 2 * torch.special.ndtr(-mu / sigma)
    )
    counts = (codes > 0).sum(0)
    frequent = counts > 2000
    observed = codes.sum(0)[frequent].double() / counts[frequent]
    assert frequent.sum() >= 5
    assert torch.allclose(observed, folded_mean[frequent], atol=0.03)


def test_zipf_data_is_codes_times_dictionary(zipf_sample):
    organism, x, codes = zipf_sample
    assert torch.allclose(codes[:500] @ organism.true_dictionary(), x[:500], atol=1e-5)
    assert torch.allclose(organism.true_dictionary().norm(dim=1), torch.ones(organism.n_features), atol=1e-6)


def test_synthsae_16k_configuration():
    organism = Organism("synthsae-16k")
    assert (organism.n_features, organism.d_in) == (16_384, 768)
    sizes = [k.numel() for k in organism.hierarchy]
    assert sizes == [128 * 4, 128 * 16, 128 * 64]
    p = organism.firing_probabilities
    assert abs(p.max().item() - 0.4) < 1e-6 and p.min().item() >= 5e-4


@pytest.mark.slow
def test_synthsae_16k_mean_l0():
    organism = Organism("synthsae-16k")
    _, codes = organism.samples(0, CHUNK_ROWS, with_codes=True)
    l0 = (codes > 0).sum(1).double().mean().item()
    assert 28 < l0 < 42  # SynthSAEBench-16k reports mean L0 ~34


def test_preset_lookup_errors():
    assert get_preset("song2025-toy@1") is PRESETS["song2025-toy"]
    with pytest.raises(CanonBenchError, match="unknown synthetic preset"):
        get_preset("nope", file="x.toml", field="recipe.presets[0]")
    with pytest.raises(CanonBenchError, match="version"):
        get_preset("song2025-toy@9")


def test_export_round_trip(tmp_path):
    card_path = export_preset("song2025-toy", tmp_path / "toy", quiet=True)
    card = json.loads(open(card_path).read())
    organism = Organism("song2025-toy")
    for name, digest in card["files"].items():
        assert hashlib.sha256((tmp_path / "toy" / name).read_bytes()).hexdigest() == digest
    shards = sorted((tmp_path / "toy").glob("train-*.safetensors"))
    x = torch.cat([load_file(str(s))["x"] for s in shards])
    assert torch.equal(x, organism.samples(0, 50_000))
    assert torch.equal(load_file(str(tmp_path / "toy" / "dictionary.safetensors"))["dictionary"], organism.true_dictionary())
    assert card["data_hash"] == organism.data_hash and card["train_samples"] == 50_000
