"""Checkpoint formats -> SAE: every format and architecture, written in its real layout, loads and
encodes/decodes like an independent numpy computation of that library's math; detection; errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch


import checkpoint_fixtures as fx  # noqa: E402

from benchmark import load_sae  # noqa: E402
from benchmark.sae.checkpoints import (  # noqa: E402
    FORMATS,
    CheckpointInfo,
    detect_format,
    inspect_checkpoint,
    save_native,
)
from benchmark.errors import CheckpointError  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


def inputs(d_in: int, n: int = 24, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d_in)) * 1.5


def run(sae, x: np.ndarray):
    with torch.no_grad():
        xt = torch.from_numpy(x.astype(np.float32))
        return sae.encode(xt).double().numpy(), sae(xt).double().numpy()


def decode(sae, z: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return sae.decode(torch.from_numpy(z.astype(np.float32))).double().numpy()


# ---------------------------------------------------------------- independent reference computations
def relu(a):
    return np.maximum(a, 0.0)


def topk_rows(pre: np.ndarray, k: int) -> np.ndarray:
    """Keep each row's k largest entries (ReLU'd), zero the rest."""
    out = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=-1)[:, :k]
    rows = np.arange(pre.shape[0])[:, None]
    out[rows, idx] = relu(pre[rows, idx])
    return out


def saelens_math(x, w, arch, *, k=None, apply_b_dec=True, norm="none", rescale=False):
    """sae-lens's encode and forward (process_sae_in -> architecture rule -> decode -> un-normalise)."""
    if norm == "constant_norm_rescale":
        coeff = np.sqrt(x.shape[-1]) / np.linalg.norm(x, axis=-1, keepdims=True)
        xn, undo = x * coeff, (lambda y: y / coeff)
    elif norm == "layer_norm":
        mu = x.mean(-1, keepdims=True)
        std = (x - mu).std(-1, ddof=1, keepdims=True)  # torch.std is unbiased
        xn, undo = (x - mu) / (std + 1e-5), (lambda y: y * std + mu)
    else:
        xn, undo = x, (lambda y: y)
    sae_in = xn - w["b_dec"] if apply_b_dec else xn
    if arch == "gated":
        gate = (sae_in @ w["W_enc"] + w["b_gate"]) > 0
        z = gate * relu(sae_in @ (w["W_enc"] * np.exp(w["r_mag"])) + w["b_mag"])
    else:
        pre = sae_in @ w["W_enc"] + w["b_enc"]
        if arch == "standard":
            z = relu(pre)
        elif arch in ("jumprelu", "batchtopk"):
            z = relu(pre) * (pre > w["threshold"])
        elif arch == "topk":
            norms = np.linalg.norm(w["W_dec"], axis=-1)
            z = topk_rows(pre * norms if rescale else pre, k)
        else:
            raise ValueError(arch)
    zd = z / np.linalg.norm(w["W_dec"], axis=-1) if rescale else z
    return z, undo(zd @ w["W_dec"] + w["b_dec"])


def check_sae(sae, x, z_ref, recon_ref):
    z, recon = run(sae, x)
    np.testing.assert_allclose(z, z_ref, **TOL)
    # float32 sums over thousands of latents: tolerance relative to the output's scale
    np.testing.assert_allclose(recon, recon_ref, rtol=1e-5, atol=2e-6 * max(1.0, np.abs(recon_ref).max()))
    assert (z_ref > 0).any() and (z_ref == 0).any(), "fixture should give both active and inactive latents"


# ------------------------------------------------------------------------------------------ SAELens
@pytest.mark.parametrize("arch,rescale", [("standard", False), ("topk", False), ("topk", True), ("jumprelu", False),
                                          ("gated", False), ("batchtopk", False)])
