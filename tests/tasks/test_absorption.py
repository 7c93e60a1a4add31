"""The absorption task: planted absorption with hand-computed answers, the probe against an independent
solver and a planted letter code, the stratified sample, prompts, the gate on the default path, and an
end-to-end run on a tiny random BERT that a second run serves from caches."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.metrics.absorption_validity import projection_absorption
from benchmark.sae.model import SAE, SAEConfig
from tasks.absorption import (
    LETTERS,
    AbsorptionConfig,
    AbsorptionTask,
    WordData,
    build_prompts,
    evaluate_sae,
    f1_bootstrap,
    f1_scores,
    fit_logistic_batched,
    letter_vocabulary,
    sample_words,
    train_letter_probe,
)

R2 = math.sqrt(2.0)


def standard_sae(W_enc: torch.Tensor, W_dec: torch.Tensor) -> SAE:
    d_in, d_sae = W_enc.shape
    return SAE(SAEConfig("standard", d_in, d_sae, apply_b_dec_to_input=False), W_enc=W_enc, W_dec=W_dec)


# --- the per-word formula, by hand (the task calls this kernel) ----------------------------------------
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
    out = projection_absorption(absorbing.encode(x), x, 3.0 * e[0], cos, [0])
    expected = torch.tensor([1.0] * 4 + [0.0] * 6)
    assert torch.allclose(out["fraction"], expected)
    assert out["full"].tolist() == [True] * 4 + [False] * 6
    assert out["top_latent"][:4].tolist() == [1] * 4
    assert torch.allclose(out["projection"], torch.full((10,), 2.0))

    clean = standard_sae(torch.stack([e[0], e[1], e[2], e[3]]).T, torch.stack([e[0], e[1], e[2], e[3]]))
    out = projection_absorption(clean.encode(x), x, e[0], clean.decoder_directions() @ e[0], [0])
    assert float(out["fraction"].abs().max()) == 0.0 and not out["full"].any()


def test_partial_absorption_and_thresholds():
    e = torch.eye(4)
    x = 2 * e[0:1]  # P = 2
    cos = torch.tensor([1.0, 1 / R2, 0.05, 0.0])
    # main p = 0.5; absorber p = 1.2 (A/P = 0.6): fraction = min(1.2, 1.5) / (1.2 + 0.5)
    z = torch.tensor([[0.5, 1.2 * R2, 0.0, 0.0]])
    out = projection_absorption(z, x, e[0], cos, [0])
    assert float(out["fraction"]) == pytest.approx(1.2 / 1.7, abs=1e-6) and not bool(out["full"])
    # an aligned-below-0.1 latent never counts as an absorber, however large
    z = torch.tensor([[0.5, 0.0, 40.0, 0.0]])
    assert float(projection_absorption(z, x, e[0], cos, [0])["fraction"]) == 0.0
    # A/P below 0.4: not absorption
    z = torch.tensor([[0.5, 0.7 * R2, 0.0, 0.0]])
    assert float(projection_absorption(z, x, e[0], cos, [0])["fraction"]) == 0.0
    # main latents already explain P: not absorption
    z = torch.tensor([[2.0, 1.2 * R2, 0.0, 0.0]])
    assert float(projection_absorption(z, x, e[0], cos, [0])["fraction"]) == 0.0
    # full absorption through a weakly aligned top latent (cos 0.05 ≥ 0.025), main silent
    z = torch.tensor([[0.0, 0.0, 40.0, 0.0]])
    out = projection_absorption(z, x, e[0], cos, [0])
    assert bool(out["full"]) and float(out["fraction"]) == 0.0


def test_only_firing_absorbers_count():
    """Latents here are signed (an SAE without a final ReLU, or a read-out of pre-activations): a
    candidate whose projection is ≤ 0 is not firing and must not enter A. Main latent 0 is silent,
    latent 1 fires with p = 1.0 (A/P = 0.5: absorbed), latents 2 and 3 (cos 0.5) sit at -0.8."""
    x = torch.tensor([[2.0, 0.0, 0.0]])  # P = 2 along e0
    cos = torch.tensor([1.0, 0.5, 0.5, 0.5])
    z = torch.tensor([[0.0, 2.0, -0.8, -0.8]])
    out = projection_absorption(z, x, torch.tensor([1.0, 0.0, 0.0]), cos, [0])
    assert float(out["fraction"]) == 1.0  # counting the silent ones would give A = 1.0 - 0.8 < 0.4·P: 0
    # with nothing firing, no absorption however many candidates exist
    z = torch.tensor([[0.0, -2.0, -0.8, -0.8]])
    assert float(projection_absorption(z, x, torch.tensor([1.0, 0.0, 0.0]), cos, [0])["fraction"]) == 0.0


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


def planted_sae(d: int, absorbed_ids: torch.Tensor, *, absorb: bool, absorbers: int = 1, share: float = 1.0) -> SAE:
    """Latent L (< 26) reads/writes letter L. With ``absorb``, on each absorbed word j latent a is
    suppressed and ``absorbers`` latents with decoder (e_a + e_word)/√2 fire, each carrying
    ``share/absorbers`` of the probe projection P = 2 (p = z/√2)."""
    eye = torch.eye(d)
    W_enc = eye[:26].clone()
    W_dec = eye[:26].clone()
    if absorb:
        extra_enc, extra_dec = [], []
        for word in absorbed_ids.tolist():
            W_enc[0] -= 10 * eye[26 + word]
            for _ in range(absorbers):
                extra_enc.append(2 * share / absorbers * R2 * eye[26 + word])
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


@pytest.mark.parametrize("absorbers, share, expected", [(1, 0.9, 1.0), (3, 0.9, 1.0), (5, 0.5, 0.0)])
def test_absorption_is_summed_over_up_to_three_absorbers(absorbers, share, expected):
    """The direction of each absorbed word is spread evenly over ``absorbers`` latents that together
    carry ``share`` of P. One latent carrying 0.9·P absorbs the word, and so do three carrying 0.3·P
    each (A, the sum of the top 3, is 0.9·P ≥ 0.4·P; a cap of one absorber would see 0.3·P and report
    nothing). Five carrying 0.1·P each are not absorption: only three count (0.3·P < 0.4·P), all five
    would be 0.5·P. The default config is SAEBench's (3 absorbers)."""
    data, absorbed_ids, d = planted_words()
    sae = planted_sae(d, absorbed_ids, absorb=True, absorbers=absorbers, share=share)
    result = evaluate_sae(sae, data, [0], AbsorptionConfig(l1_steps=150))
    assert result["letters"][0]["main_latents"] == "[0]"
    words = {w["word"]: w for w in result["words"]}
    absorbed = [words[data.words[i][1]] for i in absorbed_ids.tolist()]
    assert [w["absorption_fraction"] for w in absorbed] == pytest.approx([expected] * len(absorbed))
    # full absorption needs ONE latent with ≥ 0.4·P: only the single absorber has it
    assert all(w["full_absorption"] == (absorbers == 1) for w in absorbed)
    n_test_a = int((data.labels[data.test] == 0).sum())
    assert result["letters"][0]["absorption_fraction"] == pytest.approx(expected * len(absorbed_ids) / n_test_a)


