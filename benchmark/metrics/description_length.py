"""Description length of an SAE's code at a declared reconstruction distortion (Ayonrinde et al., MDL-SAEs).

**Definition** (bits per token, on a sample of ``n`` tokens ``x_t [d_in]``; ``z_t`` the SAE's code):

* Firing: latent ``i`` fires on token ``t`` when ``z_ti > 0``. ``p_i`` = the fraction of sampled tokens on
  which it fires. Transmitting whether it fires costs the binary entropy ``h(p_i) = −p log₂ p − (1−p) log₂(1−p)``
  bits per token (``h(0) = h(1) = 0``): each latent's firing is coded as an independent Bernoulli variable.
* Magnitude: when it fires, its value is quantised and the bin index transmitted. Bins are **uniform per
  latent over its own active range** on the sample, ``[lo_i, hi_i]`` = the smallest and largest value it
  takes when it fires, cut into ``B`` equal bins (the top edge belongs to the last bin). ``B`` is **one
  number shared by every latent**; a value is reconstructed as the **mean of the sample values in its bin**
  (the bin's centroid, which minimises that bin's squared error). The magnitude costs the plug-in entropy
  ``H_i(B) = −Σ_b q_ib log₂ q_ib`` of latent ``i``'s bin frequencies ``q_ib`` among its active tokens.
* ``DL(B) = Σ_i [ h(p_i) + p_i · H_i(B) ]`` bits per token.
* Distortion: ``EV`` is the explained variance of the SAE's own reconstruction,
  ``1 − Σ_t‖x_t − x̂_t‖² / Σ_t‖x_t − x̄‖²`` (``x̄`` the sample mean), and ``EV_q(B)`` the same with the code
  quantised. **ε is an absolute loss of explained variance**: ``B`` is admissible when
  ``EV_q(B) ≥ EV − ε``, i.e. ``Σ‖x − x̂_q‖² ≤ Σ‖x − x̂‖² + ε · Σ‖x − x̄‖²``.
* The quantisation used is the **coarsest admissible one on the ladder** ``B = 1, 2, 4, …, 2^max_bits``,
  searched from the coarse end (the first ``B`` that passes; quantisation error need not fall
  monotonically with ``B`` because the errors of different latents interact through the decoder, so
  the ladder is walked rather than bisected). ``description_length = DL(B*)``; per active latent it
  is ``DL(B*) / L0`` (``L0`` = mean number of firing latents per token).

**Choices, and what the number leaves out.** Centroids are the best reconstruction values for the
chosen bins, so they also undo part of an SAE's shrinkage: the quantised code can reconstruct *better*
than the unquantised one (``EV_q > EV``), and a coarse ``B`` then passes easily. The per-latent ranges and centroids (``2 + B`` numbers per
latent) are a one-off codebook cost per dictionary, not counted per token. The entropies are plug-in
(maximum-likelihood) estimates on the sample, which underestimate the true entropy (by about
``(occupied bins − 1) / (2 n_i ln 2)`` bits for a latent with ``n_i`` active tokens; never more than
``log₂ n_i``), and the codebook is fit on the same sample it is scored on; compare SAEs on the same
token count. Per-latent ranges make the number invariant to rescaling a latent (``z_i → c·z_i`` with its
decoder row divided by ``c``). SAEBench's ``mdl`` eval has the same firing + magnitude decomposition but
bins over ``[0, max]`` with midpoints, histograms inactive zeros into the first magnitude bin, and
checks ``sqrt(MSE) / d_in`` against its threshold; this module does not follow those details.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch

from benchmark.errors import TaskError

#: Bins per latent tried: 2**0 … 2**DEFAULT_MAX_BITS.
DEFAULT_MAX_BITS = 16
#: Up to this many (latent, bin) cells, bins are counted in a dense table instead of by sorting.
BINCOUNT_MAX = 1 << 22


@dataclass
class SparseCode:
    """The nonzero entries of an SAE's code on ``n_tokens`` tokens (``tokens``/``latents``/``values``
    are parallel ``[nnz]`` tensors: token row, latent index, activation), ordered by token."""

    tokens: torch.Tensor  # int64 [nnz]
    latents: torch.Tensor  # int64 [nnz]
    values: torch.Tensor  # float32 [nnz], > 0
    n_tokens: int
    d_sae: int


@dataclass
class EncodedSample:
    """What the distortion search needs about one SAE on one token sample: the code, the inputs and
    the SAE's reconstruction before denormalisation (so a quantised code reuses it), per batch."""

    code: SparseCode
    x: list[torch.Tensor]  # per batch [b, d_in], float32
    x_hat_normalised: list[torch.Tensor]  # per batch [b, d_in]: decode(z) in the SAE's input space
    states: list[tuple[torch.Tensor, ...]]  # per batch: what undoes the SAE's input normalisation
    residual_sq: float  # Σ‖x − x̂‖²
    total_sq: float  # Σ‖x − x̄‖²