def test_saelens_v6_architectures(tmp_path, arch, rescale):
    folder = tmp_path / "blocks.3.hook_resid_post"
    w, cfg = fx.write_saelens(folder, arch, rescale_acts_by_decoder_norm=rescale)
    assert detect_format(folder) == "saelens"
    assert detect_format(folder / "sae_weights.safetensors") == "saelens"
    sae = load_sae(str(folder))
    assert (sae.architecture, sae.d_in, sae.d_sae) == (arch, 8, 32)
    assert (sae.model_name, sae.hook_name) == ("gpt2", "blocks.3.hook_resid_post")
    assert sae.k == (4 if arch in ("topk", "batchtopk") else None)
    assert tuple(sae.W_enc.shape) == (8, 32) and tuple(sae.W_dec.shape) == (32, 8)
    x = inputs(8)
    z_ref, recon_ref = saelens_math(x, w, arch, k=4, rescale=rescale)
    check_sae(sae, x, z_ref, recon_ref)
    zd = z_ref / np.linalg.norm(w["W_dec"], axis=-1) if rescale else z_ref
    np.testing.assert_allclose(decode(sae, z_ref), zd @ w["W_dec"] + w["b_dec"], **TOL)
    info = inspect_checkpoint(folder)
    assert isinstance(info, CheckpointInfo)
    assert (info.format, info.architecture, info.d_in, info.d_sae, info.k) == ("saelens", arch, 8, 32, sae.k)
    assert "sparsity.safetensors" in info.files
    if arch == "batchtopk":
        assert sae.config.training_architecture == "batchtopk" and info.training_architecture == "batchtopk"


@pytest.mark.parametrize("norm", ["constant_norm_rescale", "layer_norm"])
def test_saelens_normalisations_and_no_b_dec(tmp_path, norm):
    w, _ = fx.write_saelens(tmp_path / "s", "standard", normalize_activations=norm, apply_b_dec_to_input=False)
    x = inputs(8)
    check_sae(load_sae(tmp_path / "s"), x, *saelens_math(x, w, "standard", apply_b_dec=False, norm=norm))


def test_saelens_expected_average_only_in_folds_registry_factor(tmp_path, monkeypatch):
    w, _ = fx.write_saelens(tmp_path / "s", "jumprelu", normalize_activations="expected_average_only_in")
    x = inputs(8)
    # from a folder sae-lens applies no scaling at inference
    check_sae(load_sae(tmp_path / "s"), x, *saelens_math(x, w, "jumprelu"))
    # from the registry sae-lens folds norm_scaling_factor s: W_enc*s, W_dec/s, b_dec/s
    s = 0.37
    fake = types.ModuleType("benchmark.submission.sources")
    calls = []

    def resolve_source(uri, **kwargs):
        calls.append(uri)
        return types.SimpleNamespace(path=tmp_path / "s", repo="owner/repo", path_in_repo="s",
                                     saelens={"release": "r", "sae_id": "s", "norm_scaling_factor": s})

    fake.resolve_source = resolve_source
    monkeypatch.setitem(sys.modules, "benchmark.submission.sources", fake)
    sae = load_sae("saelens://r/s")
    assert calls == ["saelens://r/s"]
    folded = dict(w, W_enc=w["W_enc"] * s, W_dec=w["W_dec"] / s, b_dec=w["b_dec"] / s)
    check_sae(sae, x, *saelens_math(x, folded, "jumprelu"))


def test_hf_uri_is_resolved_through_sources(tmp_path, monkeypatch):
    w, _ = fx.write_saelens(tmp_path / "s", "topk")
    fake = types.ModuleType("benchmark.submission.sources")
    fake.resolve_source = lambda uri, **kw: types.SimpleNamespace(path=tmp_path / "s", saelens=None)
    monkeypatch.setitem(sys.modules, "benchmark.submission.sources", fake)
    sae = load_sae("hf://owner/repo@" + "a" * 40 + "/s")
    x = inputs(8)
    check_sae(sae, x, *saelens_math(x, w, "topk", k=4))


