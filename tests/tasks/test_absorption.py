"""The absorption task: planted absorption with hand-computed answers, its probes against independent
solvers, prompts, and an end-to-end run on a tiny random BERT that a second run serves from caches."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch


from benchmark.sae.model import SAE, SAEConfig  # noqa: E402
from tasks.absorption import (  # noqa: E402
    LETTERS,
    AbsorptionConfig,
    WordData,
    absorption_for_letter,
    build_prompts,
    evaluate_sae,
    f1_scores,
    fit_logistic_batched,
    letter_vocabulary,
)

R2 = math.sqrt(2.0)


def standard_sae(W_enc: torch.Tensor, W_dec: torch.Tensor) -> SAE:
    d_in, d_sae = W_enc.shape
    return SAE(SAEConfig("standard", d_in, d_sae, apply_b_dec_to_input=False), W_enc=W_enc, W_dec=W_dec)


# --- the per-word computation, by hand ------------------------------------------------------------
def test_planted_absorption_single_letter():
    """Main latent 0 reads e0 but is suppressed by e1; latent 1 (decoder (e0+e1)/√2) fires on e1.
    Words 0-3 carry e1 (absorbed), words 4-9 carry e2 (clean). P = 2 on every word."""
    d = 6
    e = torch.eye(d)
    x = torch.stack([2 * e[0] + (e[1] if i < 4 else e[2]) for i in range(10)])
    W_dec = torch.stack([e[0], (e[0] + e[1]) / R2, e[2], e[3]])
    W_enc = torch.stack([e[0] - 10 * e[1], 2 * R2 * e[1], e[2], e[3]]).T
    absorbing = standard_sae(W_enc, W_dec)
    cos = absorbing.decoder_directions() @ e[0]
    out = absorption_for_letter(absorbing.encode(x), x, 3.0 * e[0], cos, [0])
    expected = torch.tensor([1.0] * 4 + [0.0] * 6)
    assert torch.allclose(out["fraction"], expected)
    assert out["full"].tolist() == [True] * 4 + [False] * 6
    assert out["top_latent"][:4].tolist() == [1] * 4
    assert torch.allclose(out["probe_projection"], torch.full((10,), 2.0))

    clean = standard_sae(torch.stack([e[0], e[1], e[2], e[3]]).T, torch.stack([e[0], e[1], e[2], e[3]]))
    out = absorption_for_letter(clean.encode(x), x, e[0], clean.decoder_directions() @ e[0], [0])
    assert float(out["fraction"].abs().max()) == 0.0 and not out["full"].any()


def test_partial_absorption_and_thresholds():
    e = torch.eye(4)
    x = 2 * e[0:1]  # P = 2
    cos = torch.tensor([1.0, 1 / R2, 0.05, 0.0])
    # main p = 0.5; absorber p = 1.2 (A/P = 0.6): fraction = min(1.2, 1.5) / (1.2 + 0.5)
    z = torch.tensor([[0.5, 1.2 * R2, 0.0, 0.0]])
    out = absorption_for_letter(z, x, e[0], cos, [0])
    assert float(out["fraction"]) == pytest.approx(1.2 / 1.7, abs=1e-6) and not bool(out["full"])
    # an aligned-below-0.1 latent never counts as an absorber, however large
    z = torch.tensor([[0.5, 0.0, 40.0, 0.0]])
    assert float(absorption_for_letter(z, x, e[0], cos, [0])["fraction"]) == 0.0
    # A/P below 0.4: not absorption
    z = torch.tensor([[0.5, 0.7 * R2, 0.0, 0.0]])
    assert float(absorption_for_letter(z, x, e[0], cos, [0])["fraction"]) == 0.0
    # main latents already explain P: not absorption
    z = torch.tensor([[2.0, 1.2 * R2, 0.0, 0.0]])
    assert float(absorption_for_letter(z, x, e[0], cos, [0])["fraction"]) == 0.0
    # full absorption through a weakly aligned top latent (cos 0.05 ≥ 0.025), main silent
    z = torch.tensor([[0.0, 0.0, 40.0, 0.0]])
    out = absorption_for_letter(z, x, e[0], cos, [0])
    assert bool(out["full"]) and float(out["fraction"]) == 0.0


# --- the whole per-SAE evaluation on planted data -------------------------------------------------
def planted_words(n_per_letter: int = 12, absorbed: int = 3):
    """Word activations x = 2·e_letter + e_(26+word) (a token-specific direction per word). The last
    ``absorbed`` words of letter a are test words; everything else is split 2:1 train/test."""
    n = 26 * n_per_letter
    d = 26 + n
    labels = torch.arange(26).repeat_interleave(n_per_letter)
    acts = 2 * torch.eye(d)[labels] + torch.eye(d)[26 + torch.arange(n)]
    within = torch.arange(n) % n_per_letter
    test = ((within % 3 == 0) | ((labels == 0) & (within >= n_per_letter - absorbed))).nonzero().squeeze(1)
    train = torch.tensor(sorted(set(range(n)) - set(test.tolist())))
    absorbed_ids = ((labels == 0) & (within >= n_per_letter - absorbed)).nonzero().squeeze(1)
    probe_weight = torch.eye(d)[:26].clone()
    data = WordData(words=[(i, LETTERS[int(labels[i])] + f"w{i}") for i in range(n)], labels=labels, acts=acts,
                    train=train, test=test, probe_weight=probe_weight, probe_bias=-torch.ones(26),
                    probe_f1=torch.ones(26), key="planted")
    return data, absorbed_ids, d


def planted_sae(d: int, absorbed_ids: torch.Tensor, *, absorb: bool) -> SAE:
    """Latent L (< 26) reads/writes letter L; with ``absorb``, latent 26+j carries letter a on absorbed
    word j (decoder (e_a + e_word)/√2) and latent a is suppressed there."""
    eye = torch.eye(d)
    W_enc = eye[:26].clone()
    W_dec = eye[:26].clone()
    if absorb:
        extra_enc, extra_dec = [], []
        for word in absorbed_ids.tolist():
            W_enc[0] -= 10 * eye[26 + word]
            extra_enc.append(2 * R2 * eye[26 + word])
            extra_dec.append((eye[0] + eye[26 + word]) / R2)
        W_enc = torch.cat([W_enc, torch.stack(extra_enc)])
        W_dec = torch.cat([W_dec, torch.stack(extra_dec)])
    return standard_sae(W_enc.T.contiguous(), W_dec)


def test_planted_sae_reports_exactly_the_absorption():
    data, absorbed_ids, d = planted_words()
    cfg = AbsorptionConfig(l1_steps=150)
    letters = list(range(26))
    result = evaluate_sae(planted_sae(d, absorbed_ids, absorb=True), data, letters, cfg)
    rows = {r["letter"]: r for r in result["letters"]}
    n_test_a = int((data.labels[data.test] == 0).sum())
    assert rows["a"]["n_true_positives"] == n_test_a
    assert rows["a"]["absorption_fraction"] == pytest.approx(len(absorbed_ids) / n_test_a)
    assert rows["a"]["full_absorption_rate"] == pytest.approx(len(absorbed_ids) / n_test_a)
    for letter in LETTERS:
        assert rows[letter]["main_latents"] == f"[{LETTERS.index(letter)}]"
        if letter != "a":
            assert rows[letter]["absorption_fraction"] == 0.0 and rows[letter]["full_absorption_rate"] == 0.0
    absorbed_words = {data.words[i][1] for i in absorbed_ids.tolist()}
    flagged = {w["word"] for w in result["words"] if w["full_absorption"]}
    assert flagged == absorbed_words

    clean = evaluate_sae(planted_sae(d, absorbed_ids, absorb=False), data, letters, cfg)
    assert all(r["absorption_fraction"] == 0.0 and r["full_absorption_rate"] == 0.0 for r in clean["letters"])


# --- probes against independent solvers -----------------------------------------------------------
def test_batched_logistic_matches_scipy():
    from scipy.optimize import minimize

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 200, 2, generator=gen)
    y = (x[..., 0] + 0.5 * torch.randn(3, 200, generator=gen)) > 0.8
    w, b = fit_logistic_batched(x, y)
    for c in range(3):
        xc, yc = x[c].double().numpy(), y[c].numpy().astype(float)
        n_pos = yc.sum()
        sw = np.where(yc > 0, len(yc) / (2 * n_pos), len(yc) / (2 * (len(yc) - n_pos)))

        def objective(theta):
            z = xc @ theta[:2] + theta[2]
            return float(np.sum(sw * (np.logaddexp(0, z) - yc * z)) + 0.5 * theta[:2] @ theta[:2])

        ref = minimize(objective, np.zeros(3), method="BFGS", options={"gtol": 1e-8}).x
        assert np.allclose(w[c].numpy(), ref[:2], atol=1e-3) and abs(float(b[c]) - ref[2]) < 1e-3


def test_f1_scores():
    pred = torch.tensor([[1, 0], [1, 1], [0, 0], [1, 0]], dtype=torch.bool)
    truth = torch.tensor([[1, 0], [0, 1], [1, 0], [1, 0]], dtype=torch.bool)
    # column 0: tp 2, fp 1, fn 1 → 4/6; column 1: tp 1 → 1
    assert torch.allclose(f1_scores(pred, truth).float(), torch.tensor([4 / 6, 1.0]))


# --- vocabulary and prompts -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from model_fixtures import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("abs-bert") / "model")


def test_vocabulary_and_encoder_prompts(bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bert_dir))
    vocab = letter_vocabulary(tok)
    words = [w for _, w in vocab]
    from model_fixtures import tiny_words

    assert set(tiny_words()) <= set(words) and "has" in words
    assert not any(w.startswith("#") or w.startswith("[") or w in {":", "."} for w in words)
    prompts, positions = build_prompts(tok, "encoder", vocab[:5], AbsorptionConfig(), seed=0)
    for (token_id, word), prompt, pos in zip(vocab[:5], prompts, positions):
        assert prompt[pos] == token_id and prompt[0] == tok.cls_token_id and prompt[-1] == tok.sep_token_id
        assert tok.convert_ids_to_tokens(prompt[pos + 1:-1]) == tok.tokenize(" has the first letter:")


def test_causal_prompts_are_seeded_and_exclude_the_word():
    from model_fixtures import make_tiny_gpt2  # noqa: F401  (tokenizer only)
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tiny_gpt2(Path(tmp) / "m")
        tok = AutoTokenizer.from_pretrained(str(folder))
    vocab = letter_vocabulary(tok)
    assert len(vocab) > 20
    cfg = AbsorptionConfig(icl_examples=4)
    prompts, positions = build_prompts(tok, "causal", vocab, cfg, seed=1)
    again, _ = build_prompts(tok, "causal", vocab, cfg, seed=1)
    other, _ = build_prompts(tok, "causal", vocab, cfg, seed=2)
    assert prompts == again and prompts != other
    for (token_id, word), prompt, pos in zip(vocab, prompts, positions):
        assert prompt[pos] == token_id and prompt[0] == tok.bos_token_id
        text = tok.decode(prompt[1:])
        assert text.count("has the first letter:") == cfg.icl_examples + 1
        assert text.endswith(f"{word} has the first letter:")
        lines = text.strip("\n").split("\n")
        examples = [line.split(" has the first letter: ") for line in lines[:-1]]
        assert word not in [ex for ex, _ in examples]  # never its own example (same token)
        assert all(answer == ex.strip()[0].upper() for ex, answer in examples)


# --- end to end on a tiny BERT, twice ---------------------------------------------------------------
def _submission(root: Path, model_dir: Path, d_model: int) -> Path:
    from benchmark.sae.checkpoints import save_native

    folder = root / "subs" / "test"
    folder.mkdir(parents=True)
    import shutil

    shutil.copytree(model_dir, folder / "model")
    for seed in (0, 1):
        gen = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(48, d_model, generator=gen)
        sae = SAE(SAEConfig("topk", d_model, 48, k=4), W_enc=W_dec.T.contiguous(), W_dec=W_dec)
        save_native(sae, folder / f"sae{seed}")
    (folder / "tiny.toml").write_text(
        'kind = "checkpoints"\nname = "test/tiny-bert-topk"\ntitle = "t"\nauthors = ["a"]\nlicense = "MIT"\n'
        '[model]\nname = "tiny-bert"\nlocal = "model"\nhook = "blocks.1.hook_resid_post"\n'
        '[sae]\narchitecture = "topk"\nwidth = 48\nformat = "native"\n'
        '[[checkpoints]]\nseed = 0\nlocal = "sae0"\n[[checkpoints]]\nseed = 1\nlocal = "sae1"\n',
        encoding="utf-8",
    )
    return folder / "tiny.toml"


def test_task_end_to_end_and_second_run_has_no_forward_pass(bert_dir, tmp_path):
    from benchmark.data import activations as acts_mod
    from benchmark.data import models as models_mod
    from benchmark.submission.manifest import load_manifest
    from benchmark.results import ResultStore
    from benchmark.runner import run_benchmark

    manifest = load_manifest(_submission(tmp_path, bert_dir, 32))
    options = {"absorption": {"min_letters": "0", "min_probe_f1": "-1.0", "l1_steps": "60"}}
    kwargs = dict(cache_dir=tmp_path / "cache", quiet=True, task_options=options)
    summary = run_benchmark([manifest], ["absorption"], results_dir=tmp_path / "r1", **kwargs)
    assert not summary.failed, summary.render()
    rows = ResultStore(tmp_path / "r1").read()
    main = rows[(rows.metric == "mean_absorption_fraction_score") & (rows.subset == "all")]
    assert len(main) == 1 and 0.0 <= float(main.value.iloc[0]) <= 1.0 and int(main.n.iloc[0]) == 2
    assert main.hook.iloc[0] == "blocks.1.hook_resid_post"
    subsets = set(rows.subset)
    assert {"seed=0", "seed=1", "letter=a", "letter=z"} <= subsets
    per_seed = rows[(rows.metric == "mean_absorption_fraction_score") & rows.subset.str.startswith("seed=")]
    assert float(main.value.iloc[0]) == pytest.approx(per_seed.value.astype(float).mean())
    assert float(main["std"].iloc[0]) == pytest.approx(per_seed.value.astype(float).std(ddof=1))

    before = (acts_mod.STATS["forward_batches"], acts_mod.STATS["prompt_forward_batches"], models_mod.STATS["model_loads"])
    summary = run_benchmark([manifest], ["absorption"], results_dir=tmp_path / "r2", **kwargs)
    assert not summary.failed
    after = (acts_mod.STATS["forward_batches"], acts_mod.STATS["prompt_forward_batches"], models_mod.STATS["model_loads"])
    assert after == before  # word activations and the probe came from the caches
    second = ResultStore(tmp_path / "r2").read()
    m2 = second[(second.metric == "mean_absorption_fraction_score") & (second.subset == "all")]
    assert float(m2.value.iloc[0]) == pytest.approx(float(main.value.iloc[0]))
