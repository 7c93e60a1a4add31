"""Synthetic dictionary pairs that resemble two SAE seeds, for benchmarks and tests of the matcher.

Real decoder dictionaries are anisotropic: rows share a mean direction, most of their variance lies
in a low-rank subspace, and they cluster (feature splitting, families of related latents). So an
unrelated row of one seed still has many moderately high cosines with the other seed, which is what
makes the assignment of the unshared rows hard. Paulo & Belrose (2025) find only ~30 % of latents
shared between seeds at 131K latents.

A row is ``normalise(w_mean·μ + w_cluster·centre[c] + w_low·(z ⊙ σ)·U + w_iso·g/√d)`` with a global
unit direction μ, cluster centres drawn from the same law (n / cluster_size clusters), a random
rank-``rank`` basis U with power-law scales σ_k ∝ 1/k, z and g standard normal. Defaults give
(16K latents, d = 768): mean off-diagonal cosine ≈ 0.08, std ≈ 0.17; an unrelated row's best cosine
with the other dictionary ≈ 0.46 (median), its 20th best ≈ 0.39; nearest neighbour within a
dictionary ≈ 0.46 (median, 0.35–0.64 for the 10th–90th percentiles).

``b`` is a random permutation of ``a`` whose rows are perturbed to cosine U(0.7, 0.95) with their
``a`` partner (the perturbation is drawn from the same law, made orthogonal to the row), with a
fraction ``unshared`` of its rows replaced by fresh draws from the law: those rows, and their former
partners in ``a``, have no counterpart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SeedLikePair:
    a: np.ndarray  # [n, d] fp32, unit rows
    b: np.ndarray  # [n_b, d] fp32, unit rows
    partner: np.ndarray  # [n_b] index into a of b's perturbed partner, −1 for unshared rows
    cosine: np.ndarray  # [n_b] designed cosine of b's row with its partner (nan when unshared)


class _Law:
    def __init__(self, rng: np.random.Generator, d: int, n_clusters: int, rank: int, w_mean: float,
                 w_cluster: float, w_low: float, w_iso: float):
        self.d = d
        q, _ = np.linalg.qr(rng.standard_normal((d, min(rank, d))).astype(np.float32))
        self.basis = np.ascontiguousarray(q.T)
        scales = np.arange(1, self.basis.shape[0] + 1, dtype=np.float32) ** -1.0
        self.scales = scales / np.float32(np.sqrt((scales**2).sum()))
        mean = rng.standard_normal(d).astype(np.float32)
        self.mean = mean / np.linalg.norm(mean)
        self.w = (np.float32(w_mean), np.float32(w_cluster), np.float32(w_low), np.float32(w_iso))
        self.centres = np.zeros((1, d), dtype=np.float32)
        self.centres = self.draw(rng, max(1, n_clusters), clustered=False)

    def draw(self, rng: np.random.Generator, n: int, clustered: bool = True, chunk: int = 8192) -> np.ndarray:
        w_mean, w_cluster, w_low, w_iso = self.w
        out = np.empty((n, self.d), dtype=np.float32)
        for start in range(0, n, chunk):
            k = min(chunk, n - start)
            z = rng.standard_normal((k, len(self.scales)), dtype=np.float32) * self.scales
            x = z @ self.basis
            x *= w_low
            x += (w_iso / np.float32(np.sqrt(self.d))) * rng.standard_normal((k, self.d), dtype=np.float32)
            if clustered:
                x += w_cluster * self.centres[rng.integers(0, len(self.centres), k)]
                x += w_mean * self.mean
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[start : start + k] = x
        return out


def seed_like_pair(
    n: int,
    d: int,
    *,
    unshared: float = 0.3,
    seed: int = 0,
    n_b: int | None = None,
    cos_range: tuple[float, float] = (0.7, 0.95),
    cluster_size: int = 16,
    rank: int = 64,
    w_mean: float = 0.3,
    w_cluster: float = 0.5,
    w_low: float = 0.6,
    w_iso: float = 0.8,
    chunk: int = 8192,
) -> SeedLikePair:
    """Two fp32 dictionaries a [n, d], b [n_b, d] (n_b defaults to n) resembling two SAE seeds (module doc)."""
    if not 0.0 <= unshared <= 1.0:
        raise ValueError(f"unshared must be in [0, 1], got {unshared}")
    n_b = n if n_b is None else n_b
    rng = np.random.default_rng(seed)
    law = _Law(rng, d, n // cluster_size, rank, w_mean, w_cluster, w_low, w_iso)
    a = law.draw(rng, n, chunk=chunk)
    shared_count = min(n, n_b) - int(round(unshared * min(n, n_b)))
    partner = np.full(n_b, -1, dtype=np.int64)
    cosine = np.full(n_b, np.nan)
    slots = rng.permutation(n_b)[:shared_count]  # rows of b that get a partner
    partner[slots] = rng.choice(n, shared_count, replace=False)
    cosine[slots] = rng.uniform(*cos_range, shared_count)
    b = np.empty((n_b, d), dtype=np.float32)
    for start in range(0, n_b, chunk):
        stop = min(n_b, start + chunk)
        rows = law.draw(rng, stop - start, chunk=chunk)  # fresh draws: unshared rows and perturbations
        has = partner[start:stop] >= 0
        if has.any():
            base = a[partner[start:stop][has]]
            noise = rows[has]
            noise -= np.sum(noise * base, axis=1, keepdims=True) * base
            noise /= np.maximum(np.linalg.norm(noise, axis=1, keepdims=True), 1e-30)
            c = cosine[start:stop][has].astype(np.float32)[:, None]
            rows[has] = c * base + np.sqrt(1 - c * c) * noise  # rows without a partner stay fresh draws
        b[start:stop] = rows
    return SeedLikePair(a, b, partner, cosine)
