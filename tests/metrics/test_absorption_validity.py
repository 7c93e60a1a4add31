"""Absorption with the truth known: the formula by hand, equal to the task's kernel, and giving back
absorption planted into a perfect SAE of the zipf-hierarchy organism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.data.organisms import Organism
from benchmark.metrics.absorption_validity import (
    absorption_agreement,
    hierarchy_pairs,
    organism_absorption,
    planted_absorption,
    projection_absorption,
)


def test_formula_by_hand():
    """Direction e0; latent 0 is the main latent, latents 1-2 point along e0 (cos 1 and 0.5)."""
    decoder = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, float(np.sqrt(0.75))]])
    cos = decoder @ torch.tensor([1.0, 0.0])
    x = torch.tensor([[1.0, 0.0]] * 4)  # P = 1 on every input
    latents = torch.tensor([
        [1.0, 0.0, 0.0],  # the main latent carries everything: 0
        [0.0, 1.0, 0.0],  # main silent, an absorber carries it: 1, full absorption
        [0.6, 0.4, 0.0],  # M = 0.6, A = 0.4 (A/P = 0.4, at the threshold): a = min(0.4, 0.4) → 0.4 / (0.4 + 0.6)
        [0.7, 0.0, 0.5],  # M = 0.7, A = 0.25 < 0.4·P: 0
    ])
    out = projection_absorption(latents, x, torch.tensor([2.0, 0.0]), cos, [0])
    assert out["fraction"].tolist() == pytest.approx([0.0, 1.0, 0.4, 0.0])
    assert out["full"].tolist() == [False, True, False, False]
    assert out["projection"].tolist() == pytest.approx([1.0] * 4)


def test_the_absorption_task_calls_this_kernel():
    """One meaning: the task's per-word absorption is this function, not a copy of it."""
    import tasks.absorption as task_module

    assert task_module.projection_absorption is projection_absorption


@pytest.fixture(scope="module")
def organism_data():
    organism = Organism("zipf-hierarchy")
    x, codes = organism.samples(0, 4096, split="eval", with_codes=True)
    return organism, x, codes


def test_planted_absorption_is_recovered_on_the_hierarchy_organism(organism_data):
    organism, x, codes = organism_data
    pairs = hierarchy_pairs(organism, 0)
    dictionary = organism.true_dictionary()
    assert len(pairs) == 16 and all(len(children) == 4 for _, children in pairs)
    measured, planted = [], []
    for rate in (0.0, 0.5, 1.0):
        sae = planted_absorption(codes, dictionary, pairs, rate, seed=1)
        if rate == 0:  # nothing planted: a perfect SAE of the organism
            assert torch.allclose(sae.latents @ sae.decoder, x, atol=1e-4)
        results = organism_absorption(x, codes, sae.latents, sae.decoder, dictionary, pairs)
        assert len(results) >= 12 and all(r.main_cosine > 0.999 for r in results)
        measured += [r.absorption_fraction for r in results]
        planted += [sae.planted[r.parent] for r in results]
        if rate == 0:
            assert all(r.full_absorption_rate == 0 for r in results) and max(planted) == 0
    agreement = absorption_agreement(measured, planted)
    assert agreement["pearson"] > 0.98 and agreement["spearman"] > 0.95
    assert agreement["mae"] < 0.05  # interference from other features in 64 dims adds a small positive bias
    assert np.mean(planted[-len(planted) // 3:]) > 0.6  # rate 1 absorbs wherever a child fires (most parent inputs)
