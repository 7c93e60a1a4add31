"""load_sae through the real sources module and a real (offline) Hub cache layout."""

import numpy as np
import pytest
import torch
from safetensors.numpy import load as load_safetensors

from benchmark import load_sae
from benchmark.errors import SourceError
from hub_fixtures import add_commit, saelens_checkpoint, with_prefix


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_load_sae_from_pinned_hub_commit(hub_cache):
    files = saelens_checkpoint(8, 24, architecture="topk", k=3, hook_name="blocks.2.hook_resid_post", seed=5)
    sha = add_commit(hub_cache, "org/saes", with_prefix("layer2", files))
    sae = load_sae(f"hf://org/saes@{sha}/layer2")
    stored = load_safetensors(files["sae_weights.safetensors"])
    assert (sae.d_in, sae.d_sae, sae.architecture, sae.k) == (8, 24, "topk", 3)
    assert sae.hook_name == "blocks.2.hook_resid_post"
    np.testing.assert_array_equal(sae.W_dec.detach().numpy(), stored["W_dec"])
    x = torch.randn(4, 8)
    z = sae.encode(x)
    assert int((z > 0).sum(-1).max()) <= 3


def test_moved_branch_does_not_change_pinned_commit(hub_cache):
    old = add_commit(hub_cache, "org/saes", with_prefix("l", saelens_checkpoint(8, 16, seed=1)))
    add_commit(hub_cache, "org/saes", with_prefix("l", saelens_checkpoint(8, 16, seed=2)))  # main moves on
    pinned = load_sae(f"hf://org/saes@{old}/l")
    stored = load_safetensors(saelens_checkpoint(8, 16, seed=1)["sae_weights.safetensors"])
    np.testing.assert_array_equal(pinned.W_enc.detach().numpy(), stored["W_enc"])


def test_missing_hub_file_names_the_source(hub_cache):
    sha = add_commit(hub_cache, "org/saes", with_prefix("l", saelens_checkpoint(8, 16)))
    with pytest.raises(SourceError) as err:
        load_sae(f"hf://org/saes@{sha}/missing-folder")
    assert "org/saes" in str(err.value)