def test_saelens_training_batchtopk_checkpoint(tmp_path):
    w, _ = fx.write_saelens_training_batchtopk(tmp_path / "t", topk_threshold=0.3)
    sae = load_sae(tmp_path / "t")
    assert sae.architecture == "batchtopk" and sae.k == 4
    # sae-lens's inference save: fold decoder norms, then JumpReLU with the scalar threshold
    n = np.linalg.norm(w["W_dec"], axis=-1)
    folded = {"W_enc": w["W_enc"] * n, "b_enc": w["b_enc"] * n, "W_dec": w["W_dec"] / n[:, None], "b_dec": w["b_dec"],
              "threshold": np.full(32, 0.3)}
    x = inputs(8)
    check_sae(sae, x, *saelens_math(x, folded, "batchtopk"))


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
def test_saelens_pre6_flat_configs(tmp_path, arch):
    w, cfg = fx.write_saelens_pre6(tmp_path / "old", arch)
    assert detect_format(tmp_path / "old") == "saelens"
    sae = load_sae(tmp_path / "old")
    assert sae.architecture == arch
    assert (sae.model_name, sae.hook_name) == ("tiny-stories-1M", "blocks.1.hook_resid_pre")
    x = inputs(8)
    check_sae(sae, x, *saelens_math(x, w, arch, k=4))


def test_saelens_pre6_finetuning_scaling_factor(tmp_path):
    w, _ = fx.write_saelens_pre6(tmp_path / "old", "standard", finetuning_scale=True, apply_b_dec_to_input=False)
    x = inputs(8)
    z_ref, _ = saelens_math(x, w, "standard", apply_b_dec=False)
    recon_ref = (z_ref * w["scaling_factor"]) @ w["W_dec"] + w["b_dec"]  # 5.x decode: scale latents first
    check_sae(load_sae(tmp_path / "old"), x, z_ref, recon_ref)


