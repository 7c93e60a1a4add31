"""Task ``explanation-similarity``: do decoder-matched latents of different seeds get the same explanation?

For every pair of seeds (equal widths) the decoder rows are matched one-to-one (as in
``cross-seed``). A random sample of latents of the first seed of each pair is drawn with the run
seed; each sampled latent ``i`` is compared with

* its matched partner ``π(i)`` in the other seed (the quantity of interest),
* a random latent of the other seed (random-pair baseline: explanations of unrelated latents),
* the latent with the same index ``i`` (unaligned baseline of Paulo & Belrose: indices carry no
  meaning across seeds, so this is another chance level that needs no extra explanations).

Explanations come from a pluggable source (:mod:`tasks.explanations.explainers`; default: the offline
top-context explainer on the submission's activation corpus), are embedded with a sentence
model (:mod:`tasks.explanations.embeddings`; default all-MiniLM-L6-v2) and compared by cosine. Latents
without an explanation (never fired on the token sample, or missing from an import) are left out
of every comparison they take part in and counted in ``explained_fraction``.

Uncertainty: ``std`` over seed pairs; ``ci_*``: 95% bootstrap over sampled latents (paired for
the gaps). ``spearman_cosine_similarity`` pools matched and random pairs, so it is defined even
when every matched pair gets the same explanation; ``spearman_matched`` uses matched pairs only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmark.cache import TaskCache
from benchmark.data.activations import iter_token_batches, sample_token_rows
from benchmark.errors import TaskError
from benchmark.metrics.seed_pairs import match_rows
from benchmark.metrics.stats import pair_summary
from benchmark.results import MetricValue
from tasks import register_task
from tasks.base import ArtifactSpec, PlotSpec, Task, TaskInputs, TaskMetadata, TaskOutput, UnitResources, metric_spec
from tasks.citations import PAULO_BELROSE_2025, SONG_2025, join
from tasks.reliability import reliability_summaries

log = logging.getLogger(__name__)

DEFAULT_LATENTS = 64
DEFAULT_TOKENS = 32_768
SIM_BIN_EDGES = (-1.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SPEARMAN_REPS = 500
LLM_KEY_ENV = "CANONBENCH_LLM_API_KEY"


@dataclass(frozen=True)
class ExplanationConfig:
    """Settings of the explanation-similarity task (part of every run spec).

    ``explainer``: ``top-context`` (offline, default), ``llm`` (an OpenAI-compatible endpoint at
    ``llm_url`` serving ``llm_model``; the API key comes from the environment variable
    ``CANONBENCH_LLM_API_KEY`` through the runner and is never stored), ``neuronpedia`` or
    ``delphi`` (imported explanations; ``explanation_paths`` is a JSON object seed → path).
    ``embedding_model``: a sentence-transformers folder or name (None: the packaged all-MiniLM-L6-v2)."""

    n_latents: int = DEFAULT_LATENTS  # sampled latents of the first seed of each pair (capped by --limit)
    n_tokens: int = DEFAULT_TOKENS  # token sample the top-context explainer reads
    explainer: str = "top-context"
    llm_url: str | None = None
    llm_model: str | None = None
    llm_prompt: str = "v1"
    llm_requests_per_second: float = 2.0
    llm_max_requests: int | None = None
    embedding_model: str | None = None
    explanation_paths: str | None = None
    explanation_source: str | None = None
    explanation_model: str | None = None
    explanation_hookpoint: str | None = None


# --------------------------------------------------------------------------------------------
# pairs of latents to compare
# --------------------------------------------------------------------------------------------
@dataclass
class PairPlan:
    """Which latents of seeds a and b are compared, and their decoder cosines."""

    seed_a: int
    seed_b: int
    sample: np.ndarray  # latents of a
    matched: np.ndarray  # partner in b of each sampled latent
    random: np.ndarray  # a random latent of b per sampled latent
    matched_cos: np.ndarray
    random_cos: np.ndarray
    same_index_cos: np.ndarray

    @property
    def label(self) -> str:
        return f"{self.seed_a}-{self.seed_b}"


def plan_pairs(saes: dict[int, Any], *, n_latents: int, seed: int, device: str = "cpu") -> list[PairPlan]:
    """Decoder-match every equal-width pair and draw the latent sample (seeded by ``seed``)."""
    seeds = sorted(saes)
    widths = {s: saes[s].d_sae for s in seeds}
    plans = []
    rng = np.random.default_rng(seed)
    for a, b in itertools.combinations(seeds, 2):
        if widths[a] != widths[b]:
            log.warning("explanation-similarity: seeds %s and %s differ in width (%s vs %s); pair skipped",
                        a, b, widths[a], widths[b])
            continue
        m = widths[a]
        dec_a = saes[a].decoder_directions().to(device)
        dec_b = saes[b].decoder_directions().to(device)
        match = match_rows(dec_a, dec_b, device=device)
        k = min(n_latents, m)
        sample = np.sort(rng.choice(m, size=k, replace=False))
        matched = match.partner_a[sample]
        # a random partner that is neither the match nor the same index (when the width allows it)
        random = rng.integers(0, m, size=k)
        for t in range(k):
            tries = 0
            while m > 2 and (random[t] == matched[t] or random[t] == sample[t]) and tries < 100:
                random[t] = rng.integers(0, m)
                tries += 1
        da, db = dec_a.double().cpu().numpy(), dec_b.double().cpu().numpy()
        plans.append(PairPlan(
            seed_a=a, seed_b=b, sample=sample, matched=matched, random=random,
            matched_cos=match.cos_a[sample],
            random_cos=np.einsum("ij,ij->i", da[sample], db[random]),
            same_index_cos=np.einsum("ij,ij->i", da[sample], db[sample]),
        ))
    if not plans:
        raise TaskError("explanation-similarity needs two seeds of the same width", field="sae.width")
    return plans


def needed_latents(plans: list[PairPlan]) -> dict[int, np.ndarray]:
    """Per seed, the sorted latents whose explanations the comparisons use."""
    need: dict[int, set[int]] = {}
    for p in plans:
        need.setdefault(p.seed_a, set()).update(p.sample.tolist())
        need.setdefault(p.seed_b, set()).update(p.sample.tolist() + p.matched.tolist() + p.random.tolist())
    return {s: np.array(sorted(v), dtype=np.int64) for s, v in need.items()}


# --------------------------------------------------------------------------------------------
# explanation sources
# --------------------------------------------------------------------------------------------
def sae_fingerprint(sae: Any) -> str:
    """A hash of the SAE's tensors and encode rule (cache key for its explanations)."""
    h = hashlib.sha256()
    cfg = sae.config
    h.update(json.dumps([cfg.architecture, cfg.d_in, cfg.d_sae, cfg.k, cfg.input_normalisation,
                         cfg.apply_b_dec_to_input, cfg.rescale_acts_by_decoder_norm]).encode())
    for name, tensor in sorted(sae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def latent_records(
    saes: dict[int, Any], needed: dict[int, np.ndarray], provider: Any, *, n_tokens: int, seed: int,
    batch_size: int, device: str, top_k: int = 12, window: int = 8, quiet: bool = True,
):
    """Top-activating contexts (:class:`tasks.explanations.explainers.LatentRecord`) of the needed latents."""
    from tqdm.auto import tqdm

    from tasks.explanations.explainers import TokenText, collect_top_contexts

    acts = provider.activations()
    token_ids, positions, strings = provider.tokens()
    text = TokenText(token_ids, positions, strings)
    total = int(acts.shape[0])
    if len(text) != total:
        raise TaskError(f"activation provider has {total} activation rows but {len(text)} tokens")
    rows = sample_token_rows(total, n_tokens, seed=seed)
    cols = {s: torch.as_tensor(needed[s]) for s in needed}
    kept = {s: [] for s in needed}
    n_batches = -(-len(rows) // batch_size)
    for x in tqdm(iter_token_batches(acts, rows, batch_size, device), total=n_batches, disable=quiet,
                  desc="encode sample", leave=False):
        with torch.no_grad():
            for s in needed:
                z = saes[s].encode(x.to(saes[s].W_enc.dtype))
                kept[s].append(z[:, cols[s].to(z.device)].float().cpu())
    records = {}
    for s in needed:
        z = torch.cat(kept[s]) if kept[s] else torch.zeros(0, len(needed[s]))
        records[s] = collect_top_contexts(z, needed[s].tolist(), rows, text, top_k=top_k, window=window)
    return records, len(rows)


@dataclass
class ExplanationSource:
    """How explanations are made for each seed: an explainer per seed, and whether it needs contexts."""

    name: str
    explainers: dict[int, Any]
    needs_contexts: bool
    cacheable: bool
    stats: Any = None


def build_source(cfg: ExplanationConfig, seeds: list[int], *, secrets: dict[str, str] | None = None) -> ExplanationSource:
    """The explanation source the config names (see :class:`ExplanationConfig`)."""
    from tasks.explanations.explainers import (
        ImportedExplainer,
        OpenAICompatibleExplainer,
        TopContextExplainer,
        read_delphi_explanations,
        read_neuronpedia_export,
    )

    kind = cfg.explainer
    if kind == "top-context":
        ex = TopContextExplainer()
        return ExplanationSource(kind, {s: ex for s in seeds}, needs_contexts=True, cacheable=True)
    if kind == "llm":
        if not cfg.llm_url or not cfg.llm_model:
            raise TaskError("the LLM explainer needs llm_url and llm_model (--task-option "
                            "explanation-similarity.llm_url=... or CANONBENCH_LLM_URL / CANONBENCH_LLM_MODEL)",
                            field="explanation-similarity.llm_url")
        ex = OpenAICompatibleExplainer(cfg.llm_url, cfg.llm_model, api_key=(secrets or {}).get(LLM_KEY_ENV),
                                       prompt=cfg.llm_prompt, requests_per_second=cfg.llm_requests_per_second,
                                       max_requests=cfg.llm_max_requests)
        return ExplanationSource(kind, {s: ex for s in seeds}, needs_contexts=True, cacheable=True, stats=ex.stats)
    if kind in ("neuronpedia", "delphi"):
        try:
            paths = json.loads(cfg.explanation_paths or "{}")
            paths = {int(k): v for k, v in paths.items()}
        except (ValueError, TypeError, AttributeError):
            raise TaskError("must be a JSON object seed → path", field="explanation-similarity.explanation_paths") from None
        missing = [s for s in seeds if s not in paths]
        if missing:
            raise TaskError(f"{kind} import needs a path for every seed; missing {missing}", field="explanation_paths")
        explainers = {}
        for s in seeds:
            if kind == "neuronpedia":
                data = read_neuronpedia_export(paths[s], source=cfg.explanation_source,
                                               explanation_model=cfg.explanation_model)
            else:
                data = read_delphi_explanations(paths[s], hookpoint=cfg.explanation_hookpoint)
            explainers[s] = ImportedExplainer(data, identity=f"{kind}:{Path(paths[s]).name}")
        return ExplanationSource(kind, explainers, needs_contexts=False, cacheable=False)
    raise TaskError(f"unknown explainer {kind!r} (top-context, llm, neuronpedia, delphi)", field="explainer")


def gather_explanations(
    saes: dict[int, Any], needed: dict[int, np.ndarray], source: ExplanationSource, *, provider: Any,
    cache: TaskCache | None, n_tokens: int, seed: int, batch_size: int, device: str, quiet: bool,
) -> tuple[dict[int, dict[int, str | None]], dict[str, Any]]:
    """``{seed: {latent: explanation or None}}`` for the needed latents, through the cache."""
    from tasks.explanations.explainers import ExplanationCache, LatentRecord, explain_records

    info: dict[str, Any] = {"explainer": source.name}
    if source.needs_contexts:
        if provider is None:
            raise TaskError(f"the {source.name} explainer needs activations for the submission's model and hook")
        records, used = latent_records(saes, needed, provider, n_tokens=n_tokens, seed=seed, batch_size=batch_size,
                                       device=device, quiet=quiet)
        info.update(tokens=used, data_key=str(getattr(provider, "key", "")) or None)
    else:
        records = {s: [LatentRecord(latent=int(i), firing_frequency=float("nan"), max_activation=float("nan"))
                       for i in needed[s]] for s in needed}
    out = {}
    for s in sorted(needed):
        explainer = source.explainers[s]
        store = None
        if source.cacheable and cache is not None:
            subject = f"{sae_fingerprint(saes[s])}-{info.get('data_key') or 'nodata'}-t{info.get('tokens')}-s{seed}"
            store = ExplanationCache(cache, explainer.identity, subject)
        out[s] = explain_records(explainer, records[s], cache=store, quiet=quiet, desc=f"explain seed {s}")
    info["identity"] = sorted({source.explainers[s].identity for s in needed})
    if source.stats is not None:
        info["llm"] = source.stats.summary()
    return out, info


# --------------------------------------------------------------------------------------------
# similarity and metrics
# --------------------------------------------------------------------------------------------
@dataclass
class PairSimilarity:
    plan: PairPlan
    matched: np.ndarray  # explanation cosine per sampled latent (NaN: a side has no explanation)
    random: np.ndarray
    same_index: np.ndarray


def embed_explanations(explanations: dict[int, dict[int, str | None]], embedder: Any) -> dict[str, np.ndarray]:
    texts = sorted({t for per in explanations.values() for t in per.values() if t})
    vectors = embedder.encode(texts) if texts else np.zeros((0, 1))
    return {t: vectors[i] for i, t in enumerate(texts)}


def similarities(plans: list[PairPlan], explanations: dict[int, dict[int, str | None]],
                 vectors: dict[str, np.ndarray]) -> list[PairSimilarity]:
    """Cosine of explanation embeddings for the matched, random and same-index pairs."""

    def sim(seed_a: int, la: np.ndarray, seed_b: int, lb: np.ndarray) -> np.ndarray:
        out = np.full(len(la), np.nan)
        for t, (i, j) in enumerate(zip(la.tolist(), lb.tolist())):
            ta, tb = explanations[seed_a].get(i), explanations[seed_b].get(j)
            if ta and tb:
                out[t] = 1.0 if ta == tb else float(np.dot(vectors[ta], vectors[tb]))
        return np.clip(out, -1.0, 1.0)

    return [PairSimilarity(p, sim(p.seed_a, p.sample, p.seed_b, p.matched), sim(p.seed_a, p.sample, p.seed_b, p.random),
                           sim(p.seed_a, p.sample, p.seed_b, p.sample)) for p in plans]


def spearman(x: np.ndarray, y: np.ndarray, *, seed: int, reps: int = SPEARMAN_REPS) -> tuple[float | None, Any]:
    """Spearman rho with a bootstrap CI over items; (None, why) when undefined."""
    from scipy.stats import rankdata

    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3:
        return None, f"only {len(x)} pairs with explanations"
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None, "constant input: every pair has the same " + ("decoder cosine" if np.ptp(x) == 0 else "explanation similarity")

    def rho(a, b):
        ra, rb = rankdata(a), rankdata(b)
        ra, rb = ra - ra.mean(), rb - rb.mean()
        den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
        return float((ra * rb).sum() / den) if den > 0 else np.nan

    value = rho(x, y)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(reps):
        idx = rng.integers(0, len(x), size=len(x))
        r = rho(x[idx], y[idx])
        if np.isfinite(r):
            boot.append(r)
    lo, hi = (np.quantile(boot, [0.025, 0.975]) if boot else (None, None))
    return value, (float(lo) if lo is not None else None, float(hi) if hi is not None else None, int(len(x)))


def similarity_by_cosine_bin(sims: list[PairSimilarity]) -> pd.DataFrame:
    """Mean explanation similarity by bin of decoder cosine (matched and random pairs pooled)."""
    cos = np.concatenate([np.concatenate([s.plan.matched_cos, s.plan.random_cos]) for s in sims])
    sim = np.concatenate([np.concatenate([s.matched, s.random]) for s in sims])
    n_matched_src = np.concatenate([np.concatenate([np.ones_like(s.matched), np.zeros_like(s.random)]) for s in sims])
    ok = np.isfinite(sim) & np.isfinite(cos)
    cos, sim, n_matched_src = cos[ok], sim[ok], n_matched_src[ok]
    rows = []
    edges = SIM_BIN_EDGES
    for i in range(len(edges) - 1):
        lo, hi = edges[i], edges[i + 1]
        mask = (cos >= lo) & ((cos < hi) if i < len(edges) - 2 else (cos <= hi))
        n = int(mask.sum())
        rows.append({"bin_low": lo, "bin_high": hi, "mean_similarity": float(sim[mask].mean()) if n else np.nan,
                     "n": n, "n_matched": int(n_matched_src[mask].sum())})
    return pd.DataFrame(rows, columns=["bin_low", "bin_high", "mean_similarity", "n", "n_matched"])


def explanation_metrics(sims: list[PairSimilarity], *, seed: int, explained_fraction: float, n_needed: int,
                        info: dict[str, Any]) -> list[MetricValue]:
    extra = {"pairs": [s.plan.label for s in sims], "sample_seed": seed,
             "latents_per_pair": int(len(sims[0].plan.sample)), **info}
    metrics = [
        pair_summary("matched_similarity", [s.matched for s in sims], seed=seed, extra=extra),
        pair_summary("random_pair_similarity", [s.random for s in sims], seed=seed, extra=extra),
        pair_summary("same_index_similarity", [s.same_index for s in sims], seed=seed, extra=extra),
        pair_summary("similarity_gap", [s.matched - s.random for s in sims], seed=seed,
                  extra=dict(extra, what="matched minus random-pair similarity, paired per sampled latent")),
        pair_summary("similarity_gap_same_index", [s.matched - s.same_index for s in sims], seed=seed,
                  extra=dict(extra, what="matched minus same-index similarity, paired per sampled latent")),
    ]
    if len(sims) > 1:
        for s in sims:
            if np.isfinite(s.matched).any():
                metrics.append(MetricValue("matched_similarity", float(np.nanmean(s.matched)), subset=f"pair={s.plan.label}",
                                           n=int(np.isfinite(s.matched).sum())))
    both_x = np.concatenate([np.concatenate([s.plan.matched_cos, s.plan.random_cos]) for s in sims])
    both_y = np.concatenate([np.concatenate([s.matched, s.random]) for s in sims])
    only_x = np.concatenate([s.plan.matched_cos for s in sims])
    only_y = np.concatenate([s.matched for s in sims])
    for name, x, y, what in (
        ("spearman_cosine_similarity", both_x, both_y, "matched and random pairs pooled"),
        ("spearman_matched", only_x, only_y, "matched pairs only"),
    ):
        value, detail = spearman(x, y, seed=seed)
        if value is None:
            metrics.append(MetricValue(name, None, note=detail, extra={"what": what}))
        else:
            lo, hi, n = detail
            if lo is not None:
                lo, hi = min(lo, value), max(hi, value)
            metrics.append(MetricValue(name, value, ci_low=lo, ci_high=hi, n=n,
                                       extra={"what": what, "ci": f"95% bootstrap over pairs of latents, B={SPEARMAN_REPS}"}))
    metrics.append(MetricValue("explained_fraction", explained_fraction, n=n_needed,
                               extra={"what": "needed latents with an explanation (others never fired / not imported)", **info}))
    return metrics


@dataclass
class ExplanationResult:
    metrics: list[MetricValue]
    by_bin: pd.DataFrame
    pairs: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)


def compute_explanation_similarity(
    saes: dict[int, Any], *, provider: Any = None, source: ExplanationSource | None = None, embedder: Any = None,
    n_latents: int = DEFAULT_LATENTS, n_tokens: int = DEFAULT_TOKENS, seed: int = 0, cache: TaskCache | None = None,
    batch_size: int = 1024, device: str = "cpu", quiet: bool = True,
    explanations: dict[int, dict[int, str | None]] | None = None,
) -> ExplanationResult:
    """Every metric of the task. ``explanations`` (``{seed: {latent: text}}``) bypasses the source."""
    if len(saes) < 2:
        raise TaskError(f"explanation-similarity needs at least 2 seeds, got {len(saes)}")
    started = time.perf_counter()
    plans = plan_pairs(saes, n_latents=n_latents, seed=seed, device=device)
    needed = needed_latents(plans)
    info: dict[str, Any] = {}
    if explanations is None:
        source = source or build_source(ExplanationConfig(), sorted(saes))
        explanations, info = gather_explanations(
            saes, needed, source, provider=provider, cache=cache, n_tokens=n_tokens, seed=seed,
            batch_size=batch_size, device=device, quiet=quiet,
        )
    t_explained = time.perf_counter()
    if embedder is None:
        from tasks.explanations.embeddings import SentenceEmbedder

        embedder = SentenceEmbedder(device=device)
    vectors = embed_explanations(explanations, embedder)
    info["embedding_model"] = getattr(embedder, "identity", type(embedder).__name__)
    info["timing_s"] = {"explain": round(t_explained - started, 2), "embed": round(time.perf_counter() - t_explained, 2)}
    sims = similarities(plans, explanations, vectors)
    n_needed = int(sum(len(v) for v in needed.values()))
    n_have = int(sum(1 for s, lat in needed.items() for i in lat.tolist() if explanations.get(s, {}).get(i)))
    metrics = explanation_metrics(sims, seed=seed, explained_fraction=n_have / max(n_needed, 1), n_needed=n_needed,
                                  info=info)
    return ExplanationResult(metrics=metrics, by_bin=similarity_by_cosine_bin(sims),
                             pairs=pair_table(sims, explanations), info=info)


def pair_table(sims: list[PairSimilarity], explanations: dict[int, dict[int, str | None]]) -> pd.DataFrame:
    """One row per (pair, sampled latent, comparison): latents, decoder cosine, explanations, similarity."""
    rows = []
    for s in sims:
        p = s.plan
        for kind, partners, cos, sim in (("matched", p.matched, p.matched_cos, s.matched),
                                         ("random", p.random, p.random_cos, s.random),
                                         ("same_index", p.sample, p.same_index_cos, s.same_index)):
            for t in range(len(p.sample)):
                i, j = int(p.sample[t]), int(partners[t])
                rows.append({"seed_a": p.seed_a, "latent_a": i, "seed_b": p.seed_b, "latent_b": j, "kind": kind,
                             "decoder_cosine": float(cos[t]), "similarity": float(sim[t]),
                             "explanation_a": explanations[p.seed_a].get(i), "explanation_b": explanations[p.seed_b].get(j)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# the task
# --------------------------------------------------------------------------------------------


@register_task
class ExplanationSimilarityTask(Task):
    synthetic_recipe_reason = "synthetic recipes have no text to explain latents with"
    config_class = ExplanationConfig
    metadata = TaskMetadata(
        name="explanation-similarity",
        version="1",
        title="Explanation similarity of matched latents",
        description=(
            "Do decoder-matched latents of different seeds get the same explanation? A seeded sample "
            "of latents per seed pair is explained (default: offline top-activating-context explainer; "
            "LLM or imported Neuronpedia/delphi explanations optional), explanations are embedded with "
            "all-MiniLM-L6-v2, and the cosine of matched pairs is compared with random pairs and "
            "same-index (unaligned) pairs. Also: Spearman correlation of decoder cosine with explanation "
            "similarity, and similarity by decoder-cosine bin."
        ),
        metrics=(
            metric_spec("similarity_gap", "matched minus random-pair explanation similarity", "higher", -2, 2, main=True),
            metric_spec("matched_similarity", "mean cosine of explanation embeddings of decoder-matched latents", "higher", -1, 1),
            metric_spec("random_pair_similarity", "baseline: the same for random latent pairs", "none", -1, 1),
            metric_spec("same_index_similarity", "baseline: the same for latents with the same index (unaligned)", "none", -1, 1),
            metric_spec("similarity_gap_same_index", "matched minus same-index explanation similarity", "higher", -2, 2),
            metric_spec("spearman_cosine_similarity", "Spearman correlation of decoder cosine and explanation similarity (matched and random pairs)", "higher", -1, 1),
            metric_spec("spearman_matched", "Spearman correlation of decoder cosine and explanation similarity (matched pairs only)", "higher", -1, 1),
            metric_spec("explained_fraction", "fraction of the compared latents that have an explanation", "higher", 0, 1),
        ),
        accepts=("checkpoints", "recipe"),
        min_seeds=2,
        needs_saes=True,
        uses_activations=True,
        artifacts=(
            ArtifactSpec("similarity_by_cosine_bin", "mean explanation similarity per decoder-cosine bin",
                         ("bin_low", "bin_high", "mean_similarity", "n")),
            ArtifactSpec("explanation_pairs", "one row per (pair, sampled latent, comparison): latents, decoder cosine, "
                         "explanations and their similarity",
                         ("seed_a", "latent_a", "seed_b", "latent_b", "kind", "decoder_cosine", "similarity",
                          "explanation_a", "explanation_b")),
        ),
        plots=(
            PlotSpec("artifact_curve", "similarity-by-cosine", "Explanation similarity vs decoder cosine",
                     artifact="similarity_by_cosine_bin", x_low="bin_low", x_high="bin_high", y="mean_similarity", n="n",
                     x_label="decoder cosine of the matched pair (bin centre)", y_label="mean explanation similarity",
                     x_range=(-1.0, 1.0), y_range=(-1.0, 1.0), note="Points at bin centres; empty bins are left out."),
        ),
        secrets=(LLM_KEY_ENV,),
        summaries=reliability_summaries(("similarity_gap", "matched_similarity")),
        # the embedding model plus top contexts of sampled latents over a token sample
        resources=UnitResources(cpus=1.0, memory_gb=4.0, gpu=True),
        citation=join(PAULO_BELROSE_2025, SONG_2025),
        references=("https://arxiv.org/abs/2501.16615", "https://arxiv.org/abs/2505.20254"),
    )

    def run(self, inputs: TaskInputs) -> TaskOutput:
        cfg: ExplanationConfig = inputs.config
        saes = inputs.require_saes()
        n_latents = min(cfg.n_latents, inputs.limit) if inputs.limit else cfg.n_latents
        source = build_source(cfg, sorted(saes), secrets=inputs.secrets)
        from tasks.explanations.embeddings import SentenceEmbedder

        embedder = SentenceEmbedder(cfg.embedding_model, device=inputs.device)
        result = compute_explanation_similarity(
            saes, provider=inputs.activations, source=source, embedder=embedder, n_latents=n_latents,
            n_tokens=cfg.n_tokens, seed=inputs.seed, cache=inputs.cache,
            batch_size=int(inputs.batch_size or 1024), device=inputs.device, quiet=inputs.quiet,
        )
        data_hash = result.info.get("data_key")
        return TaskOutput(
            metrics=result.metrics,
            artifacts={"similarity_by_cosine_bin": result.by_bin, "explanation_pairs": result.pairs},
            data_hash=data_hash,
        )