def test_absorption_needs_the_absorbers_to_carry_enough():
    """Three absorbers carrying 0.36·P together stay below the 0.4·P threshold: not absorption,
    although the main latent is silent (full absorption also fails: no latent reaches 0.4·P)."""
    data, absorbed_ids, d = planted_words()
    sae = planted_sae(d, absorbed_ids, absorb=True, absorbers=3, share=0.36)
    result = evaluate_sae(sae, data, [0], AbsorptionConfig(l1_steps=150))
    assert result["letters"][0]["absorption_fraction"] == 0.0 and result["letters"][0]["full_absorption_rate"] == 0.0


# --- the probe: an independent solver and a planted letter code --------------------------------------
def test_probe_minimises_saebench_objective_on_raw_activations():
    """Against scipy's L-BFGS on the raw objective written out independently (numpy): mean
    positive-weighted BCE + l2/2·(‖W‖² + ‖b‖²). Dimensions on very different scales make a
    standardised-coordinates penalty land elsewhere, so this also pins "raw, not standardised"."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    n, d, c = 240, 5, 3
    labels = rng.integers(0, c, size=n)
    centres = rng.standard_normal((c, d)) * 1.5
    x = (centres[labels] + rng.standard_normal((n, d))) * np.array([1.0, 10.0, 0.1, 3.0, 1.0]) + 2.0
    l2 = 0.05
    y = np.eye(c)[labels]
    pos_weight = (n - y.sum(0)) / y.sum(0)

    def objective(theta):
        W, b = theta[: c * d].reshape(c, d), theta[c * d:]
        z = x @ W.T + b
        log_p, log_not_p = -np.logaddexp(0, -z), -np.logaddexp(0, z)
        bce = -(pos_weight * y * log_p + (1 - y) * log_not_p).mean()
        return bce + 0.5 * l2 * (np.sum(W ** 2) + np.sum(b ** 2))

    ref = minimize(objective, np.zeros(c * d + c), method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 5000}).x
    weight, bias = train_letter_probe(torch.tensor(x, dtype=torch.float32), torch.tensor(labels), n_classes=c, l2=l2)
    assert np.allclose(weight.numpy(), ref[: c * d].reshape(c, d), atol=2e-3, rtol=1e-3)
    assert np.allclose(bias.numpy(), ref[c * d:], atol=2e-3)


def planted_letter_code(n_per_letter: int, *, d: int = 48, strength: float = 3.0, noise: float = 0.7, seed: int = 0):
    """``(x, labels, basis)``: x = strength·u_letter + N(0, noise²·I) with orthonormal letter
    directions ``basis [26, d]`` (fixed); ``seed`` draws the noise."""
    basis = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1234)))[0][:, :26].T
    labels = torch.arange(26).repeat_interleave(n_per_letter)
    gen = torch.Generator().manual_seed(seed)
    x = strength * basis[labels] + noise * torch.randn(len(labels), d, generator=gen)
    return x, labels, basis


def test_probe_recovers_a_planted_letter_code():
    x, labels, basis = planted_letter_code(60, strength=5.0, seed=0)
    x_test, labels_test, _ = planted_letter_code(20, strength=5.0, seed=1)
    weight, bias = train_letter_probe(x, labels)
    # One-vs-rest on orthonormal codes: the optimum is a·u_k − Σ_j b_j·u_j (it leans away from the
    # other letters' directions), so the planted direction shows as the one positive coefficient,
    # not as cos ≈ 1 with u_k (measured cos 0.75-0.80 at this strength).
    coef_LL = weight @ basis.T
    own = coef_LL.diagonal()
    assert bool((own > 0).all())
    assert float((coef_LL - torch.diag(own)).max()) < 0.1 * float(own.min())
    outside = (weight - coef_LL @ basis).norm(dim=1) / weight.norm(dim=1)
    assert float(outside.max()) < 0.4  # the noise dimensions carry little of the direction
    f1 = f1_scores(x_test @ weight.T + bias > 0, torch.nn.functional.one_hot(labels_test, 26).bool())
    assert float(f1.min()) > 0.9


def test_probe_f1_interval_and_undefined_f1():
    truth = torch.nn.functional.one_hot(torch.tensor([0] * 10 + [1] * 10), 3).bool()
    pred = truth.clone()
    pred[:3, 0] = False  # letter 0: recall 0.7, precision 1 → F1 = 14/17
    f1 = f1_scores(pred, truth)
    assert float(f1[0]) == pytest.approx(14 / 17) and float(f1[1]) == 1.0
    assert math.isnan(float(f1[2]))  # no word of letter 2 and no prediction of it: undefined, never 0
    low, high = f1_bootstrap(pred, truth, torch.tensor([0] * 10 + [1] * 10), seed=0, reps=400)
    assert float(low[0]) < 14 / 17 < float(high[0]) and float(low[1]) == float(high[1]) == 1.0
    assert math.isnan(float(low[2]))


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


# --- the word sample -------------------------------------------------------------------------------------
def fake_vocab(per_letter: int = 30, short: dict[str, int] | None = None) -> list[tuple[int, str]]:
    short = short or {}
    words, token = [], 1
    for letter in LETTERS:
        for j in range(short.get(letter, per_letter)):
            words.append((token, " " + letter + LETTERS[j % 26] + LETTERS[j // 26]))
            token += 1
    return words


def test_sample_is_stratified_seeded_and_split_by_pools():
    vocab = fake_vocab(30, short={"x": 5, "q": 1})
    sample = sample_words(vocab, 10, 0.2, seed=3)
    table = sample.table()
    counts = table.groupby(["letter", "split"]).size().unstack(fill_value=0)
    for letter in LETTERS:
        if letter == "q":
            assert letter not in counts.index  # a single word cannot be both trained on and tested
        elif letter == "x":
            assert (counts.loc["x", "train"], counts.loc["x", "test"]) == (4, 1)
        else:
            assert (counts.loc[letter, "train"], counts.loc[letter, "test"]) == (8, 2)
    test_ids = {sample.words[i][0] for i in sample.test.tolist()}
    train_ids = {sample.words[i][0] for i in sample.train.tolist()}
    assert test_ids <= {t for t, _ in sample.test_pool} and train_ids <= {t for t, _ in sample.train_pool}
    assert not {t for t, _ in sample.test_pool} & {t for t, _ in sample.train_pool}
    assert len(sample.test_pool) == 24 * 6 + 1  # round(30·0.2) for 24 letters, 1 of x's 5, none of q's 1
    again = sample_words(vocab, 10, 0.2, seed=3)
    assert again.words == sample.words and torch.equal(again.test, sample.test)
    assert sample_words(vocab, 10, 0.2, seed=4).words != sample.words
    everything = sample_words(vocab, None, 0.2, seed=3)
    assert len(everything.words) == len(vocab) - 1  # only q's lone word is left out


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


def test_causal_prompts_are_seeded_end_at_the_word_and_draw_from_their_pool():
    from model_fixtures import make_tiny_gpt2
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
        assert prompt[pos] == token_id and prompt[0] == tok.bos_token_id and pos == len(prompt) - 1
        text = tok.decode(prompt[1:])
        assert text.count("has the first letter:") == cfg.icl_examples
        assert text.endswith(f"\n{word}")
        lines = text.strip("\n").split("\n")
        examples = [line.split(" has the first letter: ") for line in lines[:-1]]
        assert word not in [ex for ex, _ in examples]  # never its own example (same token)
        assert all(answer == ex.strip()[0].upper() for ex, answer in examples)
    pool = vocab[:8]
    prompts, _ = build_prompts(tok, "causal", vocab[8:12], cfg, seed=1, pools=[pool] * 4)
    allowed = {w for _, w in pool}
    for prompt in prompts:
        lines = tok.decode(prompt[1:]).strip("\n").split("\n")[:-1]
        assert len(lines) == cfg.icl_examples
        assert {line.split(" has the first letter: ")[0] for line in lines} <= allowed


# --- the gate on the default path (a planted letter code through the task's run) -------------------------
class FakeTokenizer:
    """Each text piece is one token; the vocabulary is ``fake_vocab`` plus the pieces prompts need."""

    all_special_ids = [0]
    bos_token_id = 0
    cls_token_id = sep_token_id = pad_token_id = None

    def __init__(self, vocab: list[tuple[int, str]]):
        self.vocab = {word: token for token, word in vocab}
        self.vocab["<s>"] = 0
        self.pieces: dict[str, int] = {}

    def get_vocab(self):
        return dict(self.vocab)

    def convert_tokens_to_string(self, tokens):
        return "".join(tokens)

    def __call__(self, text, add_special_tokens=False):
        if text in self.vocab:
            return {"input_ids": [self.vocab[text]]}
        return {"input_ids": [self.pieces.setdefault(text, 100_000 + len(self.pieces))]}


class FakeProvider:
    """A causal "model" whose activation at a word token is that word's planted vector plus a small
    context term that depends on the whole prompt (so fresh prompts give other activations)."""

    kind = "causal"
    hook = "blocks.0.hook_resid_post"
    model_info = {"name": "planted"}

    def __init__(self, vocab, vectors: dict[int, torch.Tensor], context_noise: float = 0.05):
        self.tokenizer = FakeTokenizer(vocab)
        self.vectors = vectors
        self.context_noise = context_noise
        self.calls: list[int] = []

    def prompt_key_fields(self, prompts, positions, hook=None):
        digest = hashlib.sha256(repr((prompts, positions)).encode()).hexdigest()
        return {"prompts": digest, "hook": hook or self.hook}

    def prompt_activations(self, prompts, positions, hook=None):
        self.calls.append(len(prompts))
        rows = []
        for prompt, pos in zip(prompts, positions):
            seed = int(hashlib.sha256(repr(prompt).encode()).hexdigest()[:8], 16)
            jitter = torch.randn(len(self.vectors[prompt[pos]]), generator=torch.Generator().manual_seed(seed))
            rows.append(self.vectors[prompt[pos]] + self.context_noise * jitter)
        return torch.stack(rows)


def planted_provider(coded: int, *, per_letter: int = 40, d: int = 48, seed: int = 0):
    vocab = fake_vocab(per_letter)
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=gen))[0][:, :26].T
    vectors = {}
    for token, word in vocab:
        letter = LETTERS.index(word.strip()[0])
        code = 5.0 * basis[letter] if letter < coded else torch.zeros(d)
        vectors[token] = code + 0.7 * torch.randn(d, generator=gen)
    return FakeProvider(vocab, vectors), basis


def letter_saes(basis: torch.Tensor, n_seeds: int = 2) -> dict[int, SAE]:
    """Latents 0-25 read and write the letter directions; 22 random latents besides."""
    out = {}
    for seed in range(n_seeds):
        gen = torch.Generator().manual_seed(100 + seed)
        extra = torch.nn.functional.normalize(torch.randn(22, basis.shape[1], generator=gen), dim=1)
        W_dec = torch.cat([basis, extra])
        out[seed] = standard_sae(W_dec.T.contiguous(), W_dec)
    return out


@pytest.mark.parametrize("coded", [19, 20])
def test_gate_on_the_default_path(coded):
    from task_fixtures import task_inputs

    provider, basis = planted_provider(coded)
    out = AbsorptionTask().run(task_inputs(AbsorptionTask, saes=letter_saes(basis), activations=provider, seed=0))
    rows = {(m.metric, m.subset): m for m in out.metrics}
    f1 = [rows[("probe_f1", f"letter={letter}")].value for letter in LETTERS]
    assert min(f1[:coded]) > 0.8 and max(f1[coded:] or [0.0]) < 0.4  # the planted code is what passes
    assert rows[("n_letters", "all")].value == coded
    main = rows[("mean_absorption_fraction_score", "all")]
    if coded < 20:  # the default gate: at least 20 letters with probe F1 > 0.6
        assert main.value is None and "only 19 letters" in main.note
        assert "letters" not in out.artifacts
    else:
        assert main.value is not None and 0.0 <= main.value <= 1.0 and main.n == 2
        letters = out.artifacts["letters"]
        assert sorted(set(letters["letter"])) == sorted(LETTERS[:coded])
    # the sample is the default stratified one: 32 train + 8 test words of every letter, stored with the result
    sample = out.artifacts["sample"]
    assert (sample.groupby("letter").size() == 40).all() and (sample[sample.split == "test"].groupby("letter").size() == 8).all()
    assert rows[("probe_f1", "letter=a")].n == 8 and rows[("probe_f1", "letter=a")].ci_low is not None
    # the absorption pass ran on fresh prompts: a second prompt pass, over the test words the probe fires on
    assert len(provider.calls) == 2 and provider.calls[0] == 26 * 40 and 0 < provider.calls[1] <= 26 * 8


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
