"""Comparing the SAEs of two training seeds: matchings, shared latents, chance baselines.

The kernels every consistency task composes (cross-seed, synthetic, explanation-similarity):

* :func:`match_rows`: the optimal one-to-one matching of two dictionaries' rows (signed cosine) as
  partner arrays in both directions (:class:`PairMatch`);
* :func:`compare_pair`: decoder and encoder matchings of two SAEs, per-row max cosines and the
  shared-latent flags (:class:`PairResult`);
* :func:`chance_baseline`: the MCC of independent random unit dictionaries of the same shapes, with
  one trial policy for every task.

**Shared latent (the one definition, Paulo & Belrose 2025, made symmetric).** Decoder rows and encoder
directions are matched by two separate assignments. Latent ``i`` of seed A is *shared* with latent
``j`` of seed B only when *both* assignments pair ``i`` with the same ``j`` and both matched cosines
exceed 0.7: a latent whose decoder resembles one partner and whose encoder another is not one shared
feature. The literal reading (each assignment thresholded on its own, partners free to differ) is
kept as ``any_partner`` flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmark.metrics.matching import chance_mcc, match_dictionaries, row_max_cosines

SHARED_THRESHOLD = 0.7
#: Above this many latents on either side one chance trial suffices (its spread is tiny there).
CHANCE_MULTI_TRIAL_MAX = 4096


@dataclass
class PairMatch:
    """A one-to-one matching of rows of A ``[m, d]`` to rows of B ``[n, d]``.

    ``partner_a[i]`` is the B row matched to A row ``i`` (-1 when unmatched, only possible when
    m > n); ``cos_a[i]`` its signed cosine (NaN when unmatched); ``partner_b``/``cos_b`` the
    inverse view. ``cosines`` holds the min(m, n) matched cosines in A-row order.
    """

    partner_a: np.ndarray
    cos_a: np.ndarray
    partner_b: np.ndarray
    cos_b: np.ndarray
    method: str = ""
    certified: bool | None = None
    kernel: str = ""  # kernel of the exact matcher's passes ("int8", "bf16", "fp32"; "" for a dense solve)

    @property
    def cosines(self) -> np.ndarray:
        return self.cos_a[self.partner_a >= 0]

    @property
    def mcc(self) -> float:
        return float(self.cosines.mean())


def match_rows(a: torch.Tensor, b: torch.Tensor, *, device: str = "cpu") -> PairMatch:
    """Optimal one-to-one matching (max sum of signed cosine) of unit rows ``a [m, d]``, ``b [n, d]``.

    Uses :func:`benchmark.metrics.matching.match_dictionaries` (exact, certified at scale).
    """
    m, n = a.shape[0], b.shape[0]
    res = match_dictionaries(a, b, device=device)
    rows_a = np.asarray(res.rows_a, dtype=np.int64)
    rows_b = np.asarray(res.rows_b, dtype=np.int64)
    cos = np.asarray(res.cosines, dtype=np.float64)
    method, certified, kernel = str(res.method), res.certified, str(res.kernel)
    partner_a = np.full(m, -1, dtype=np.int64)
    partner_b = np.full(n, -1, dtype=np.int64)
    cos_a = np.full(m, np.nan)
    cos_b = np.full(n, np.nan)
    partner_a[rows_a], cos_a[rows_a] = rows_b, cos
    partner_b[rows_b], cos_b[rows_b] = rows_a, cos
    return PairMatch(partner_a, cos_a, partner_b, cos_b, method=method, certified=certified, kernel=kernel)


def max_cosines(a: torch.Tensor, b: torch.Tensor, *, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Per-row maximum cosine of rows ``a [m, d]`` against ``b [n, d]`` and of ``b`` against ``a``
    (not one-to-one; Sharkey et al. 2022). Returns float64 arrays ``[m]`` and ``[n]``."""
    return row_max_cosines(a, b, device=device), row_max_cosines(b, a, device=device)


def chance_baseline(m: int, n: int, d: int, *, seed: int, device: str = "cpu", trials: int | None = None) -> tuple[float, float | None, int]:
    """``(mean, std or None, trials)``: MCC of independent random unit dictionaries ``[m, d]`` and
    ``[n, d]`` (far from 0 at small d and large m), 3 trials up to :data:`CHANCE_MULTI_TRIAL_MAX`
    latents, else 1."""
    if trials is None:
        trials = 3 if max(m, n) <= CHANCE_MULTI_TRIAL_MAX else 1
    res = chance_mcc(m, n, d, seed=seed, trials=trials, device=device)
    return float(res.mean), (float(res.std) if trials > 1 else None), trials