@dataclass
class LadderStep:
    """One tried quantisation: ``bins`` per latent, its explained variance and description length."""

    bins: int
    explained_variance_quantised: float
    description_length: float
    admissible: bool


@dataclass
class DescriptionLength:
    """The result for one SAE (see the module docstring for every definition). ``bins`` is None when no
    quantisation on the ladder is admissible (then the DL fields are None too)."""

    n_tokens: int
    l0: float
    explained_variance: float
    epsilon: float
    bins: int | None
    description_length: float | None
    firing_bits: float  # Σ_i h(p_i)
    magnitude_bits: float | None  # Σ_i p_i H_i(B*)
    explained_variance_quantised: float | None
    firing_rate: np.ndarray  # [d_sae] p_i
    magnitude_entropy: np.ndarray | None  # [d_sae] H_i(B*) (0 for latents that never fire)
    active_low: np.ndarray  # [d_sae] lo_i (NaN for latents that never fire)
    active_high: np.ndarray  # [d_sae] hi_i
    ladder: list[LadderStep] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)  # wall time: encode, ladder

    @property
    def per_active_latent(self) -> float | None:
        """Bits per firing latent: ``DL / L0`` (None when undefined)."""
        if self.description_length is None or self.l0 <= 0:
            return None
        return self.description_length / self.l0


def binary_entropy_bits(p: np.ndarray) -> np.ndarray:
    """``h(p)`` in bits, elementwise, with ``h(0) = h(1) = 0``."""
    p = np.asarray(p, dtype=np.float64)
    out = np.zeros_like(p)
    inside = (p > 0) & (p < 1)
    q = p[inside]
    out[inside] = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
    return out


def effective_decoder_rows(sae) -> torch.Tensor:
    """``W [d_sae, d_in]`` with ``sae.decode(z) = z @ W + b_dec`` (the decoder rows, divided by their norms
    for TopK SAEs that rescale activations by decoder norm). Checked against ``sae.decode`` on a few
    latents so that a change in the SAE's decode rule cannot silently change this module's numbers."""
    W = sae.W_dec.detach()
    if sae.config.rescale_acts_by_decoder_norm and sae.architecture in ("topk", "batchtopk"):
        W = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    probe = torch.linspace(0, sae.d_sae - 1, steps=min(4, sae.d_sae)).round().long()
    with torch.no_grad():
        z = torch.zeros(len(probe), sae.d_sae, dtype=sae.W_dec.dtype, device=sae.W_dec.device)
        z[torch.arange(len(probe)), probe] = 1.0
        got = sae.decode(z) - sae.decode(torch.zeros_like(z))
    if not torch.allclose(got, W[probe].to(got.dtype), rtol=1e-4, atol=1e-6 * float(W.abs().max().clamp_min(1))):
        raise TaskError("the SAE's decode is not z @ W_dec (+ b_dec) as this metric assumes", field="sae.decode")
    return W


