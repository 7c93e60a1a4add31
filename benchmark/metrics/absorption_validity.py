"""Absorption with the truth known: the projection-absorption formula on a hierarchy organism.

The first-letter absorption metric (Chanin et al. 2024, SAEBench's projection form) asks, for inputs
where a concept is present, how much of the concept's direction is carried by latents other than
the concept's own ("main") latents. On a model the concept (a first letter), its direction (a
learned probe) and the main latents (k-sparse probing) are estimated. On a synthetic organism with a
hierarchy (``zipf-hierarchy``: a child fires only with its parent) all three are known, so:

* :func:`projection_absorption` is the formula itself (the absorption task's per-letter kernel calls it);
* :func:`organism_absorption` applies it with the truth: concept = a hierarchy parent, inputs = held-out
  samples where the parent truly fires, direction = the parent's true dictionary row, main latent =
  the latent whose decoder row is closest to it. This is the *ground-truth absorption* of an SAE,
  against which the task's estimated pipeline is validated (its validity in the reliability lens);
* :func:`planted_absorption` builds latent codes with a *known* absorption rate (a perfect SAE of the
  organism in which, on a chosen share of the inputs where a parent and one of its children fire, the
  parent's latent is silent and a child latent whose decoder carries the parent's direction fires
  instead): the formula must give back the planted rate.

Shapes: ``x [n, d_in]``, ``codes [n, n_features]`` true activations, ``latents [n, d_sae]``,
``decoder [d_sae, d_in]`` unit rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

EPS = 1e-8


@dataclass(frozen=True)
class AbsorptionThresholds:
    """SAEBench's thresholds (the absorption task's defaults)."""

    fraction_cos_threshold: float = 0.1  # a latent may absorb when its decoder has cos ≥ this with the direction
    full_cos_threshold: float = 0.025
    projection_threshold: float = 0.4  # A/P (partial) and top/P (full) must reach this
    max_absorbers: int = 3


def projection_absorption(latents: torch.Tensor, acts: torch.Tensor, direction: torch.Tensor, cos: torch.Tensor,
                          main_latents: list[int], thresholds: AbsorptionThresholds = AbsorptionThresholds(),
                          ) -> dict[str, torch.Tensor]:
    """Per-input absorption of one concept.

    ``pᵢ = zᵢ · cos(direction, W_dec[i])``, ``P = x · direction/‖direction‖``, ``M = Σ_{i ∈ main} pᵢ``,
    ``A = sum of the top-``max_absorbers`` positive pᵢ of non-main latents with cos ≥ fraction_cos_threshold``.
    Absorption fraction: 0 if ``M ≥ P`` or ``A/P < projection_threshold``; 1 if ``M ≤ 0``; else
    ``a/(a + M)`` with ``a = min(A, P − M)``. Full absorption: every main latent inactive, the top
    ``pᵢ`` latent has cos ≥ full_cos_threshold, ``P > 0`` and that latent's ``pᵢ ≥ projection_threshold·P``.
    Returns ``fraction [n]``, ``full [n]`` (bool), ``top_latent [n]`` and ``projection [n]`` (P)."""
    direction = direction.float() / direction.float().norm()
    latents = latents.float()
    cos = cos.float()
    proj = latents * cos
    P = acts.float() @ direction
    main = torch.zeros(latents.shape[1], dtype=torch.bool)
    main[list(main_latents)] = True
    M = proj[:, main].sum(1)
    candidate = (~main) & (cos >= thresholds.fraction_cos_threshold)
    absorbing = torch.where(candidate & (proj > 0), proj, torch.zeros_like(proj))
    A = absorbing.topk(min(thresholds.max_absorbers, latents.shape[1]), dim=1).values.sum(1)
    ratio = torch.where(P != 0, A / torch.where(P != 0, P, torch.ones_like(P)), torch.zeros_like(P))
    partial = torch.minimum(A, P - M)
    fraction = torch.where(
        (M >= P) | (ratio < thresholds.projection_threshold), torch.zeros_like(P),
        torch.where(M <= 0, torch.ones_like(P), (partial / (partial + M)).clamp(0.0, 1.0)),
    )
    top_value, top_latent = proj.max(dim=1)
    mains_inactive = (latents[:, main].abs() < EPS).all(1)
    full = (mains_inactive & (cos[top_latent] >= thresholds.full_cos_threshold) & (P > 0)
            & (top_value >= thresholds.projection_threshold * P))
    return {"fraction": fraction, "full": full, "top_latent": top_latent, "projection": P}


def hierarchy_pairs(organism, level: int = 0) -> list[tuple[int, list[int]]]:
    """``[(parent feature, [its children])]`` of one level of the organism's hierarchy (0: the roots)."""
    if not organism.hierarchy:
        raise ValueError(f"preset {organism.preset.name} has no hierarchy")
    parents = organism.hierarchy_parents[level].tolist()
    children = organism.hierarchy[level].tolist()
    return list(zip(parents, children))


