"""Task ``absorption``: first-letter feature absorption (Chanin et al. 2024), SAEBench's projection form.

Pipeline (per submission; the model-side steps are cached and shared by every SAE on that model
and hook):

1. **Vocabulary**: the tokenizer's tokens made only of ASCII letters (optionally one leading space;
   special tokens and WordPiece continuations ``##…`` excluded), labelled by first letter.
2. **Prompts** fit the model kind. Causal LMs get SAEBench's in-context prompt: ten other words as
   ``"{w} has the first letter: W"`` lines, then ``"{word} has the first letter:"``. Encoders get the
   template around the word alone (``[CLS] {word} has the first letter: [SEP]``), since a
   bidirectional model would otherwise see the answers of its examples. Prompts are built from token
   ids, so the word token's position is exact. Activations are read at the word token, at **the
   submission's own hook** (SAEBench hard-codes ``hook_resid_post``), through the activation
   provider's prompt cache.
3. **Ground-truth probe**: one-vs-rest logistic regression, 26 outputs, class-balanced, trained on a
   seeded 80/20 split of the words (cached per model, hook, vocabulary and seed). Its per-letter F1
   on the test words (score > 0) gates letters: only letters with F1 > 0.6 count, and at least 20
   must (else the metrics are undefined, with a note).
4. **k-sparse probing** of each SAE's latents: an L1-regularised one-vs-rest probe on the latents
   picks, for each letter, the latents with the largest positive weights; for k = 1..10 a
   class-balanced logistic regression on the top-k latents is fitted on the train words and scored
   (F1) on the test words. A letter's *main latents* are the top-k set at the largest k reached while
   each step improves F1 by more than 0.03.
5. **Absorption** on the test words of each letter where the ground-truth probe fires: with
   ``p_i = z_i · cos(probe, W_dec[i])``, ``P = x · probe_dir``, ``M = Σ p_i`` over main latents and
   ``A`` the sum of the top-3 positive ``p_i`` of other latents with cos ≥ 0.1: the absorption
   fraction is 0 if ``M ≥ P`` or ``A/P < 0.4``, 1 if ``M ≤ 0``, else ``a/(a+M)`` with
   ``a = min(A, P − M)``; full absorption needs every main latent inactive, the top projecting
   latent at cos ≥ 0.025, ``P > 0`` and that latent contributing ≥ 0.4·P.

Scores per seed are means over gated letters; the submission's value is the mean over seeds with
the std over seeds, plus per-seed (``subset="seed=N"``) and per-letter (``subset="letter=a"``) rows.

**Choices.** (a) The ground-truth probe is one-vs-rest (26 independent logistic regressions in one
linear layer) so that "the probe fires" is a per-letter decision at score 0, as in SAEBench's
multi-probe. (b) The L1 selection probe is trained full-batch (on sparse latents) from zero weights
rather than with mini-batches: same objective, deterministic, cheap. (c) Full absorption requires
``P > 0`` (SAEBench's ``P ≥ 0`` divides by zero at ``P = 0``). (d) The run seed is applied: it draws
the split and the in-context examples.
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

from benchmark.errors import TaskError
from benchmark.results import MetricValue
from tasks import register_task
from benchmark.cache import TaskCache
from benchmark.metrics.stats import mean_std
from tasks.base import ArtifactSpec, MetricSpec, Task, TaskInputs, TaskMetadata, TaskOutput, UnitResources

log = logging.getLogger(__name__)

LETTERS = "abcdefghijklmnopqrstuvwxyz"
PROBE_VERSION = "1"
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


@dataclass(frozen=True)
class AbsorptionConfig:
    """Thresholds and sizes (SAEBench's defaults)."""

    max_k: int = 10
    f1_jump_threshold: float = 0.03
    min_probe_f1: float = 0.6
    min_letters: int = 20
    icl_examples: int = 10
    test_fraction: float = 0.2
    full_cos_threshold: float = 0.025
    fraction_cos_threshold: float = 0.1
    projection_threshold: float = 0.4
    max_absorbers: int = 3
    template: str = "{word} has the first letter:"
    l1_decay: float = 0.01
    l1_steps: int = 300
    max_words: int | None = None


# --- vocabulary and prompts ------------------------------------------------------------------
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


def build_prompts(tokenizer, kind: str, words: list[tuple[int, str]], cfg: AbsorptionConfig, seed: int) -> tuple[list[list[int]], list[int]]:
    """Token-id prompts and the index of the word token in each (see the module docstring)."""
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
    n_examples = min(cfg.icl_examples, len(words) - 1)
    for i, (token_id, word) in enumerate(words):
        shots: list[int] = list(bos) + newline
        for j in _sample_others(rng, len(words), n_examples, i):
            ex_id, ex_word = words[j]
            shots += prefix_ids + [ex_id] + suffix_ids + answers[ex_word.strip()[0].lower()] + newline
        positions.append(len(shots) + len(prefix_ids))
        prompts.append(shots + prefix_ids + [token_id] + suffix_ids)
    return prompts, positions


def _sample_others(rng: random.Random, n: int, k: int, exclude: int) -> list[int]:
    picks = rng.sample(range(n - 1), k)
    return [p if p < exclude else p + 1 for p in picks]


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded train/test split of ``n`` words (sorted index tensors)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(n * test_fraction)))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