@dataclass
class PairResult:
    seed_a: int
    seed_b: int
    width_a: int
    width_b: int
    decoder: PairMatch
    encoder: PairMatch
    max_cos_a: np.ndarray  # decoder, A rows vs any B row
    max_cos_b: np.ndarray
    shared_a: np.ndarray  # bool [m]: A latent shared (same partner in both assignments, both > 0.7)
    any_partner_a: np.ndarray  # bool [m]: both assignments > 0.7, partners may differ
    any_partner_b: np.ndarray  # bool [n]
    activation_corr_a: np.ndarray | None = None  # [m], NaN where undefined / unmatched

    @property
    def equal_width(self) -> bool:
        return self.width_a == self.width_b

    @property
    def label(self) -> str:
        return f"{self.seed_a}-{self.seed_b}"

    def per_latent(self) -> dict[str, np.ndarray]:
        """Per-latent values whose means are this pair's metrics (over the min(m, n) matched A rows)."""
        matched = self.decoder.partner_a >= 0
        enc_matched = self.encoder.partner_a >= 0
        k = min(self.width_a, self.width_b)
        shared = np.zeros(k)
        shared[: int(self.shared_a.sum())] = 1.0  # a fraction of k: order is irrelevant for means
        dec_only = np.zeros(k)
        dec_only[: int((self.decoder.cos_a[matched] > SHARED_THRESHOLD).sum())] = 1.0
        out = {
            "decoder_mcc": self.decoder.cos_a[matched],
            "encoder_mcc": self.encoder.cos_a[enc_matched],
            "shared_fraction": shared,
            "shared_fraction_decoder": dec_only,
        }
        if self.equal_width:
            any_partner = np.concatenate([self.any_partner_a, self.any_partner_b]).astype(float)
            out["shared_fraction_any_partner"] = any_partner
            out["mean_max_cosine"] = np.concatenate([self.max_cos_a, self.max_cos_b])
        else:
            small_is_a = self.width_a < self.width_b
            out["max_cosine_large_to_small"] = self.max_cos_b if small_is_a else self.max_cos_a
            out["max_cosine_small_to_large"] = self.max_cos_a if small_is_a else self.max_cos_b
        if self.activation_corr_a is not None:
            out["activation_correlation"] = self.activation_corr_a[matched]
        return out


def compare_pair(
    seed_a: int, sae_a: Any, seed_b: int, sae_b: Any, *, device: str = "cpu", threshold: float = SHARED_THRESHOLD
) -> PairResult:
    """Decoder and encoder matchings of two SAEs plus the per-latent shared flags."""
    dec_a, dec_b = sae_a.decoder_directions().to(device), sae_b.decoder_directions().to(device)
    enc_a, enc_b = sae_a.encoder_directions().to(device), sae_b.encoder_directions().to(device)
    decoder = match_rows(dec_a, dec_b, device=device)
    encoder = match_rows(enc_a, enc_b, device=device)
    max_a, max_b = max_cosines(dec_a, dec_b)
    return build_pair_result(seed_a, seed_b, decoder, encoder, max_a, max_b, threshold=threshold)


def build_pair_result(
    seed_a: int, seed_b: int, decoder: PairMatch, encoder: PairMatch, max_a: np.ndarray, max_b: np.ndarray,
    *, threshold: float = SHARED_THRESHOLD,
) -> PairResult:
    """Combine a decoder and an encoder matching into shared-latent flags (see the module docstring)."""
    with np.errstate(invalid="ignore"):
        dec_ok_a = np.nan_to_num(decoder.cos_a, nan=-2.0) > threshold
        enc_ok_a = np.nan_to_num(encoder.cos_a, nan=-2.0) > threshold
        dec_ok_b = np.nan_to_num(decoder.cos_b, nan=-2.0) > threshold
        enc_ok_b = np.nan_to_num(encoder.cos_b, nan=-2.0) > threshold
    same_partner = (decoder.partner_a == encoder.partner_a) & (decoder.partner_a >= 0)
    return PairResult(
        seed_a=seed_a, seed_b=seed_b,
        width_a=len(decoder.partner_a), width_b=len(decoder.partner_b),
        decoder=decoder, encoder=encoder, max_cos_a=max_a, max_cos_b=max_b,
        shared_a=dec_ok_a & enc_ok_a & same_partner,
        any_partner_a=dec_ok_a & enc_ok_a,
        any_partner_b=dec_ok_b & enc_ok_b,
    )


__all__ = ["CHANCE_MULTI_TRIAL_MAX", "PairMatch", "PairResult", "SHARED_THRESHOLD", "build_pair_result", "chance_baseline", "compare_pair", "match_rows", "max_cosines"]