# ------------------------------------------------------------------------------------------ sparsify
def test_sparsify_bf16_topk(tmp_path):
    w, cfg = fx.write_sparsify(tmp_path / "run", "layers.3")
    folder = tmp_path / "run" / "layers.3"
    assert detect_format(folder) == "sparsify" and detect_format(folder / "sae.safetensors") == "sparsify"
    sae = load_sae(folder)
    assert (sae.architecture, sae.k, sae.d_in, sae.d_sae) == ("topk", 4, 8, 32)
    assert sae.model_name == "EleutherAI/pythia-70m" and sae.hook_name == "blocks.3.hook_resid_post"
    assert sae.W_enc.dtype == torch.float32
    # bf16 values kept exactly after the upcast, in sae-lens orientation
    assert np.array_equal(sae.W_enc.double().numpy(), w["encoder.weight"].T)
    assert np.array_equal(sae.W_dec.double().numpy(), w["W_dec"])
    x = inputs(8)
    # sparsify: top-k of relu(encoder(x - b_dec)); decode z @ W_dec + b_dec
    pre = (x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"]
    z_ref = topk_rows(relu(pre), 4)
    check_sae(sae, x, z_ref, z_ref @ w["W_dec"] + w["b_dec"])
    info = inspect_checkpoint(folder)
    assert (info.format, info.dtype, info.k, info.hook_name) == ("sparsify", "bfloat16", 4, "blocks.3.hook_resid_post")


def test_sparsify_bert_hookpoint_and_run_root(tmp_path):
    fx.write_sparsify(tmp_path / "run", "encoder.layer.2", model="sentence-transformers/all-MiniLM-L6-v2")
    sae = load_sae(tmp_path / "run" / "encoder.layer.2")
    assert sae.hook_name == "blocks.2.hook_normalized_resid_post"
    assert sae.config.metadata["hf_hookpoint"] == "encoder.layer.2"
    with pytest.raises(CheckpointError, match="encoder.layer.2") as err:
        load_sae(tmp_path / "run")
    assert err.value.field == "path"


# --------------------------------------------------------------------------------------- Gemma Scope
def gemma_math(x, w):
    pre = x @ w["W_enc"] + w["b_enc"]  # no b_dec subtraction
    z = (pre > w["threshold"]) * relu(pre)
    return z, z @ w["W_dec"] + w["b_dec"]


def test_gemmascope_npz(tmp_path):
    folder, w = fx.write_gemmascope_npz(tmp_path / "hub", layer=3, width="4k", d_in=16)
    assert detect_format(folder) == "gemmascope" and detect_format(folder / "params.npz") == "gemmascope"
    sae = load_sae(folder)
    assert (sae.architecture, sae.d_in, sae.d_sae) == ("jumprelu", 16, 4096)
    assert sae.hook_name == "blocks.3.hook_resid_post" and sae.model_name == "gemma-2-2b"
    assert sae.config.apply_b_dec_to_input is False
    x = inputs(16)
    check_sae(sae, x, *gemma_math(x, w))
    info = inspect_checkpoint(folder / "params.npz")
    assert (info.format, info.d_sae, info.hook_name, info.metadata["layer"]) == ("gemmascope", 4096,
                                                                                "blocks.3.hook_resid_post", 3)


@pytest.mark.parametrize("repo,hook", [("google/gemma-scope-9b-pt-mlp", "blocks.3.hook_mlp_out"),
                                       ("google/gemma-scope-2b-pt-att", "blocks.3.attn.hook_z")])
def test_gemmascope_hook_from_repo_name(tmp_path, repo, hook):
    folder, _ = fx.write_gemmascope_npz(tmp_path / "hub", repo=repo, d_in=8)
    assert inspect_checkpoint(folder).hook_name == hook


def test_gemmascope2_safetensors(tmp_path):
    folder, w = fx.write_gemmascope2(tmp_path / "hub", site="resid_post", layer=5, width="16k")
    assert detect_format(folder) == "gemmascope"
    sae = load_sae(folder / "params.safetensors")
    assert (sae.architecture, sae.d_sae, sae.hook_name) == ("jumprelu", 16384, "blocks.5.hook_resid_post")
    assert sae.model_name == "google/gemma-3-270m"
    w = {("W" + k[1:] if k.startswith("w_") else k): v for k, v in w.items()}
    x = inputs(8)
    check_sae(sae, x, *gemma_math(x, w))
    folder2, _ = fx.write_gemmascope2(tmp_path / "hub2", repo="google/gemma-scope-2-1b-pt", site="mlp_out", layer=2,
                                      width="16k", with_config=False)
    info = inspect_checkpoint(folder2)
    assert (info.hook_name, info.model_name) == ("blocks.2.hook_mlp_out", "google/gemma-3-1b-pt")


# ------------------------------------------------------------------------------- dictionary_learning
def dl_math(dict_class, s, x):
    """Each dictionary_learning class's default encode/decode, from its stored tensors."""
    if dict_class == "AutoEncoder":
        z = relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"])
        return z, z @ s["decoder.weight"].T + s["bias"]
    if dict_class == "AutoEncoderNew":
        z = relu(x @ s["encoder.weight"].T + s["encoder.bias"])
        return z, z @ s["decoder.weight"].T + s["decoder.bias"]
    if dict_class == "AutoEncoderTopK":
        post = relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
        z = topk_rows(post, int(s["k"]))
        return z, z @ s["decoder.weight"].T + s["b_dec"]
    if dict_class == "BatchTopKSAE":
        post = relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
        z = post * (post > s["threshold"])
        return z, z @ s["decoder.weight"].T + s["b_dec"]
    if dict_class == "MatryoshkaBatchTopKSAE":
        post = relu((x - s["b_dec"]) @ s["W_enc"] + s["b_enc"])
        z = post * (post > s["threshold"])
        return z, z @ s["W_dec"] + s["b_dec"]
    if dict_class == "JumpReluAutoEncoder":
        pre = x @ s["W_enc"] + s["b_enc"]
        z = relu(pre * (pre > s["threshold"]))
        return z, z @ s["W_dec"] + s["b_dec"]
    if dict_class == "GatedAutoEncoder":
        x_enc = (x - s["decoder_bias"]) @ s["encoder.weight"].T
        z = ((x_enc + s["gate_bias"]) > 0) * relu(np.exp(s["r_mag"]) * x_enc + s["mag_bias"])
        return z, z @ s["decoder.weight"].T + s["decoder_bias"]
    raise ValueError(dict_class)


EXPECTED_ARCH = {"AutoEncoder": "standard", "AutoEncoderNew": "standard", "AutoEncoderTopK": "topk",
                 "BatchTopKSAE": "batchtopk", "MatryoshkaBatchTopKSAE": "batchtopk",
                 "JumpReluAutoEncoder": "jumprelu", "GatedAutoEncoder": "gated"}


@pytest.mark.parametrize("dict_class", list(EXPECTED_ARCH))
def test_dictionary_learning_classes(tmp_path, dict_class):
    folder, state, _ = fx.write_dictionary_learning(tmp_path / "run", dict_class, layer=4)
    assert detect_format(folder) == "dictionary_learning" and detect_format(folder / "ae.pt") == "dictionary_learning"
    sae = load_sae(folder)
    assert sae.architecture == EXPECTED_ARCH[dict_class]
    assert (sae.d_in, sae.d_sae) == (8, 32)
    assert sae.model_name == "EleutherAI/pythia-70m-deduped" and sae.hook_name == "blocks.4.hook_resid_post"
    x = inputs(8)
    check_sae(sae, x, *dl_math(dict_class, state, x))
    info = inspect_checkpoint(folder)
    assert (info.format, info.architecture, info.d_sae) == ("dictionary_learning", sae.architecture, 32)


def test_dictionary_learning_without_config_infers_class(tmp_path):
    folder, state, _ = fx.write_dictionary_learning(tmp_path / "run", "GatedAutoEncoder", write_config=False)
    sae = load_sae(folder / "ae.pt")
    x = inputs(8)
    check_sae(sae, x, *dl_math("GatedAutoEncoder", state, x))


def test_batchtopk_negative_threshold_is_plain_relu(tmp_path):
    # dictionary_learning's threshold starts at -1 (never updated): relu(pre) * (relu(pre) > -1) = relu(pre)
    folder, state, _ = fx.write_dictionary_learning(tmp_path / "run", "BatchTopKSAE", threshold=-1.0)
    x = inputs(8)
    check_sae(load_sae(folder), x, *dl_math("BatchTopKSAE", state, x))


# ------------------------------------------------------------------------------------------- native
@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated", "batchtopk"])
def test_native_round_trip_is_exact(tmp_path, arch):
    fx.write_saelens(tmp_path / "src", arch, rescale_acts_by_decoder_norm=(arch == "topk"))
    sae = load_sae(tmp_path / "src")
    out = save_native(sae, tmp_path / "native", extra_metadata={"seed": 3, "recipe": {"lr": 1e-3}})
    assert out == tmp_path / "native"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["native", "src"], "no temp folders left behind"
    assert detect_format(out) == "native"
    back = load_sae(out)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold", "b_mag", "r_mag"):
        a, b = getattr(sae, name), getattr(back, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), name
    for attr in ("architecture", "k", "d_in", "d_sae", "model_name", "hook_name"):
        assert getattr(back, attr) == getattr(sae, attr), attr
    assert back.config.rescale_acts_by_decoder_norm == sae.config.rescale_acts_by_decoder_norm
    assert back.config.training_architecture == sae.config.training_architecture
    assert back.config.metadata["seed"] == 3 and back.config.metadata["recipe"] == {"lr": 1e-3}
    x = torch.from_numpy(inputs(8).astype(np.float32))
    assert torch.equal(sae.encode(x), back.encode(x)) and torch.equal(sae(x), back(x))
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["metadata"]["sae_lens_version"].startswith("6.")  # sae-lens reads it as a v6 config
    assert cfg["architecture"] in ("standard", "topk", "jumprelu", "gated")
    info = inspect_checkpoint(out)
    assert (info.format, info.architecture) == ("native", arch)


def test_native_scalar_normalisation_and_thresholdless_batchtopk(tmp_path):
    from benchmark.sae.model import SAE, SAEConfig

    rng = np.random.default_rng(0)
    w = {k: torch.from_numpy(v.astype(np.float32)) for k, v in fx.encoder_decoder(rng, 6, 12).items()}
    sae = SAE(SAEConfig("batchtopk", 6, 12, k=2, input_normalisation="scalar", input_scale=0.5,
                        model_name="m", hook_name="h", training_architecture="matryoshka_batchtopk"), **w)
    back = load_sae(save_native(sae, tmp_path / "n"))
    assert back.architecture == "batchtopk" and back.threshold is None and back.k == 2
    assert back.config.input_normalisation == "scalar" and back.config.input_scale == 0.5
    assert back.config.training_architecture == "matryoshka_batchtopk"
    x = torch.from_numpy(inputs(6).astype(np.float32))
    assert torch.equal(sae(x), back(x))
    with pytest.raises(CheckpointError, match="already exists"):
        save_native(sae, tmp_path / "n")
    save_native(sae, tmp_path / "n", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n"]


def test_device_and_dtype_honoured(tmp_path):
    fx.write_saelens(tmp_path / "s", "jumprelu", weight_dtype=torch.float16)
    sae = load_sae(tmp_path / "s", device="meta")
    assert sae.W_enc.device.type == "meta" and sae.threshold.device.type == "meta"
    cpu = load_sae(tmp_path / "s", device=torch.device("cpu"))
    assert cpu.W_enc.dtype == torch.float32 and cpu.W_enc.device.type == "cpu"
    assert load_sae(tmp_path / "s", dtype=torch.float64).W_dec.dtype == torch.float64


def test_formats_registry_lists_every_format():
    assert set(FORMATS) == {"native", "saelens", "sparsify", "gemmascope", "dictionary_learning"}


# -------------------------------------------------------------------------------------------- errors
def assert_error(call, file_part: str, field: str | tuple[str, ...]):
    """The call raises one CheckpointError whose one-line message names the file and the field."""
    with pytest.raises(CheckpointError) as err:
        call()
    message = str(err.value)
    assert file_part in message, message
    fields = (field,) if isinstance(field, str) else field
    assert err.value.field in fields and err.value.field in message, message
    assert "\n" not in message
    return message


def _rewrite_safetensors(path: Path, edit):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_error_wrong_orientation(tmp_path):
    fx.write_saelens(tmp_path / "s", "standard")
    _rewrite_safetensors(tmp_path / "s" / "sae_weights.safetensors",
                         lambda t: t.__setitem__("W_dec", t["W_dec"].T.contiguous()))
    assert_error(lambda: load_sae(tmp_path / "s"), "sae_weights.safetensors", "W_dec")
    assert_error(lambda: inspect_checkpoint(tmp_path / "s"), "sae_weights.safetensors", "W_dec")


def test_error_config_disagrees_with_tensors(tmp_path):
    fx.write_saelens(tmp_path / "s", "topk")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    cfg["d_sae"] = 64
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    msg = assert_error(lambda: load_sae(tmp_path / "s"), "sae_weights.safetensors", "W_enc")
    assert "64" in msg


def test_error_nan_weights(tmp_path):
    fx.write_saelens(tmp_path / "s", "standard")
    _rewrite_safetensors(tmp_path / "s" / "sae_weights.safetensors",
                         lambda t: t["b_enc"].__setitem__(3, float("nan")))
    # inspect reads headers only, so it cannot see the NaN; loading does
    assert inspect_checkpoint(tmp_path / "s").d_sae == 32
    assert_error(lambda: load_sae(tmp_path / "s"), "sae_weights.safetensors", "b_enc")


def test_error_nan_in_bf16_sparsify(tmp_path):
    fx.write_sparsify(tmp_path / "run", "layers.0")
    _rewrite_safetensors(tmp_path / "run" / "layers.0" / "sae.safetensors",
                         lambda t: t["W_dec"].__setitem__((0, 0), float("inf")))
    assert_error(lambda: load_sae(tmp_path / "run" / "layers.0"), "sae.safetensors", "W_dec")


def test_error_unknown_architecture(tmp_path):
    fx.write_saelens(tmp_path / "s", "standard")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    cfg["architecture"] = "temporal"
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    assert_error(lambda: load_sae(tmp_path / "s"), "cfg.json", "architecture")
    folder, _, config = fx.write_dictionary_learning(tmp_path / "run", "AutoEncoder")
    config["trainer"]["dict_class"] = "CrossCoder"
    (folder / "config.json").write_text(json.dumps(config))
    assert_error(lambda: load_sae(folder), "config.json", "trainer.dict_class")


def test_error_missing_tensor(tmp_path):
    fx.write_saelens(tmp_path / "s", "jumprelu")
    _rewrite_safetensors(tmp_path / "s" / "sae_weights.safetensors", lambda t: t.pop("threshold"))
    assert_error(lambda: load_sae(tmp_path / "s"), "sae_weights.safetensors", "threshold")
    assert_error(lambda: inspect_checkpoint(tmp_path / "s"), "sae_weights.safetensors", "threshold")
    fx.write_saelens(tmp_path / "g", "gated")
    _rewrite_safetensors(tmp_path / "g" / "sae_weights.safetensors", lambda t: t.pop("r_mag"))
    assert_error(lambda: load_sae(tmp_path / "g"), "sae_weights.safetensors", "r_mag")
    folder, _, _ = fx.write_dictionary_learning(tmp_path / "run", "AutoEncoderTopK")
    state = torch.load(folder / "ae.pt", weights_only=True)
    del state["b_dec"]
    torch.save(state, folder / "ae.pt")
    assert_error(lambda: load_sae(folder), "ae.pt", "b_dec")


def test_error_unknown_format(tmp_path):
    (tmp_path / "weird").mkdir()
    (tmp_path / "weird" / "model.bin").write_bytes(b"\0" * 16)
    assert_error(lambda: load_sae(tmp_path / "weird"), "weird", "format")
    assert_error(lambda: detect_format(tmp_path / "weird" / "model.bin"), "model.bin", "format")
    assert_error(lambda: load_sae(tmp_path / "nowhere"), "nowhere", "path")
    fx.write_saelens(tmp_path / "s", "standard")
    assert_error(lambda: load_sae(tmp_path / "s", format="onnx"), "onnx", "format")


def test_error_malicious_pickle_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "run" / "trainer_0"
    fx.write_malicious_pickle(folder / "ae.pt", marker)
    assert not marker.exists()
    msg = assert_error(lambda: load_sae(folder), "ae.pt", "pickle")
    assert "needs code" in msg
    assert_error(lambda: inspect_checkpoint(folder), "ae.pt", "pickle")
    assert not marker.exists(), "the pickle's payload ran"


def test_error_truncated_files(tmp_path):
    fx.write_saelens(tmp_path / "s", "standard")
    path = tmp_path / "s" / "sae_weights.safetensors"
    path.write_bytes(path.read_bytes()[:-40])
    names = ("W_enc", "W_dec", "b_enc", "b_dec")  # whichever tensor's data the cut reaches
    msg = assert_error(lambda: inspect_checkpoint(tmp_path / "s"), "sae_weights.safetensors", names)
    assert "truncated" in msg
    assert_error(lambda: load_sae(tmp_path / "s"), "sae_weights.safetensors", names)

    folder, _ = fx.write_gemmascope_npz(tmp_path / "hub", d_in=8)
    npz = folder / "params.npz"
    npz.write_bytes(npz.read_bytes()[:2000])
    assert_error(lambda: load_sae(folder), "params.npz", "archive")

    dl, _, _ = fx.write_dictionary_learning(tmp_path / "run", "AutoEncoder")
    pt = dl / "ae.pt"
    pt.write_bytes(pt.read_bytes()[:300])
    assert_error(lambda: load_sae(dl), "ae.pt", "data")


def test_error_enormous_safetensors_shapes_refused_before_allocation(tmp_path):
    folder = tmp_path / "s"
    fx.write_saelens(folder, "standard")
    path = folder / "sae_weights.safetensors"
    huge = {"W_enc": {"dtype": "F32", "shape": [2**40, 2**30], "data_offsets": [0, 16]},
            "W_dec": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 32]}}
    fx.write_fake_safetensors(path, huge, data=b"\0" * 32)
    msg = assert_error(lambda: inspect_checkpoint(folder), "sae_weights.safetensors", "W_enc")
    assert "bytes" in msg
    assert_error(lambda: load_sae(folder), "sae_weights.safetensors", "W_enc")
    # offsets that match an enormous shape but point past the end of the file
    size = 2**40 * 4
    fx.write_fake_safetensors(path, {"W_enc": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, size]}},
                              data=b"\0" * 16)
    assert "truncated" in assert_error(lambda: load_sae(folder), "sae_weights.safetensors", "W_enc")
    # an absurd header length
    fx.write_fake_safetensors(path, {}, header_len=2**60)
    assert_error(lambda: inspect_checkpoint(folder), "sae_weights.safetensors", "header")


