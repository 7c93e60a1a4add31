"""The SAE module's encode rules against direct numpy computations of each architecture."""

import numpy as np
import pytest
import torch

from benchmark.errors import CheckpointError
from benchmark.sae.model import SAE, SAEConfig, unit_rows

D_IN, D_SAE = 6, 10


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(D_IN, D_SAE)).astype(np.float32),
        "W_dec": rng.normal(size=(D_SAE, D_IN)).astype(np.float32),
        "b_enc": rng.normal(size=D_SAE).astype(np.float32) * 0.1,
        "b_dec": rng.normal(size=D_IN).astype(np.float32) * 0.1,
    }


def _sae(arch, w, **cfg):
    tensors = {k: torch.from_numpy(v) for k, v in w.items()}
    return SAE(SAEConfig(architecture=arch, d_in=D_IN, d_sae=D_SAE, **cfg), **tensors)


@pytest.fixture
def x():
    return np.random.default_rng(1).normal(size=(5, D_IN)).astype(np.float32)


def test_standard_and_reconstruction(x):
    w = _weights()
    sae = _sae("standard", w)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    z = np.maximum(pre, 0)
    np.testing.assert_allclose(sae.encode(torch.from_numpy(x)).numpy(), z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sae(torch.from_numpy(x)).numpy(), z @ w["W_dec"] + w["b_dec"], rtol=1e-5, atol=1e-5)


def test_topk_keeps_k_largest(x):
    w = _weights()
    sae = _sae("topk", w, k=3, apply_b_dec_to_input=False)
    pre = x @ w["W_enc"] + w["b_enc"]
    expected = np.zeros_like(pre)
    for row in range(len(pre)):
        top = np.argsort(-pre[row])[:3]
        expected[row, top] = np.maximum(pre[row, top], 0)
    np.testing.assert_allclose(sae.encode(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_jumprelu_threshold(x):
    w = _weights()
    threshold = np.full(D_SAE, 0.3, dtype=np.float32)
    sae = SAE(SAEConfig(architecture="jumprelu", d_in=D_IN, d_sae=D_SAE),
              threshold=torch.from_numpy(threshold), **{k: torch.from_numpy(v) for k, v in w.items()})
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    expected = np.where(pre > threshold, np.maximum(pre, 0), 0)
    np.testing.assert_allclose(sae.encode(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_gated(x):
    w = _weights()
    rng = np.random.default_rng(3)
    b_mag, r_mag = rng.normal(size=D_SAE).astype(np.float32), rng.normal(size=D_SAE).astype(np.float32) * 0.1
    sae = SAE(SAEConfig(architecture="gated", d_in=D_IN, d_sae=D_SAE), W_enc=torch.from_numpy(w["W_enc"]),
              W_dec=torch.from_numpy(w["W_dec"]), b_gate=torch.from_numpy(w["b_enc"]), b_dec=torch.from_numpy(w["b_dec"]),
              b_mag=torch.from_numpy(b_mag), r_mag=torch.from_numpy(r_mag))
    centred = x - w["b_dec"]
    gate = (centred @ w["W_enc"] + w["b_enc"]) > 0
    magnitude = np.maximum(centred @ (w["W_enc"] * np.exp(r_mag)) + b_mag, 0)
    np.testing.assert_allclose(sae.encode(torch.from_numpy(x)).numpy(), gate * magnitude, rtol=1e-5, atol=1e-5)


def test_batchtopk_without_threshold_keeps_k_per_sample_on_average(x):
    sae = _sae("batchtopk", _weights(), k=2)
    z = sae.encode(torch.from_numpy(x))
    assert int((z > 0).sum()) <= 2 * len(x)
    pre = sae.pre_activations(torch.from_numpy(x))
    kept = torch.relu(pre)[z > 0]
    dropped = torch.relu(pre)[z == 0]
    assert kept.min() >= dropped.max()


def test_layer_norm_input_roundtrip(x):
    w = _weights()
    sae = _sae("standard", w, input_normalisation="layer_norm")
    mu = x.mean(-1, keepdims=True)
    std = (x - mu).std(-1, ddof=1, keepdims=True)
    xn = (x - mu) / (std + 1e-5)
    z = np.maximum((xn - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0)
    np.testing.assert_allclose(sae(torch.from_numpy(x)).numpy(), (z @ w["W_dec"] + w["b_dec"]) * std + mu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", ["shape", "nan", "arch", "k"])
def test_bad_weights_name_the_field(bad):
    w = {k: torch.from_numpy(v) for k, v in _weights().items()}
    cfg = dict(architecture="standard", d_in=D_IN, d_sae=D_SAE)
    field = {"shape": "W_dec", "nan": "b_enc", "arch": "architecture", "k": "k"}[bad]
    if bad == "shape":
        w["W_dec"] = w["W_dec"][:-1]
    elif bad == "nan":
        w["b_enc"][3] = float("nan")
    elif bad == "arch":
        cfg["architecture"] = "mystery"
    else:
        cfg["architecture"] = "topk"
    with pytest.raises(CheckpointError) as err:
        SAE(SAEConfig(**cfg), source="/x/sae.safetensors", **w)
    assert "/x/sae.safetensors" in str(err.value) and field in str(err.value)


def test_unit_rows_keeps_dead_rows_zero():
    rows = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    out = unit_rows(rows)
    assert torch.allclose(out[0], torch.tensor([0.6, 0.8])) and torch.all(out[1] == 0)