@torch.no_grad()
def encode_sample(sae, batches: Iterable[torch.Tensor]) -> EncodedSample:
    """Encode every batch ``[b, d_in]`` (model units) with ``sae``; keep the sparse code and what the
    distortion search reuses. The reconstruction is decoded from the sparse code (``nnz·d_in`` work rather
    than a dense ``d_sae``-wide product). Sums of squares are accumulated in float64."""
    rows = effective_decoder_rows(sae).float()
    toks, lats, vals, xs, hats, states = [], [], [], [], [], []
    n = 0
    residual_sq = 0.0
    sum_x = None
    sum_sq = 0.0
    for x in batches:
        x = x.to(device=sae.W_dec.device, dtype=torch.float32)
        x_norm, state = sae.normalise_input(x)
        z = sae._encode_normalised(x_norm)
        t, i = (z > 0).nonzero(as_tuple=True)
        part = SparseCode(t, i, z[t, i].float(), x.shape[0], sae.d_sae)
        x_hat_norm = _sparse_times(part, part.values, rows) + sae.b_dec.float()
        residual_sq += _squared_error(x, sae.denormalise_output(x_hat_norm, state))
        xd = x.double()
        sum_x = xd.sum(0) if sum_x is None else sum_x + xd.sum(0)
        sum_sq += float(xd.pow(2).sum())
        toks.append((t + n).cpu())
        lats.append(i.cpu())
        vals.append(part.values.cpu())
        xs.append(x)
        hats.append(x_hat_norm)  # the tensor the residual above was computed from
        states.append(state)
        n += x.shape[0]
    if n == 0:
        raise TaskError("the token sample is empty", field="n_tokens")
    total_sq = sum_sq - float(sum_x.pow(2).sum()) / n  # Σ‖x − x̄‖² = Σ‖x‖² − ‖Σx‖²/n
    code = SparseCode(torch.cat(toks), torch.cat(lats), torch.cat(vals), n, sae.d_sae)
    return EncodedSample(code, xs, hats, states, residual_sq, total_sq)


def _active_ranges(code: SparseCode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per latent: active count ``n_i``, ``lo_i`` and ``hi_i`` (float64; lo = hi = 0 for silent latents)."""
    m = code.d_sae
    counts = torch.bincount(code.latents, minlength=m)
    v = code.values.double()
    lo = torch.full((m,), math.inf, dtype=torch.float64).scatter_reduce(0, code.latents, v, "amin")
    hi = torch.full((m,), -math.inf, dtype=torch.float64).scatter_reduce(0, code.latents, v, "amax")
    silent = counts == 0
    lo[silent] = 0.0
    hi[silent] = 0.0
    return counts, lo, hi


def quantise(code: SparseCode, bins: int, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantise every active value with ``bins`` uniform bins per latent over ``[lo_i, hi_i]``.

    Returns ``(reconstructed values [nnz] float64, occupied (latent, bin) keys [u], their counts [u])``;
    a value is reconstructed as the mean of the sample values in its bin."""
    lat = code.latents
    v = code.values.double()
    width = (hi - lo)[lat]
    scaled = torch.where(width > 0, (v - lo[lat]) / torch.where(width > 0, width, torch.ones_like(width)) * bins,
                         torch.zeros_like(v))
    index = scaled.floor().clamp(0, bins - 1).long()
    keys = lat * bins + index
    if code.d_sae * bins <= BINCOUNT_MAX:  # a dense table of (latent, bin) cells is cheaper than sorting
        counts = torch.bincount(keys, minlength=code.d_sae * bins)
        sums = torch.bincount(keys, weights=v, minlength=code.d_sae * bins)
        occupied = counts.nonzero()[:, 0]
        centroids = sums[keys] / counts[keys].double()
        return centroids, occupied, counts[occupied]
    uniq, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, v)
    centroids = sums / counts.double()
    return centroids[inverse], uniq, counts


def magnitude_entropy_bits(keys: torch.Tensor, counts: torch.Tensor, bins: int, d_sae: int) -> np.ndarray:
    """Plug-in entropy (bits) of each latent's bin frequencies from the occupied ``(latent·bins + bin)``
    keys and their counts: ``H_i = log₂ n_i − (1/n_i) Σ_b c_ib log₂ c_ib``."""
    lat = keys // bins
    c = counts.double()
    n_i = torch.zeros(d_sae, dtype=torch.float64).index_add_(0, lat, c)
    c_log_c = torch.zeros(d_sae, dtype=torch.float64).index_add_(0, lat, c * torch.log2(c))
    safe = torch.where(n_i > 0, n_i, torch.ones_like(n_i))
    h = torch.where(n_i > 0, torch.log2(safe) - c_log_c / safe, torch.zeros_like(n_i))
    return h.clamp_min(0.0).numpy()


