"""Normalisation slots skip the statistics nobody hooks: same numbers, hooks still honoured, on encoder
(BERT) and causal (GPT-2, Llama) models booted through TransformerBridge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmark.data import lean_bridge as lean_mod
from benchmark.data.activations import run_hooks
from benchmark.data.lean_bridge import skip_unhooked_norm_statistics
from benchmark.data.models import boot_bridge, locate_folder
from model_fixtures import SENTENCES, make_tiny_bert, make_tiny_gpt2  # noqa: E402


def make_tiny_llama(folder: Path, *, seed: int = 0, d_model: int = 32, layers: int = 2) -> Path:
    """A 2-layer Llama (RMSNorm, rotary, gated MLP) with the tiny GPT-2's byte-level tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer_dir = make_tiny_gpt2(folder.parent / "tokenizer-source")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=2 * d_model,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, architectures=["LlamaForCausalLM"])
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


MAKERS = {"bert": make_tiny_bert, "gpt2": make_tiny_gpt2, "llama": make_tiny_llama}


@pytest.fixture(scope="module", params=sorted(MAKERS))
def model(request, tmp_path_factory):
    folder = MAKERS[request.param](tmp_path_factory.mktemp(f"tiny-{request.param}") / "model")
    return request.param, locate_folder(folder)


@pytest.fixture(scope="module")
def bridges(model):
    """The same model booted twice: with the lean normalisation (as shipped) and without it."""
    name, location = model
    lean = boot_bridge(location)
    saved = lean_mod.skip_unhooked_norm_statistics  # boot_bridge looks it up here on every call
    lean_mod.skip_unhooked_norm_statistics = lambda bridge: 0
    try:
        plain = boot_bridge(location)
    finally:
        lean_mod.skip_unhooked_norm_statistics = saved
    return name, lean, plain


def batch(n_layers_vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, n_layers_vocab, (3, 10), generator=gen)
    attention = torch.ones_like(ids)
    attention[2, 7:] = 0  # one padded row
    return ids, attention


def norms(bridge):
    from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge

    return [m for m in bridge.modules() if isinstance(m, NormalizationBridge)]


def lean_count(bridge) -> int:
    return sum("forward" in vars(m) for m in norms(bridge))


def test_native_norms_are_lean_and_python_path_norms_are_not(bridges):
    name, lean, plain = bridges
    assert lean_count(plain) == 0
    if name == "gpt2":  # transformer-lens computes GPT-2's LayerNorm itself: left alone
        assert lean_count(lean) == 0
    else:
        assert lean_count(lean) == len(norms(lean)) > 0


def test_lean_bridge_gives_the_same_activations(bridges):
    name, lean, plain = bridges
    ids, attention = batch(int(lean.cfg.d_vocab))
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(lean.cfg.n_layers)] + ["blocks.0.hook_resid_pre"]
    got = run_hooks(lean, ids, attention, hooks)
    want = run_hooks(plain, ids, attention, hooks)
    for hook in hooks:
        assert torch.equal(got[hook], want[hook]), hook


def test_statistics_are_skipped_only_while_unhooked(bridges, monkeypatch):
    name, lean, _ = bridges
    if name == "gpt2":
        pytest.skip("no lean norms on the python path")
    from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge

    calls = []
    real = NormalizationBridge._hf_autograd_forward_with_hooks
    monkeypatch.setattr(NormalizationBridge, "_hf_autograd_forward_with_hooks",
                        lambda self, x: calls.append(self) or real(self, x))
    ids, attention = batch(int(lean.cfg.d_vocab))
    last = f"blocks.{lean.cfg.n_layers - 1}.hook_resid_post"
    run_hooks(lean, ids, attention, [last])
    assert calls == []  # no statistics computed for unattached hook_scale / hook_normalized
    scales = []
    lean.run_with_hooks(ids, attention_mask=attention, return_type=None,
                        fwd_hooks=[("blocks.0.ln1.hook_scale", lambda t, hook: scales.append(t.clone()))])
    assert len(scales) == 1 and len(calls) >= 1  # a hooked norm takes transformer-lens's own path


def test_hooks_on_norm_internals_see_and_edit_the_same_values(bridges):
    name, lean, plain = bridges
    ids, attention = batch(int(lean.cfg.d_vocab))
    point = "blocks.0.ln1.hook_normalized"
    last = f"blocks.{lean.cfg.n_layers - 1}.hook_resid_post"
    for bridge in (lean, plain):
        seen = []
        bridge.run_with_hooks(ids, attention_mask=attention, return_type=None,
                              fwd_hooks=[(point, lambda t, hook: seen.append(t.clone()))])
        bridge._seen = seen[0]
    assert torch.equal(lean._seen, plain._seen)

    def halve(tensor, hook):
        return tensor * 0.5

    edited = {}
    for label, bridge in (("lean", lean), ("plain", plain)):
        with bridge.hooks(fwd_hooks=[(point, halve)]):
            edited[label] = run_hooks(bridge, ids, attention, [last])[last]
    untouched = run_hooks(lean, ids, attention, [last])[last]
    assert torch.equal(edited["lean"], edited["plain"])
    assert not torch.allclose(edited["lean"], untouched)  # the edit propagated


def test_matches_a_bare_forward_stopped_at_the_same_block(bridges, model):
    """The pipeline's residual stream equals Hugging Face's own forward (causal models included)."""
    from transformers import AutoModel

    name, lean, _ = bridges
    _, location = model
    hf = AutoModel.from_pretrained(str(location.path)).eval()
    ids, attention = batch(int(lean.cfg.d_vocab))
    with torch.no_grad():
        hidden = hf(input_ids=ids, attention_mask=attention, output_hidden_states=True).hidden_states
    got = run_hooks(lean, ids, attention, ["blocks.0.hook_resid_post"])["blocks.0.hook_resid_post"]
    keep = attention.bool()
    assert torch.allclose(got[keep], hidden[1][keep], atol=1e-5)


def test_transformer_lens_without_normalization_bridges_is_left_alone():
    class Plain(torch.nn.Module):
        pass

    assert skip_unhooked_norm_statistics(Plain()) == 0