# --- probes ---------------------------------------------------------------------------------
def train_letter_probe(x: torch.Tensor, labels: torch.Tensor, *, n_classes: int = 26, l2: float = 1e-4,
                       max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """One-vs-rest, class-balanced logistic regression ``x [n, d] → [n, n_classes]``; returns
    ``(weight [n_classes, d], bias [n_classes])``. Full-batch L-BFGS from zero weights (deterministic)."""
    x = x.double()
    onehot = torch.nn.functional.one_hot(labels, n_classes).double()
    n_pos = onehot.sum(0).clamp_min(1)
    pos_weight = (len(labels) - n_pos) / n_pos
    # standardise for conditioning; folded back into the weights at the end
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mean) / std
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

    def closure():
        optimiser.zero_grad()
        logits = xs @ weight.T + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, pos_weight=pos_weight)
        loss = loss + l2 * (weight ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    w = (weight.detach() / std).float()
    b = (bias.detach() - (weight.detach() / std) @ mean).float()
    return w, b


def f1_scores(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """F1 per column of boolean ``pred``/``truth`` ``[n, c]`` (0 where undefined)."""
    tp = (pred & truth).sum(0).double()
    fp = (pred & ~truth).sum(0).double()
    fn = (~pred & truth).sum(0).double()
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(denom))


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


# --- the absorption computation ----------------------------------------------------------------
def absorption_for_letter(latents: torch.Tensor, acts: torch.Tensor, probe_dir: torch.Tensor, cos: torch.Tensor,
                          main_latents: list[int], cfg: AbsorptionConfig = AbsorptionConfig()) -> dict[str, torch.Tensor]:
    """Per-word absorption of one letter.

    ``latents [n, d_sae]`` SAE activations of the words, ``acts [n, d]`` the model activations,
    ``probe_dir [d]`` the letter's probe direction (normalised here), ``cos [d_sae]`` cosine of each
    decoder row with the probe, ``main_latents`` the letter's main latents. Returns ``fraction [n]``,
    ``full [n]`` (bool), ``top_latent [n]`` (largest projection) and ``probe_projection [n]``."""
    probe_dir = probe_dir.float() / probe_dir.float().norm()
    latents = latents.float()
    proj = latents * cos.float()  # p_i
    P = acts.float() @ probe_dir
    main = torch.zeros(latents.shape[1], dtype=torch.bool)
    main[list(main_latents)] = True
    M = proj[:, main].sum(1)
    candidate = (~main) & (cos >= cfg.fraction_cos_threshold)
    absorbing = torch.where(candidate & (proj > 0), proj, torch.zeros_like(proj))
    n_top = min(cfg.max_absorbers, latents.shape[1])
    A = absorbing.topk(n_top, dim=1).values.sum(1)
    ratio = torch.where(P != 0, A / torch.where(P != 0, P, torch.ones_like(P)), torch.zeros_like(P))
    partial = torch.minimum(A, P - M)
    fraction = torch.where(
        (M >= P) | (ratio < cfg.projection_threshold), torch.zeros_like(P),
        torch.where(M <= 0, torch.ones_like(P), (partial / (partial + M)).clamp(0.0, 1.0)),
    )
    top_value, top_latent = proj.max(dim=1)
    mains_inactive = (latents[:, main].abs() < EPS).all(1)
    full = (mains_inactive & (cos[top_latent] >= cfg.full_cos_threshold) & (P > 0)
            & (top_value >= cfg.projection_threshold * P))
    return {"fraction": fraction, "full": full, "top_latent": top_latent, "probe_projection": P}


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
    words: list[tuple[int, str]]
    labels: torch.Tensor  # [n] letter index
    acts: torch.Tensor  # [n, d]
    train: torch.Tensor
    test: torch.Tensor
    probe_weight: torch.Tensor  # [26, d]
    probe_bias: torch.Tensor
    probe_f1: torch.Tensor  # [26] on test words
    key: str


def prepare_words(provider, hook: str, cfg: AbsorptionConfig, seed: int, cache: TaskCache | None = None,
                  quiet: bool = True) -> WordData:
    """Vocabulary, prompts, word activations (provider cache) and the ground-truth probe (kept in the
    runner's task cache under a key over everything that determines it)."""
    tokenizer = provider.tokenizer
    words = letter_vocabulary(tokenizer)
    if cfg.max_words is not None and len(words) > cfg.max_words:
        keep = sorted(random.Random(seed).sample(range(len(words)), cfg.max_words))
        words = [words[i] for i in keep]
    if len(words) < 2 * 26:
        raise TaskError(f"the tokenizer has only {len(words)} letter-only tokens; too few for 26 letters", field="model")
    labels = torch.tensor([LETTERS.index(w.strip()[0].lower()) for _, w in words])
    prompts, positions = build_prompts(tokenizer, provider.kind, words, cfg, seed)
    acts = provider.prompt_activations(prompts, positions, hook=hook)
    train, test = split_indices(len(words), cfg.test_fraction, seed)
    fields = {"version": PROBE_VERSION, "prompts": provider.prompt_key_fields(prompts, positions, hook),
              "seed": seed, "test_fraction": cfg.test_fraction}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    saved = cache.load_tensors("probes", key) if cache is not None else None
    if saved is not None and {"weight", "bias"} <= set(saved):
        weight, bias = saved["weight"], saved["bias"]
    else:
        weight, bias = train_letter_probe(acts[train], labels[train])
        if cache is not None:
            cache.save_tensors("probes", key, {"weight": weight, "bias": bias}, metadata={"fields": json.dumps(fields)})
    scores = acts[test].float() @ weight.T + bias
    truth = torch.nn.functional.one_hot(labels[test], 26).bool()
    probe_f1 = f1_scores(scores > 0, truth).float()
    return WordData(words, labels, acts, train, test, weight, bias, probe_f1, key)


def evaluate_sae(sae, data: WordData, letters: list[int], cfg: AbsorptionConfig, device: str = "cpu") -> dict[str, Any]:
    """Absorption of one SAE: per-letter rows and per-word rows."""
    z_train = _encode_sparse(sae, data.acts[data.train], device)
    z_test = _encode_sparse(sae, data.acts[data.test], device)
    mains, f1 = main_latents_by_k_sparse(z_train, data.labels[data.train], z_test, data.labels[data.test], cfg)
    dec = sae.decoder_directions().cpu()
    probe_unit = data.probe_weight / data.probe_weight.norm(dim=1, keepdim=True)
    cos_all = probe_unit @ dec.T  # [26, d_sae]
    x_test = data.acts[data.test].float()
    scores = x_test @ data.probe_weight.T + data.probe_bias
    z_dense = z_test.to_dense()
    letter_rows, word_rows = [], []
    for letter in letters:
        mask = (data.labels[data.test] == letter) & (scores[:, letter] > 0)
        n_tp = int(mask.sum())
        row = {"letter": LETTERS[letter], "probe_f1": float(data.probe_f1[letter]), "n_true_positives": n_tp,
               "main_latents": json.dumps(mains[letter]), "num_split_features": len(mains[letter]),
               "k_sparse_f1": json.dumps([round(float(v), 6) for v in f1[letter]])}
        if n_tp == 0:
            row.update(absorption_fraction=None, full_absorption_rate=None)
            letter_rows.append(row)
            continue
        out = absorption_for_letter(z_dense[mask], x_test[mask], data.probe_weight[letter], cos_all[letter], mains[letter], cfg)
        row.update(absorption_fraction=float(out["fraction"].mean()), full_absorption_rate=float(out["full"].float().mean()),
                   n_full_absorption=int(out["full"].sum()))
        letter_rows.append(row)
        test_ids = data.test[mask]
        for j, word_index in enumerate(test_ids.tolist()):
            word_rows.append({"letter": LETTERS[letter], "word": data.words[word_index][1],
                              "absorption_fraction": float(out["fraction"][j]), "full_absorption": bool(out["full"][j]),
                              "top_latent": int(out["top_latent"][j]),
                              "top_latent_cos": float(cos_all[letter, out["top_latent"][j]]),
                              "probe_projection": float(out["probe_projection"][j])})
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
        version="1",
        title="First-letter feature absorption",
        description=(
            "Chanin et al.'s first-letter absorption in SAEBench's projection form: a ground-truth probe "
            "for each word's first letter, k-sparse probing for each letter's main SAE latents, and the "
            "fraction of the probe's projection that other latents absorb when the main latents stay "
            "silent. Means over letters whose probe F1 > 0.6 (at least 20); mean and std over seeds."
        ),
        metrics=(
            MetricSpec("mean_absorption_fraction_score", "Mean over letters of the per-word absorption fraction "
                       "(share of the first-letter direction carried by non-main latents)", "lower", (0.0, 1.0), main=True),
            MetricSpec("mean_full_absorption_score", "Mean over letters of the share of words whose main latents "
                       "are silent while one other latent carries ≥ 40% of the probe projection", "lower", (0.0, 1.0)),
            MetricSpec("mean_num_split_features", "Mean number of main latents per letter chosen by k-sparse "
                       "probing (feature splitting)", "none", (1.0, None), unit="latents"),
            MetricSpec("probe_f1", "F1 of the ground-truth first-letter probe on held-out words (a property of "
                       "the model and hook, shared by every SAE on them)", "higher", (0.0, 1.0)),
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
                          "absorption_fraction", "full_absorption_rate", "seed")),
            ArtifactSpec("words", "one row per (seed, test word the probe fires on): absorption and the top latent",
                         ("letter", "word", "absorption_fraction", "full_absorption", "top_latent", "top_latent_cos",
                          "probe_projection", "seed")),
        ),
        citation=CITATION,
        references=("https://arxiv.org/abs/2409.14507", "https://github.com/adamkarvonen/SAEBench"),
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
        if inputs.limit and (cfg.max_words is None or cfg.max_words > inputs.limit):
            cfg = dataclasses.replace(cfg, max_words=inputs.limit)
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
        gated = [i for i in range(26) if float(data.probe_f1[i]) > cfg.min_probe_f1]
        metrics: list[MetricValue] = []
        for i, letter in enumerate(LETTERS):
            metrics.append(MetricValue("probe_f1", float(data.probe_f1[i]), subset=f"letter={letter}",
                                       n=int((data.labels[data.test] == i).sum())))
        metrics.append(MetricValue("probe_f1", float(data.probe_f1.mean()), subset="all", n=26,
                                   extra={"n_words": len(data.words), "n_test_words": len(data.test)}))
        metrics.append(MetricValue("n_letters", float(len(gated)), n=26,
                                   extra={"letters": "".join(LETTERS[i] for i in gated), "min_probe_f1": cfg.min_probe_f1}))
        details = {"config": asdict(cfg), "hook": hook, "n_words": len(data.words), "probe_key": data.key,
                   "model": provider.model_info}
        if len(gated) < cfg.min_letters:
            note = (f"only {len(gated)} letters have probe F1 > {cfg.min_probe_f1} (at least {cfg.min_letters} "
                    f"needed): the model does not represent first letters linearly enough at {hook}")
            for name in MEANS:
                metrics.append(MetricValue(name, None, note=note, extra=details))
            return TaskOutput(metrics=metrics, data_hash=data.key, provenance={"hook": hook})
        ordered = sorted(saes)
        per_seed: dict[int, dict[str, float]] = {}
        letter_frames, word_frames = [], []
        for seed in tqdm(ordered, desc="absorption seeds", disable=inputs.quiet, leave=False):
            result = evaluate_sae(saes[seed], data, gated, cfg, device=inputs.device)
            letters = pd.DataFrame(result["letters"]).assign(seed=seed)
            words = pd.DataFrame(result["words"]).assign(seed=seed)
            letter_frames.append(letters)
            word_frames.append(words)
            scored = letters.dropna(subset=["absorption_fraction"])
            per_seed[seed] = {name: float(scored[col].mean()) for name, col in _PER_LETTER.items()}
            per_seed[seed]["n_letters"] = len(scored)
        letters_all = pd.concat(letter_frames, ignore_index=True)
        for name in MEANS:
            values = [per_seed[s][name] for s in ordered]
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
        artifacts = {"letters": letters_all, "words": pd.concat(word_frames, ignore_index=True)}
        return TaskOutput(metrics=metrics, artifacts=artifacts, data_hash=data.key, provenance={"hook": hook})