def test_error_npz_enormous_shape_and_object_arrays(tmp_path):
    import io
    import zipfile

    from numpy.lib import format as npy_format

    folder, _ = fx.write_gemmascope_npz(tmp_path / "hub", d_in=8)
    npz = folder / "params.npz"
    # rewrite one member's npy header to claim a huge shape, keeping its tiny data
    with zipfile.ZipFile(npz) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (2**40,)})
    members["b_dec.npy"] = buffer.getvalue() + b"\0" * 32  # a valid header declaring 4 TiB, tiny data
    with zipfile.ZipFile(npz, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    msg = assert_error(lambda: inspect_checkpoint(folder), "params.npz", "b_dec")
    assert "needs 4398046511104 bytes" in msg
    assert_error(lambda: load_sae(folder), "params.npz", "b_dec")
    # object arrays need pickle: refused
    np.savez(npz, W_enc=np.array([{"a": 1}], dtype=object))
    assert_error(lambda: load_sae(folder), "params.npz", "W_enc")


def test_error_gemmascope_path_width_mismatch_and_transcoder(tmp_path):
    folder, _ = fx.write_gemmascope_npz(tmp_path / "hub", d_in=8)
    wrong = folder.parent.parent / "width_16k" / "average_l0_20"
    wrong.parent.mkdir(parents=True)
    folder.rename(wrong)
    assert_error(lambda: load_sae(wrong), "params.npz", "width")
    t, _ = fx.write_gemmascope2(tmp_path / "hub2", site="transcoder", width="16k")
    assert_error(lambda: load_sae(t), "transcoder", "path")


def test_error_sparsify_unsupported_variants(tmp_path):
    fx.write_sparsify(tmp_path / "run", "layers.1")
    cfg_path = tmp_path / "run" / "layers.1" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    for key, value in (("transcode", True), ("activation", "groupmax"), ("skip_connection", True)):
        cfg_path.write_text(json.dumps(dict(cfg, **{key: value})))
        assert_error(lambda: load_sae(tmp_path / "run" / "layers.1"), "cfg.json", key)
    cfg_path.write_text(json.dumps(dict(cfg, num_latents=64)))
    assert_error(lambda: load_sae(tmp_path / "run" / "layers.1"), "sae.safetensors", "encoder.weight")


def test_error_dictionary_learning_config_disagrees(tmp_path):
    folder, _, config = fx.write_dictionary_learning(tmp_path / "run", "AutoEncoderTopK", k=4)
    config["trainer"]["k"] = 8
    (folder / "config.json").write_text(json.dumps(config))
    assert_error(lambda: load_sae(folder), "config.json", "trainer.k")


def test_error_bad_json(tmp_path):
    fx.write_saelens(tmp_path / "s", "standard")
    (tmp_path / "s" / "cfg.json").write_text("{not json")
    assert_error(lambda: load_sae(tmp_path / "s"), "cfg.json", "cfg.json")
