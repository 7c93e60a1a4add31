"""Task ``description-length``: is the explanation unique? Description length and incoherent triples.

Ayonrinde et al. argue that sparsity does not make an SAE's explanation of an activation unique: if a
decoder row is (nearly) a combination of two others, ``f3 ≈ f2 − α·f1``, both ``{f1, f2}`` and ``{f1, f3}``
explain the same activation with equal L0 and MSE. They propose minimum description length (MDL) as the
criterion instead. This task measures both, per seed of a submission, on the model's corpus activations:

* **Description length** (:mod:`benchmark.metrics.description_length`): bits per token to transmit the
  code (firing entropy + entropy of the quantised magnitude when firing) at the coarsest quantisation
  whose loss of explained variance is at most ``epsilon`` (absolute). Reported with explained variance,
  so the site draws the (description length, explained variance) Pareto front by architecture.
* **Incoherence** (:mod:`benchmark.metrics.incoherence`): the fraction of latents whose unit decoder row
  has a two-term representation by two other rows with cosine ``> tau`` (with a positive coefficient, so
  two codes of equal L0 exist), against the same fraction for an iid Gaussian dictionary of the same
  shape and for the decoder with each coordinate's values permuted across latents. The representations
  found are stored as the ``triples`` artifact.

Values per seed (``subset="seed=N"``) and mean ± std over seeds (``subset="all"``).

**Explanations of triples.** Whether the two codes of a triple get different explanations (as in the
seed's Gemma Scope example) needs per-latent explanations of the same SAE seed, which this task does not
make and cannot read (another task's artifacts are not a task's inputs). The join is a declared
summary instead: ``triple_explanations`` (and its per-submission counts ``triple_explanation_counts``),
computed by ``canonbench summarize`` from the stored ``triples`` artifact and the stored explanations of
``explanation-similarity`` (its ``explanation_pairs`` artifact) of the same submission, joined on
(SAE seed, latent). For ``u_latent ≈ coef_j·u_j + coef_k·u_k`` the two codes of equal L0 are
``{swapped, shared}`` and ``{latent, shared}``, where ``swapped`` is the partner with the larger
coefficient (positive: the latent can stand in for it) and ``shared`` the other; they differ in one
latent, so the triple's two explanations are those of ``latent`` and ``swapped``. They are compared by
token-set Jaccard (:func:`explanation_similarity`) and ``disagree`` when it is below
:data:`DISAGREE_BELOW`. No model runs in a summary.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from benchmark.data.activations import iter_token_batches, sample_token_rows
from benchmark.errors import TaskError
from benchmark.metrics import definitions as defs
from benchmark.metrics.description_length import (
    DEFAULT_MAX_BITS,
    DescriptionLength,
    binary_entropy_bits,
    description_length,
)
from benchmark.metrics.incoherence import (
    TwoTermSearch,
    random_dictionary,
    shuffle_coordinates_across_rows,
    two_term_representations,
)
from benchmark.metrics.stats import mean_std
from benchmark.results import MetricValue
from tasks import register_task
from tasks.base import (
    ArtifactSpec,
    PlotSpec,
    SummaryInput,
    SummarySpec,
    Task,
    TaskInputs,
    TaskMetadata,
    TaskOutput,
    UnitResources,
    metric_spec,
)
from tasks.reliability import reliability_summaries

log = logging.getLogger(__name__)

DEFAULT_TOKEN_SAMPLE = 16_384
COSINE_EDGES = np.round(np.linspace(0.0, 1.0, 51), 10)  # 0.02-wide bins of best two-term cosine

AYONRINDE_2024 = r"""@misc{ayonrinde2024interpretability,
  title = {Interpretability as Compression: Reconsidering {SAE} Explanations of Neural Activations with {MDL-SAEs}},
  author = {Ayonrinde, Kola and Pearce, Michael T. and Sharkey, Lee},
  year = {2024},
  eprint = {2410.11179},
  archivePrefix = {arXiv},
  url = {https://arxiv.org/abs/2410.11179}
}"""


@dataclass(frozen=True)
class DescriptionLengthConfig:
    """Settings of the description-length task (part of every run spec)."""

    n_tokens: int = DEFAULT_TOKEN_SAMPLE  # token sample for the code (capped by --limit)
    epsilon: float = 0.01  # allowed absolute loss of explained variance from quantising the code
    max_bin_bits: int = DEFAULT_MAX_BITS  # bins per latent tried: 1, 2, 4, …, 2**max_bin_bits
    tau: float = 0.95  # cosine above which a two-term representation counts
    neighbours: int = 16  # top-|cosine| neighbours per latent searched in pairs
    certify_pair_cosine: float = 0.5  # the search is certified for pairs of mutual |cosine| up to this
    candidates: str = "auto"  # neighbour-pass precision (matching engine): auto (int8 where exact), int8, fp32


@dataclass
class SeedResult:
    seed: int
    dl: DescriptionLength
    search: TwoTermSearch
    random: TwoTermSearch
    shuffled: TwoTermSearch


def evaluate_seed(sae: Any, sae_seed: int, acts: Any, rows: np.ndarray, cfg: DescriptionLengthConfig, *,
                  task_seed: int, batch_size: int, device: str) -> SeedResult:
    """Description length on the token ``rows`` of ``acts`` and the two-term search on the decoder and
    its two baselines (random draws seeded by ``(task_seed, sae_seed)``)."""
    dl = description_length(sae, iter_token_batches(acts, rows, batch_size, device), epsilon=cfg.epsilon,
                            max_bits=cfg.max_bin_bits)
    decoder = sae.W_dec.detach().float().cpu()
    kwargs = dict(tau=cfg.tau, k=cfg.neighbours, gamma=cfg.certify_pair_cosine, candidates=cfg.candidates,
                  device=device)
    search = two_term_representations(decoder, **kwargs)
    n_live = max(int(search.live.sum()), 1)
    random = two_term_representations(random_dictionary(n_live, sae.d_in, [task_seed, sae_seed, 0]), **kwargs)
    shuffled = two_term_representations(shuffle_coordinates_across_rows(decoder, [task_seed, sae_seed, 1]), **kwargs)
    return SeedResult(sae_seed, dl, search, random, shuffled)


# --- metrics and tables ---------------------------------------------------------------------------------
def mean_pair_cosine(search: TwoTermSearch) -> float:
    """Mean over live latents of the best two-term cosine found (0 for a latent without a counted pair)."""
    values = np.nan_to_num(search.pair_cosine[search.live], nan=0.0)
    return float(values.mean()) if len(values) else 0.0


def _per_seed_values(results: list[SeedResult]) -> dict[str, list[tuple[int, float | None, str | None]]]:
    """metric name → [(seed, value or None, note)]."""
    out: dict[str, list[tuple[int, float | None, str | None]]] = {}

    def put(name: str, seed: int, value: float | None, note: str | None = None) -> None:
        out.setdefault(name, []).append((seed, value, note))

    for r in results:
        s, dl = r.seed, r.dl
        put("incoherent_fraction", s, r.search.fraction(r.search.represented))
        put("duplicate_fraction", s, r.search.fraction(r.search.duplicate))
        put("incoherent_fraction_random", s, r.random.fraction(r.random.represented))
        put("incoherent_fraction_shuffled", s, r.shuffled.fraction(r.shuffled.represented))
        put("search_certified_fraction", s, r.search.fraction(r.search.certified))
        put("mean_pair_cosine", s, mean_pair_cosine(r.search))
        put("mean_pair_cosine_random", s, mean_pair_cosine(r.random))
        put("mean_pair_cosine_shuffled", s, mean_pair_cosine(r.shuffled))
        put("l0", s, dl.l0)
        put("explained_variance", s, dl.explained_variance if np.isfinite(dl.explained_variance) else None,
            "the token sample has no variance")
        why = (f"no quantisation up to 2^{len(dl.ladder) - 1} bins per latent keeps the loss of explained variance "
               f"within epsilon={dl.epsilon}")
        put("description_length", s, dl.description_length, why)
        put("description_length_per_active_latent", s, dl.per_active_latent,
            why if dl.description_length is None else "no latent fired on the sample")
        put("explained_variance_quantised", s, dl.explained_variance_quantised, why)
        put("quantisation_bins", s, None if dl.bins is None else float(dl.bins), why)
    return out


def build_metrics(results: list[SeedResult], cfg: DescriptionLengthConfig) -> list[MetricValue]:
    """Per-seed rows and the mean ± std over seeds (``subset="all"``) of every metric."""
    metrics: list[MetricValue] = []
    n_tokens = results[0].dl.n_tokens if results else 0
    config = {"tau": cfg.tau, "epsilon": cfg.epsilon, "neighbours": cfg.neighbours,
              "certify_pair_cosine": cfg.certify_pair_cosine, "tokens": n_tokens}
    counts = {"latents": lambda r: int(r.search.live.sum()), "tokens": lambda r: r.dl.n_tokens}
    for name, per_seed in _per_seed_values(results).items():
        count = counts["latents"] if name.startswith(("incoherent", "duplicate", "search", "mean_pair")) else counts["tokens"]
        by_seed = {r.seed: r for r in results}
        for seed, value, note in per_seed:
            extra: dict[str, Any] = {}
            if name == "description_length" and value is not None:
                dl = by_seed[seed].dl
                extra = {"firing_bits": dl.firing_bits, "magnitude_bits": dl.magnitude_bits, "bins": dl.bins}
            metrics.append(MetricValue(name, value, n=count(by_seed[seed]), subset=f"seed={seed}",
                                       note=None if value is not None else note, extra=extra))
        values = [v for _, v, _ in per_seed if v is not None]
        if len(values) == len(per_seed):
            mean, std = mean_std(values)
            metrics.append(MetricValue(name, mean, std=std, n=len(values), subset="all",
                                       extra={**config, "per_seed": {str(s): v for s, v, _ in per_seed}}))
        else:
            missing = [(s, why) for s, v, why in per_seed if v is None]
            metrics.append(MetricValue(name, None, subset="all", extra=config,
                                       note=f"undefined for seed(s) {[s for s, _ in missing]}: {missing[0][1]}"))
    return metrics


def triples_table(results: list[SeedResult]) -> pd.DataFrame:
    """One row per (seed, latent) with a two-term representation at tau."""
    frames = []
    for r in results:
        s = r.search
        rows = np.flatnonzero(s.represented)
        frames.append(pd.DataFrame({
            "seed": np.full(len(rows), r.seed, dtype=np.int64), "latent": rows.astype(np.int64),
            "partner_j": s.partner_j[rows], "partner_k": s.partner_k[rows],
            "coef_j": s.coef_j[rows], "coef_k": s.coef_k[rows], "pair_cosine": s.pair_cosine[rows],
            "best_single_partner": s.best_single_partner[rows], "best_single_cosine": s.best_single[rows],
            "kind": np.where(s.duplicate[rows], "duplicate", "triple"),
        }))
    columns = TRIPLE_COLUMNS
    return pd.concat(frames, ignore_index=True)[list(columns)] if frames else pd.DataFrame(columns=list(columns))


def latents_table(results: list[SeedResult]) -> pd.DataFrame:
    """One row per (seed, latent): its code statistics and its best two-term representation."""
    frames = []
    for r in results:
        dl, s = r.dl, r.search
        m = len(dl.firing_rate)
        entropy = dl.magnitude_entropy if dl.magnitude_entropy is not None else np.full(m, np.nan)
        frames.append(pd.DataFrame({
            "seed": np.full(m, r.seed, dtype=np.int64), "latent": np.arange(m, dtype=np.int64),
            "firing_rate": dl.firing_rate, "magnitude_entropy_bits": entropy,
            "bits_per_token": binary_entropy_bits(dl.firing_rate) + dl.firing_rate * entropy,
            "active_low": dl.active_low, "active_high": dl.active_high,
            "pair_cosine": s.pair_cosine, "best_single_cosine": s.best_single, "certified": s.certified,
        }))
    return pd.concat(frames, ignore_index=True)


def ladder_table(results: list[SeedResult]) -> pd.DataFrame:
    """Every quantisation tried per seed, coarse to fine, up to the chosen one."""
    rows = [{"seed": r.seed, "bins": step.bins, "explained_variance_quantised": step.explained_variance_quantised,
             "description_length": step.description_length, "admissible": step.admissible}
            for r in results for step in r.dl.ladder]
    return pd.DataFrame(rows, columns=list(LADDER_COLUMNS))


def cosine_histogram(results: list[SeedResult]) -> pd.DataFrame:
    """Counts of each live latent's best two-term cosine in 0.02-wide bins, pooled over seeds, for the
    decoder (``count``) and its two baselines."""

    def counts(searches: list[TwoTermSearch]) -> np.ndarray:
        values = np.concatenate([np.nan_to_num(s.pair_cosine[s.live], nan=0.0) for s in searches])
        return np.histogram(np.clip(values, 0.0, 1.0), bins=COSINE_EDGES)[0].astype(np.int64)

    return pd.DataFrame({"bin_low": COSINE_EDGES[:-1], "bin_high": COSINE_EDGES[1:],
                         "count": counts([r.search for r in results]),
                         "count_random": counts([r.random for r in results]),
                         "count_shuffled": counts([r.shuffled for r in results])})


TRIPLE_COLUMNS = ("seed", "latent", "partner_j", "partner_k", "coef_j", "coef_k", "pair_cosine", "best_single_partner",
                  "best_single_cosine", "kind")
LATENT_COLUMNS = ("seed", "latent", "firing_rate", "magnitude_entropy_bits", "bits_per_token", "active_low", "active_high",
                  "pair_cosine", "best_single_cosine", "certified")
LADDER_COLUMNS = ("seed", "bins", "explained_variance_quantised", "description_length", "admissible")


# --- explanations of triples (declared summaries) --------------------------------------------------------
#: Where explanations are stored: a task *name* and an artifact (tasks never import each other).
EXPLANATIONS_TASK = "explanation-similarity"
EXPLANATIONS_ARTIFACT = "explanation_pairs"
TRIPLES_INPUT = ("description-length", "triples")  # this task's own artifact
#: Two explanations of a triple disagree when their token-set Jaccard similarity is below this.
DISAGREE_BELOW = 0.5
_WORD = re.compile(r"\w+")

TRIPLE_EXPLANATION_COLUMNS = ("submission", "seed", "latent", "partner_j", "partner_k", "kind", "coef_j", "coef_k",
                              "pair_cosine", "swapped", "shared", "explanation_latent", "explanation_swapped",
                              "explanation_shared", "similarity", "disagree")
TRIPLE_EXPLANATION_COUNT_COLUMNS = ("submission", "n_triples", "n_any_explanation", "n_explained", "n_disagree",
                                    "disagree_fraction", "disagree_below", "triples_unit", "explanations_unit", "note")


def explanation_tokens(text: str) -> frozenset[str]:
    """The set of word tokens (``\\w+``, Unicode) of an explanation after lowercasing."""
    return frozenset(_WORD.findall(text.lower()))


def explanation_similarity(a: str, b: str) -> float:
    """Token-set Jaccard similarity of two explanations: ``|A ∩ B| / |A ∪ B|`` of their lowercased word
    tokens (1 when neither has a word). Deterministic; no model."""
    ta, tb = explanation_tokens(a), explanation_tokens(b)
    union = ta | tb
    return len(ta & tb) / len(union) if union else 1.0


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def explanation_lookup(pairs: pd.DataFrame) -> dict[tuple[str, int, int], str]:
    """``(submission, SAE seed, latent) → explanation`` from both sides of the stored explanation pairs
    (latents without an explanation are left out). A unit explains each (seed, latent) once; should two
    stored texts differ, the first in sort order is kept, so the lookup is deterministic."""
    sides = []
    for side in ("a", "b"):
        part = pairs[["submission", f"seed_{side}", f"latent_{side}", f"explanation_{side}"]]
        sides.append(part.set_axis(["submission", "seed", "latent", "explanation"], axis=1))
    frame = pd.concat(sides, ignore_index=True)
    frame = frame.loc[np.array([_text(t) is not None for t in frame["explanation"]], dtype=bool)]
    frame = frame.sort_values(["submission", "seed", "latent", "explanation"], kind="stable")
    out: dict[tuple[str, int, int], str] = {}
    for sub, seed, latent, text in frame.itertuples(index=False):
        out.setdefault((str(sub), int(seed), int(latent)), str(text))
    return out


def _swapped_and_shared(partner_j: int, partner_k: int, coef_j: float, coef_k: float) -> tuple[int, int]:
    """(swapped, shared): the latent can replace the partner with the larger coefficient (at least one is
    positive for a stored triple), the other partner is in both codes; ties go to ``partner_j``."""
    cj = coef_j if np.isfinite(coef_j) else -np.inf
    ck = coef_k if np.isfinite(coef_k) else -np.inf
    return (partner_j, partner_k) if cj >= ck else (partner_k, partner_j)


def join_triple_explanations(rows: pd.DataFrame, artifacts: Mapping[tuple[str, str], pd.DataFrame]
                             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per stored triple, one row per submission): the triples of each submission's shown unit
    joined with the explanations of the same submission and SAE seed (see the module docstring)."""
    triples = artifacts[TRIPLES_INPUT]
    pairs = artifacts[(EXPLANATIONS_TASK, EXPLANATIONS_ARTIFACT)]
    lookup = explanation_lookup(pairs)
    explanation_units = pairs.drop_duplicates("submission").set_index("submission")["unit_key"].to_dict()
    shown = rows.drop_duplicates("unit_key")[["submission", "unit_key"]].sort_values("submission", kind="stable")
    per_triple, counts = [], []
    for sub, unit in shown.itertuples(index=False):
        mine = triples[(triples["submission"] == sub) & (triples["unit_key"] == unit)]
        mine = mine.sort_values(["seed", "latent"], kind="stable")
        n_any = n_explained = n_disagree = 0
        for t in mine.itertuples(index=False):
            seed, latent = int(t.seed), int(t.latent)
            swapped, shared = _swapped_and_shared(int(t.partner_j), int(t.partner_k), float(t.coef_j), float(t.coef_k))
            text = {who: lookup.get((sub, seed, idx)) for who, idx in (("latent", latent), ("swapped", swapped),
                                                                           ("shared", shared))}
            similarity, disagree = None, None
            if text["latent"] is not None and text["swapped"] is not None:
                similarity = explanation_similarity(text["latent"], text["swapped"])
                disagree = similarity < DISAGREE_BELOW
                n_explained += 1
                n_disagree += int(disagree)
            n_any += int(any(v is not None for v in text.values()))
            per_triple.append({
                "submission": sub, "seed": seed, "latent": latent, "partner_j": int(t.partner_j),
                "partner_k": int(t.partner_k), "kind": str(t.kind), "coef_j": float(t.coef_j),
                "coef_k": float(t.coef_k),
                "pair_cosine": float(t.pair_cosine), "swapped": swapped, "shared": shared,
                "explanation_latent": text["latent"], "explanation_swapped": text["swapped"],
                "explanation_shared": text["shared"], "similarity": similarity, "disagree": disagree,
            })
        explanations_unit = explanation_units.get(sub)
        if len(mine) == 0:
            note = "no triples stored for the shown unit (none at tau)"
        elif explanations_unit is None:
            note = f"no stored {EXPLANATIONS_TASK} explanations for this submission"
        elif n_explained == 0:
            note = (f"{EXPLANATIONS_TASK} explained no triple's latent and swapped partner together (it explains a "
                    "sample of latents)")
        else:
            note = ""
        counts.append({
            "submission": sub, "n_triples": len(mine), "n_any_explanation": n_any,
            "n_explained": n_explained, "n_disagree": n_disagree,
            "disagree_fraction": n_disagree / n_explained if n_explained else None, "disagree_below": DISAGREE_BELOW,
            "triples_unit": unit, "explanations_unit": explanations_unit or "", "note": note,
        })
    per_triple_frame = pd.DataFrame(per_triple, columns=list(TRIPLE_EXPLANATION_COLUMNS))
    per_triple_frame["disagree"] = per_triple_frame["disagree"].astype("boolean")  # null: not compared
    per_triple_frame["similarity"] = per_triple_frame["similarity"].astype("float64")
    counts_frame = pd.DataFrame(counts, columns=list(TRIPLE_EXPLANATION_COUNT_COLUMNS))
    counts_frame["disagree_fraction"] = counts_frame["disagree_fraction"].astype("float64")
    return per_triple_frame, counts_frame


def triple_explanations(rows: pd.DataFrame, artifacts: Mapping[tuple[str, str], pd.DataFrame]) -> pd.DataFrame:
    """Summary ``triple_explanations``: one row per stored triple (see :func:`join_triple_explanations`)."""
    return join_triple_explanations(rows, artifacts)[0]


def triple_explanation_counts(rows: pd.DataFrame, artifacts: Mapping[tuple[str, str], pd.DataFrame]) -> pd.DataFrame:
    """Summary ``triple_explanation_counts``: one row per submission (see :func:`join_triple_explanations`)."""
    return join_triple_explanations(rows, artifacts)[1]


def _triple_summaries() -> tuple[SummarySpec, ...]:
    inputs = (SummaryInput(*TRIPLES_INPUT), SummaryInput(EXPLANATIONS_TASK, EXPLANATIONS_ARTIFACT))
    how = (f"Explanations come from {EXPLANATIONS_TASK}'s stored explanation_pairs of the same submission and SAE "
           "seed (it explains a seeded sample of latents, so most triples have none). For u_latent ≈ "
           "coef_j·u_partner_j + coef_k·u_partner_k the two codes of equal L0 are {swapped, shared} and {latent, "
           "shared}, with swapped the partner of larger coefficient; the triple's two explanations are those of "
           "latent and swapped. similarity: token-set Jaccard of the two explanations (lowercased \\w+ word tokens, "
           f"|A∩B|/|A∪B|); disagree: similarity < {DISAGREE_BELOW}. Empty where either explanation is missing.")
    return (
        SummarySpec("triple_explanations", "1", "Do the two explanations of an incoherent triple disagree?",
                    "One row per stored triple of each submission's shown unit, with the explanations found for the "
                    "latent, the partner it can replace (swapped) and the partner both codes share. " + how,
                    TRIPLE_EXPLANATION_COLUMNS, triple_explanations, inputs=inputs),
        SummarySpec("triple_explanation_counts", "1", "Triples with explanations, per submission",
                    "Per submission: stored triples, triples with any explanation, triples whose latent and swapped "
                    "partner both have one (n_explained, compared), and how many of those disagree; the note says "
                    "why a count is 0. " + how,
                    TRIPLE_EXPLANATION_COUNT_COLUMNS, triple_explanation_counts, inputs=inputs),
    )


# --- the task -------------------------------------------------------------------------------------------
@register_task
class DescriptionLengthTask(Task):
    synthetic_recipe_reason = "it reads the model's corpus activations; synthetic recipes have none"
    config_class = DescriptionLengthConfig
    metadata = TaskMetadata(
        name="description-length",
        version="1",
        title="Is the explanation unique? Description length and incoherent triples",
        description=(
            "Sparsity alone does not make an SAE's explanation of an activation unique (Ayonrinde et al.): when a "
            "decoder row is nearly a combination of two others, two codes with equal L0 and MSE explain the same "
            "activation. This task measures how often that happens, and the minimum-description-length alternative. "
            "Incoherence: the fraction of latents whose unit decoder row is represented by two other rows with "
            "cosine above tau (at least one positive coefficient), against an iid Gaussian dictionary of the same "
            "shape and the decoder with each coordinate's values permuted across latents; found by a blocked "
            "top-k neighbour pass and an exact two-term least-squares solve over neighbour pairs. Description "
            "length: bits per token to send the code (entropy of firing plus entropy of the quantised magnitude "
            "when firing; uniform bins per latent over its active range, one bin count for all latents, values "
            "sent as bin centroids), at the coarsest power-of-two bin count that loses at most epsilon of explained "
            "variance. Plug-in entropies on a seeded token sample of the corpus activations; mean ± std over seeds."
        ),
        metrics=(
            metric_spec("incoherent_fraction", "fraction of live latents whose unit decoder row has a two-term "
                        "representation by two other rows with cosine > tau and a positive coefficient (mean over "
                        "seeds)", "lower", 0, 1, main=True),
            metric_spec("duplicate_fraction", "fraction of live latents with one other decoder row at signed cosine > "
                        "tau (counted in incoherent_fraction too; mean over seeds)", "lower", 0, 1),
            metric_spec("incoherent_fraction_random", "baseline: incoherent_fraction of iid Gaussian dictionaries of the "
                        "same shape (one per seed)", "none", 0, 1),
            metric_spec("incoherent_fraction_shuffled", "baseline: incoherent_fraction of the decoder with each "
                        "coordinate's values permuted across latents (keeps per-dimension statistics, breaks rows)",
                        "none", 0, 1),
            metric_spec("mean_pair_cosine", "mean over live latents of the cosine of the best two-term representation "
                        "the search found (graded where incoherent_fraction is 0; below tau a lower bound on the exact "
                        "best; mean over seeds)", "lower", 0, 1),
            metric_spec("mean_pair_cosine_random", "baseline: mean_pair_cosine of iid Gaussian dictionaries of the same "
                        "shape", "none", 0, 1),
            metric_spec("mean_pair_cosine_shuffled", "baseline: mean_pair_cosine of the decoder with each coordinate's "
                        "values permuted across latents", "none", 0, 1),
            metric_spec("search_certified_fraction", "fraction of live latents for which the top-k pair search is proven "
                        "complete for pairs of mutual |cosine| <= certify_pair_cosine", "higher", 0, 1),
            metric_spec("description_length", "bits per token to send the code at the coarsest quantisation losing at "
                        "most epsilon of explained variance: sum over latents of firing entropy + firing rate x "
                        "magnitude entropy (mean over seeds; compare along explained variance)", "none", 0, None,
                        unit="bits/token"),
            metric_spec("description_length_per_active_latent", "description_length / L0", "none", 0, None, unit="bits"),
            metric_spec("explained_variance_quantised", "explained variance of the reconstruction from the quantised code "
                        "(>= explained_variance - epsilon; mean over seeds)", "higher", None, 1),
            metric_spec("quantisation_bins", "bins per latent of the chosen quantisation (a power of two)", "none", 1, None),
            defs.EXPLAINED_VARIANCE,
            defs.L0,
        ),
        accepts=("checkpoints", "recipe"),
        needs_saes=True,
        needs_activations=True,
        artifacts=(
            ArtifactSpec("triples", "one row per (seed, latent) with a two-term representation at tau: u_latent ≈ "
                         "coef_j·u_partner_j + coef_k·u_partner_k (unit decoder rows), its cosine, the best single "
                         "partner, and whether it is a duplicate or a triple", TRIPLE_COLUMNS),
            ArtifactSpec("latents", "one row per (seed, latent): firing rate, magnitude entropy at the chosen "
                         "quantisation, bits per token, active range, best two-term cosine, certified", LATENT_COLUMNS),
            ArtifactSpec("quantisation_ladder", "every bin count tried per seed (coarse to fine): explained variance of "
                         "the quantised code, description length, admissible", LADDER_COLUMNS),
            ArtifactSpec("best_pair_cosine_histogram", "counts of each live latent's best two-term cosine in 0.02-wide "
                         "bins, pooled over seeds, for the decoder and both baselines",
                         ("bin_low", "bin_high", "count", "count_random", "count_shuffled")),
        ),
        plots=(
            PlotSpec("metric_scatter", "description-length-vs-explained-variance",
                     "Description length vs explained variance, by architecture (Pareto front)",
                     x_metric="description_length", y_metric="explained_variance_quantised", front=("lower", "higher"),
                     x_label="description length (bits per token)", y_label="explained variance (quantised code)",
                     note="One point per submission (mean over seeds; bars: std). The line joins the submissions no "
                          "other submission beats on both axes."),
            PlotSpec("metric_vs_l0", "incoherent-fraction-vs-l0", "incoherent_fraction vs L0, by architecture",
                     metric="incoherent_fraction"),
            PlotSpec("artifact_histogram", "best-pair-cosine", "Best two-term cosine of each latent",
                     artifact="best_pair_cosine_histogram", x_low="bin_low", x_high="bin_high", y="count",
                     x_label="cosine of a latent's decoder row with its best two-term representation",
                     y_label="share of latents", x_range=(0.0, 1.0), y_range=(0.0, None),
                     note="Heights: bin count / total count of that submission (decoder only; the artifact also "
                          "holds the two baselines' counts)."),
        ),
        chance_metric="incoherent_fraction_random",
        # 65K latents at d=768: 1.3 GiB peak for the search, 0.9 GiB for the description length (perf/)
        resources=UnitResources(cpus=1.0, memory_gb=4.0, gpu=True),
        # the task seed draws the token sample and both baselines: its noise is measurable
        summaries=_triple_summaries()
        + reliability_summaries(("incoherent_fraction", "mean_pair_cosine", "description_length")),
        citation=AYONRINDE_2024,
        references=("https://arxiv.org/abs/2410.11179",
                    "https://www.lesswrong.com/posts/G2oyFQFTE5eGEas6m/interpretability-as-compression-reconsidering-sae",
                    "https://github.com/adamkarvonen/SAEBench/tree/main/sae_bench/evals/mdl"),
        notes=(
            "epsilon is an absolute loss of explained variance (EV_quantised >= EV - epsilon); bins are uniform per "
            "latent over its active range on the sample, one bin count shared by all latents, values sent as bin "
            "centroids; the per-latent codebook is a one-off cost and not counted per token.",
            "Entropies are plug-in estimates on the token sample (biased low for rarely firing latents); compare "
            "submissions at the same n_tokens.",
            "Differences from SAEBench's mdl eval: bins over [min, max] of the active values rather than [0, max], "
            "inactive zeros are not histogrammed into the magnitude, the distortion test is on explained variance.",
            "The pair search covers pairs among each latent's top-k |cosine| neighbours; search_certified_fraction "
            "says for how many latents nothing outside them could reach tau (pairs of mutual |cosine| <= "
            "certify_pair_cosine).",
            "Explanations of a triple are compared in the summaries triple_explanations and "
            "triple_explanation_counts (canonbench summarize), not in the task: they join the stored triples with "
            "explanation-similarity's stored explanations of the same submission and SAE seed. That task explains a "
            "seeded sample of latents, so few triples have both explanations; the similarity is token-set Jaccard, "
            "a lexical measure (paraphrases count as disagreeing).",
        ),
    )

    @classmethod
    def not_applicable(cls, manifest) -> str | None:
        reason = super().not_applicable(manifest)
        if reason:
            return reason
        from benchmark.data.organisms import MODEL_PREFIX

        model = getattr(manifest.submission, "model", None)
        if model is None:
            return "the submission names no model, so it has no corpus activations"
        if model.name.startswith(MODEL_PREFIX):
            return "checkpoints of a synthetic preset have no corpus activations"
        return None

    def run(self, inputs: TaskInputs) -> TaskOutput:
        from tqdm.auto import tqdm

        cfg: DescriptionLengthConfig = inputs.config
        provider = inputs.activations
        if provider is None:
            raise TaskError("description-length needs the model's corpus activations",
                            file=getattr(inputs.manifest, "path", None), field="model")
        saes = inputs.require_saes()
        acts = provider.activations() if callable(getattr(provider, "activations", None)) else provider
        d_acts = int(acts.shape[1])
        for seed, sae in saes.items():
            if sae.d_in != d_acts:
                raise TaskError(f"seed {seed}: SAE d_in={sae.d_in} but the activations have width {d_acts}",
                                file=getattr(inputs.manifest, "path", None), field="model.hook")
        n_tokens = min(cfg.n_tokens, inputs.limit) if inputs.limit else cfg.n_tokens
        rows = sample_token_rows(int(acts.shape[0]), n_tokens, seed=inputs.seed)
        batch = int(inputs.batch_size or 1024)
        # read the sampled rows of the memory-mapped activations once for every seed
        sample = torch.cat(list(iter_token_batches(acts, rows, batch, "cpu")))
        results = []
        for seed in tqdm(sorted(saes), desc="description-length seeds", disable=inputs.quiet, leave=False):
            results.append(evaluate_seed(saes[seed], seed, sample, np.arange(len(rows)), cfg, task_seed=inputs.seed,
                                         batch_size=batch, device=inputs.device))
            r = results[-1]
            self.log.info("seed %s: incoherent %.4f (random %.4f, shuffled %.4f), DL %s bits/token at %s bins",
                          seed, r.search.fraction(r.search.represented), r.random.fraction(r.random.represented),
                          r.shuffled.fraction(r.shuffled.represented), r.dl.description_length, r.dl.bins)
        artifacts = {"triples": triples_table(results), "latents": latents_table(results),
                     "quantisation_ladder": ladder_table(results), "best_pair_cosine_histogram": cosine_histogram(results)}
        data_hash = str(getattr(provider, "key", "")) or None
        return TaskOutput(metrics=build_metrics(results, cfg), artifacts=artifacts, data_hash=data_hash)
