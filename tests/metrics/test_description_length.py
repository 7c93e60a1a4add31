"""Description length of an SAE's code: closed forms on constructed codes and an independent numpy
implementation of the whole definition (bins, centroids, distortion ladder, entropies)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from benchmark.errors import TaskError
from benchmark.metrics.description_length import (
    SparseCode,
    binary_entropy_bits,
    description_length,
    quantise,
)
from benchmark.metrics.reconstruction import reconstruction_stats
from benchmark.sae.model import SAE, SAEConfig


def batches_of(x: torch.Tensor, size: int = 97):
    return [x[i:i + size] for i in range(0, len(x), size)]


def identity_sae(m: int) -> SAE:
    """z = ReLU(x), x̂ = z: the code is the input itself."""
    eye = torch.eye(m)
    return SAE(SAEConfig("standard", m, m, apply_b_dec_to_input=False), W_enc=eye, W_dec=eye)


def test_binary_entropy_matches_scipy():
    p = np.array([0.0, 1e-4, 0.1, 0.25, 0.5, 0.9, 1.0])
    want = [scipy_entropy([q, 1 - q], base=2) for q in p]
    assert np.allclose(binary_entropy_bits(p), want, atol=1e-12)


def test_quantise_uses_uniform_bins_over_the_active_range_and_centroids():
    # latent 0 takes 0.5..4.5; two bins over [0.5, 4.5] split at 2.5, the top value joins the last bin
    values = torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5, 7.0])
    code = SparseCode(tokens=torch.arange(6), latents=torch.tensor([0, 0, 0, 0, 0, 1]), values=values, n_tokens=6, d_sae=2)
    lo, hi = torch.tensor([0.5, 7.0], dtype=torch.float64), torch.tensor([4.5, 7.0], dtype=torch.float64)
    recon, keys, counts = quantise(code, 2, lo, hi)
    assert recon.tolist() == [1.0, 1.0, 3.5, 3.5, 3.5, 7.0]
    assert keys.tolist() == [0, 1, 2] and counts.tolist() == [2, 3, 1]


def known_code(n: int = 960) -> tuple[torch.Tensor, float, np.ndarray, int]:
    """A code with a closed-form description length: latent i fires on a fixed share p_i of the tokens
    and takes Q_i equally frequent, evenly spaced values (1, 1.5, 2, …)."""
    rates = [0.5, 0.25, 0.125, 0.75, 0.0, 1.0]
    levels = [8, 4, 1, 2, 1, 8]
    x = torch.zeros(n, len(rates))
    for i, (p, q) in enumerate(zip(rates, levels)):
        active = int(round(p * n))
        tokens = torch.randperm(n, generator=torch.Generator().manual_seed(i))[:active]
        x[tokens, i] = 1.0 + 0.5 * (torch.arange(active) % q).float()
    p = np.array(rates)
    want = float((binary_entropy_bits(p) + p * np.log2(levels)).sum())
    return x, want, np.log2(levels), max(levels)


def test_known_entropy_code_gives_the_closed_form():
    x, want, magnitude, bins = known_code()
    result = description_length(identity_sae(x.shape[1]), batches_of(x), epsilon=0.0)
    assert result.explained_variance == pytest.approx(1.0)
    # only an exact quantisation is admissible at epsilon 0, and the coarsest exact one has max Q_i bins
    assert result.bins == bins
    assert [s.bins for s in result.ladder] == [1, 2, 4, 8] and [s.admissible for s in result.ladder] == [False] * 3 + [True]
    assert result.description_length == pytest.approx(want, abs=1e-12)
    assert np.allclose(result.magnitude_entropy, magnitude, atol=1e-12)
    assert result.l0 == pytest.approx(float((x > 0).sum(1).float().mean()))
    assert result.per_active_latent == pytest.approx(want / result.l0)
    assert result.explained_variance_quantised == pytest.approx(1.0)


def test_epsilon_admits_a_coarser_quantisation():
    x, _, _, _ = known_code()
    loose = description_length(identity_sae(x.shape[1]), batches_of(x), epsilon=0.05)
    assert loose.bins < 8 and loose.explained_variance_quantised >= loose.explained_variance - 0.05
    with pytest.raises(TaskError, match="epsilon"):
        description_length(identity_sae(x.shape[1]), batches_of(x), epsilon=-0.1)


def test_no_admissible_quantisation_leaves_the_description_length_undefined():
    x, _, _, _ = known_code()
    result = description_length(identity_sae(x.shape[1]), batches_of(x), epsilon=0.0, max_bits=2)
    assert result.bins is None and result.description_length is None and result.per_active_latent is None
    assert len(result.ladder) == 3


# --- an independent numpy implementation of the whole definition ------------------------------------------
def numpy_description_length(x: np.ndarray, z: np.ndarray, decode, epsilon: float, max_bits: int = 16):
    """Dense numpy: per-latent uniform bins over the active range, centroid reconstruction, the first
    admissible power of two, plug-in entropies (scipy)."""
    n, m = z.shape
    active = z > 0
    total = ((x - x.mean(0)) ** 2).sum()
    resid = ((x - decode(z)) ** 2).sum()
    for bits in range(max_bits + 1):
        B = 2 ** bits
        zq = z.copy()
        H = np.zeros(m)
        for i in range(m):
            v = z[active[:, i], i].astype(np.float64)
            if not len(v):
                continue
            lo, hi = v.min(), v.max()
            idx = np.zeros(len(v), dtype=int) if hi == lo else np.clip(np.floor((v - lo) / (hi - lo) * B), 0, B - 1).astype(int)
            cent = np.array([v[idx == b].mean() if (idx == b).any() else 0 for b in range(B)])
            zq[active[:, i], i] = cent[idx]
            H[i] = scipy_entropy(np.bincount(idx, minlength=B), base=2)
        resid_q = ((x - decode(zq)) ** 2).sum()
        if resid_q <= resid + epsilon * total:
            p = active.mean(0)
            return B, float((binary_entropy_bits(p) + p * H).sum()), 1 - resid_q / total, 1 - resid / total
    return None, None, None, 1 - resid / total


D, M = 16, 24


def sae_data(sae: SAE, n: int = 700, seed: int = 5) -> np.ndarray:
    """Inputs an SAE reconstructs reasonably: sparse non-negative combinations of its decoder rows plus noise."""
    rng = np.random.default_rng(seed)
    s = rng.exponential(3.0, size=(n, sae.d_sae)) * (rng.random((n, sae.d_sae)) < 0.12)
    W = sae.W_dec.numpy().astype(np.float64)
    return (s @ W + sae.b_dec.numpy() + 0.05 * rng.normal(size=(n, sae.d_in))).astype(np.float32)


def random_sae(kind: str, d: int = D, m: int = M, seed: int = 0) -> tuple[SAE, callable, callable]:
    """An SAE and numpy encode/decode written from its definition (not through the SAE module)."""
    rng = np.random.default_rng(seed)
    W_dec = (rng.normal(size=(m, d)) * rng.uniform(0.5, 2.0, size=(m, 1))).astype(np.float32)
    W_enc = (W_dec / (W_dec ** 2).sum(1, keepdims=True)).T.copy()
    b_enc = rng.normal(-1.0, 0.05, size=m).astype(np.float32)
    b_dec = rng.normal(size=d).astype(np.float32)
    t = {k: torch.tensor(v) for k, v in dict(W_enc=W_enc, W_dec=W_dec, b_enc=b_enc, b_dec=b_dec).items()}
    if kind == "standard":
        sae = SAE(SAEConfig("standard", d, m), **t)

        def encode(x):
            return np.maximum((x - b_dec) @ W_enc + b_enc, 0)

        def decode(z):
            return z @ W_dec + b_dec
    elif kind == "topk-rescaled":
        sae = SAE(SAEConfig("topk", d, m, k=4, rescale_acts_by_decoder_norm=True), **t)
        norms = np.linalg.norm(W_dec, axis=1)

        def encode(x):
            pre = ((x - b_dec) @ W_enc + b_enc) * norms
            out = np.zeros_like(pre)
            top = np.argsort(-pre, axis=1)[:, :4]
            np.put_along_axis(out, top, np.maximum(np.take_along_axis(pre, top, 1), 0), 1)
            return out

        def decode(z):
            return (z / norms) @ W_dec + b_dec
    else:  # constant_norm_rescale: each token scaled to norm sqrt(d) on the way in, back on the way out
        b_dec = (0.1 * b_dec).astype(np.float32)
        t["b_dec"] = torch.tensor(b_dec)
        sae = SAE(SAEConfig("standard", d, m, input_normalisation="constant_norm_rescale"), **t)
        scale = {}

        def encode(x):
            s = np.sqrt(d) / np.linalg.norm(x, axis=1, keepdims=True)
            scale["s"] = s
            return np.maximum((x * s - b_dec) @ W_enc + b_enc, 0)

        def decode(z):
            return (z @ W_dec + b_dec) / scale["s"]
    return sae, encode, decode


@pytest.mark.parametrize("kind, seed, epsilon", [("standard", 4, 0.002), ("topk-rescaled", 0, 0.002),
                                                 ("topk-rescaled", 0, 0.02), ("constant-norm", 1, 0.002)])
def test_matches_an_independent_numpy_implementation(kind, seed, epsilon):
    """Cases chosen so that the ladder takes several steps (toy SAEs reconstruct poorly, and a centroid
    decoder can even beat the unquantised code by undoing shrinkage, so one bin often passes)."""
    sae, encode, decode = random_sae(kind, seed=seed)
    x = sae_data(sae)
    if kind == "constant-norm":  # tokens of any norm: the SAE sees them at norm sqrt(d)
        r = np.random.default_rng(6).uniform(0.5, 2.0, size=(len(x), 1))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(D) * r).astype(np.float32)
    z = encode(x.astype(np.float64)).astype(np.float32)
    want_bins, want_dl, want_evq, want_ev = numpy_description_length(x.astype(np.float64), z.astype(np.float64), decode, epsilon)
    got = description_length(sae, batches_of(torch.tensor(x)), epsilon=epsilon)
    assert got.explained_variance == pytest.approx(want_ev, abs=1e-5)
    assert got.bins == want_bins and want_bins > 1, [(s.bins, s.explained_variance_quantised) for s in got.ladder]
    assert got.description_length == pytest.approx(want_dl, abs=1e-9)
    assert got.explained_variance_quantised == pytest.approx(want_evq, abs=1e-5)


def test_l0_and_explained_variance_agree_with_reconstruction_stats():
    sae, _, _ = random_sae("standard", seed=3)
    x = torch.tensor(sae_data(sae, 500, seed=2))
    got = description_length(sae, batches_of(x), epsilon=0.01)
    want = reconstruction_stats(sae, x)
    assert got.l0 == pytest.approx(want["l0"])
    assert got.explained_variance == pytest.approx(want["explained_variance"], abs=1e-6)  # fp32 per-token sums
    assert np.mean(got.firing_rate == 0) == pytest.approx(want["never_fired_fraction"])


def test_rescaling_a_latent_leaves_the_description_length_unchanged():
    """z_i → c_i·z_i with decoder row i divided by c_i is the same SAE function; per-latent bins make the
    description length invariant to it."""
    sae, _, _ = random_sae("standard", seed=4)
    c = torch.tensor(np.random.default_rng(9).uniform(0.1, 10.0, size=sae.d_sae), dtype=torch.float32)
    scaled = SAE(SAEConfig("standard", sae.d_in, sae.d_sae), W_enc=sae.W_enc * c, b_enc=sae.b_enc * c,
                 W_dec=sae.W_dec / c[:, None], b_dec=sae.b_dec)
    x = torch.tensor(sae_data(sae, 600, seed=1))
    a = description_length(sae, batches_of(x), epsilon=0.01)
    b = description_length(scaled, batches_of(x), epsilon=0.01)
    assert a.bins == b.bins
    assert a.description_length == pytest.approx(b.description_length, abs=1e-9)