@dataclass
class ConceptAbsorption:
    parent: int
    n_inputs: int  # held-out inputs where the parent truly fires
    main_latent: int
    main_cosine: float  # cos(parent's true direction, main latent's decoder row)
    absorption_fraction: float  # mean of the formula over those inputs
    full_absorption_rate: float


def organism_absorption(x: torch.Tensor, codes: torch.Tensor, latents: torch.Tensor, decoder: torch.Tensor,
                        dictionary: torch.Tensor, pairs: list[tuple[int, list[int]]],
                        thresholds: AbsorptionThresholds = AbsorptionThresholds(), min_inputs: int = 20,
                        ) -> list[ConceptAbsorption]:
    """Ground-truth absorption of an SAE for each hierarchy parent in ``pairs``: the formula with the
    parent's true direction (``dictionary[parent]``), on the inputs where the parent truly fires
    (``codes[:, parent] > 0``), with the latent closest to that direction (largest decoder cosine) as
    the main latent. Parents firing on fewer than ``min_inputs`` inputs are left out."""
    decoder = decoder.float() / decoder.float().norm(dim=1, keepdim=True).clamp_min(EPS)
    out = []
    for parent, _children in pairs:
        mask = codes[:, parent] > 0
        if int(mask.sum()) < min_inputs:
            continue
        direction = dictionary[parent].float()
        cos = decoder @ (direction / direction.norm())
        main = int(cos.argmax())
        result = projection_absorption(latents[mask], x[mask], direction, cos, [main], thresholds)
        out.append(ConceptAbsorption(parent, int(mask.sum()), main, float(cos[main]),
                                     float(result["fraction"].mean()), float(result["full"].float().mean())))
    return out


@dataclass
class PlantedSAE:
    """Latent codes and decoder rows of a perfect organism SAE with absorption planted."""

    latents: torch.Tensor  # [n, n_features + n_absorbing]
    decoder: torch.Tensor  # [n_features + n_absorbing, d_in] unit rows
    planted: dict[int, float]  # parent → share of its active inputs where it was absorbed


def planted_absorption(codes: torch.Tensor, dictionary: torch.Tensor, pairs: list[tuple[int, list[int]]], rate: float,
                       *, seed: int = 0, mix: float = 1.0) -> PlantedSAE:
    """A perfect SAE of the organism (latent i = true feature i, decoder = the true dictionary), plus,
    for every child of the parents in ``pairs``, an *absorbing* latent whose decoder row is
    ``(a_child + mix·a_parent)/‖…‖``. On each input where a parent and one of its children fire, with
    probability ``rate`` (seeded), the parent's latent and the child's latent are set to 0 and the
    absorbing latent fires with ``‖s_child·a_child + s_parent·a_parent‖`` instead. ``planted[parent]`` is
    the realised share of the parent's active inputs that were absorbed (exactly known)."""
    gen = torch.Generator().manual_seed(int(seed))
    n, n_features = codes.shape
    child_list = [c for _, children in pairs for c in children]
    extra = {c: n_features + i for i, c in enumerate(child_list)}
    parent_of = {c: p for p, children in pairs for c in children}
    latents = torch.zeros(n, n_features + len(child_list))
    latents[:, :n_features] = codes.float()
    rows = [dictionary.float()]
    for c in child_list:
        row = dictionary[c].float() + mix * dictionary[parent_of[c]].float()
        rows.append((row / row.norm()).unsqueeze(0))
    decoder = torch.cat(rows)
    planted: dict[int, float] = {}
    for parent, children in pairs:
        active = codes[:, parent] > 0
        absorbed_inputs = torch.zeros(n, dtype=torch.bool)
        for c in children:
            both = active & (codes[:, c] > 0)
            chosen = both & (torch.rand(n, generator=gen) < rate)
            carried = codes[chosen, c, None].float() * dictionary[c].float() + codes[chosen, parent, None].float() * dictionary[parent].float()
            latents[chosen, extra[c]] = carried.norm(dim=1)
            latents[chosen, c] = 0.0
            latents[chosen, parent] = 0.0
            absorbed_inputs |= chosen
        planted[parent] = float(absorbed_inputs[active].float().mean()) if bool(active.any()) else float("nan")
    return PlantedSAE(latents, decoder, planted)


def absorption_agreement(measured: list[float], truth: list[float]) -> dict[str, float]:
    """How well measured absorption tracks the truth: mean absolute error and Pearson/Spearman (scipy)."""
    from benchmark.metrics.reliability import correlation

    m, t = np.asarray(measured, dtype=float), np.asarray(truth, dtype=float)
    corr = correlation(m, t)
    return {"n": int(m.size), "mae": float(np.abs(m - t).mean()), "pearson": corr.pearson, "spearman": corr.spearman}


__all__ = ["AbsorptionThresholds", "ConceptAbsorption", "PlantedSAE", "absorption_agreement", "hierarchy_pairs",
           "organism_absorption", "planted_absorption", "projection_absorption"]