def _sparse_times(code: SparseCode, values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``Z @ rows`` for the sparse matrix ``Z [n_tokens, d_sae]`` with the code's pattern and ``values``
    (entries are stored token by token, so CSR row pointers are the running count per token)."""
    starts = torch.zeros(code.n_tokens + 1, dtype=torch.int64, device=code.tokens.device)
    starts[1:] = torch.cumsum(torch.bincount(code.tokens, minlength=code.n_tokens), 0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": a sparse × dense product is all we use
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_csr_tensor(starts, code.latents, values.to(rows.dtype), (code.n_tokens, code.d_sae))
        return torch.sparse.mm(matrix, rows)


def _squared_error(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """``Σ‖x − x̂‖²``: per-token sums in the inputs' precision, their total in float64."""
    diff = x - x_hat.to(x.dtype)
    return float((diff * diff).sum(1).double().sum())


@torch.no_grad()
def quantised_residual_sq(sample: EncodedSample, decoder_rows: torch.Tensor, new_values: torch.Tensor, sae) -> float:
    """``Σ‖x − x̂_q‖²`` when the code's active values are replaced by ``new_values``: the reconstruction
    moves by the sparse × dense product ``(ẑ − z) @ W`` (nnz·d_in work; a dense code never exists)."""
    code = sample.code
    delta = (new_values - code.values.double()).float()
    shift = _sparse_times(code, delta, decoder_rows.detach().float().cpu())  # [n, d_in]
    total, start = 0.0, 0
    for x, hat, state in zip(sample.x, sample.x_hat_normalised, sample.states):
        stop = start + x.shape[0]
        total += _squared_error(x, sae.denormalise_output(hat + shift[start:stop].to(hat.device), state))
        start = stop
    return total


def description_length(sae, batches: Iterable[torch.Tensor], *, epsilon: float, max_bits: int = DEFAULT_MAX_BITS,
                       progress: Any = None) -> DescriptionLength:
    """Description length of ``sae``'s code on the token ``batches`` (model units, ``[b, d_in]`` each) at
    distortion ``epsilon`` (an absolute loss of explained variance); see the module docstring.
    ``progress``: an optional callable ``(bins) -> None`` called per ladder step."""
    if not epsilon >= 0:
        raise TaskError(f"epsilon must be ≥ 0, got {epsilon}", field="epsilon")
    started = time.perf_counter()
    sample = encode_sample(sae, batches)
    encoded = time.perf_counter()
    code = sample.code
    n, m = code.n_tokens, code.d_sae
    counts, lo, hi = _active_ranges(code)
    firing_rate = (counts.double() / n).numpy()
    firing_bits = float(binary_entropy_bits(firing_rate).sum())
    total = sample.total_sq
    ev = 1.0 - sample.residual_sq / total if total > 0 else float("nan")
    budget = sample.residual_sq + epsilon * total
    decoder_rows = effective_decoder_rows(sae)  # checked once more here: cheap, and keeps this function standalone
    silent = (counts == 0).numpy()
    low = np.where(silent, np.nan, lo.numpy())
    high = np.where(silent, np.nan, hi.numpy())
    result = DescriptionLength(
        n_tokens=n, l0=float(len(code.values)) / n, explained_variance=ev, epsilon=epsilon, bins=None,
        description_length=None, firing_bits=firing_bits, magnitude_bits=None, explained_variance_quantised=None,
        firing_rate=firing_rate, magnitude_entropy=None, active_low=low, active_high=high,
    )
    for bits in range(max_bits + 1):
        bins = 2 ** bits
        if progress is not None:
            progress(bins)
        values, keys, key_counts = quantise(code, bins, lo, hi)
        resid_q = quantised_residual_sq(sample, decoder_rows, values, sae)
        entropy = magnitude_entropy_bits(keys, key_counts, bins, m)
        magnitude_bits = float((firing_rate * entropy).sum())
        ev_q = 1.0 - resid_q / total if total > 0 else float("nan")
        # the budget test runs on sums of squares (no division), with a relative slack for fp rounding
        admissible = resid_q <= budget * (1 + 1e-9) + 1e-12
        result.ladder.append(LadderStep(bins, ev_q, firing_bits + magnitude_bits, bool(admissible)))
        if admissible:
            result.bins = bins
            result.description_length = firing_bits + magnitude_bits
            result.magnitude_bits = magnitude_bits
            result.explained_variance_quantised = ev_q
            result.magnitude_entropy = entropy
            break
    result.seconds = {"encode": round(encoded - started, 4), "ladder": round(time.perf_counter() - encoded, 4)}
    return result


__all__ = ["DEFAULT_MAX_BITS", "DescriptionLength", "EncodedSample", "LadderStep", "SparseCode", "binary_entropy_bits",
           "description_length", "effective_decoder_rows", "encode_sample", "magnitude_entropy_bits", "quantise",
           "quantised_residual_sq"]
