"""Task ``cross-seed``: do SAEs trained with different seeds learn the same latents?

For every pair of seeds the decoder rows (and, separately, the encoder directions) are matched
one-to-one by an optimal assignment on signed cosine (Song et al. 2025); the pair's MCC is the mean
matched cosine, PW-MCC the mean over pairs. The shared-latent fraction follows Paulo & Belrose
(2025) with a threshold of 0.7 on both matches.

**How the two assignments combine (choice).** Decoder rows and encoder directions are matched by
two separate assignments. ``shared_fraction`` counts latent ``i`` of seed A as shared with latent
``j`` of seed B only when *both* assignments pair ``i`` with the same ``j`` and both matched cosines
exceed 0.7: a latent whose decoder resembles one partner and whose encoder resembles another is
not one shared feature, and this definition is symmetric in A and B. The literal reading (each
assignment thresholded on its own, partners free to differ) is reported as
``shared_fraction_any_partner`` (averaged over both directions, since it is not symmetric) so that
numbers stay comparable with the paper; the two differ only when near-duplicate latents exist.

**Uncertainty.** ``std`` is the spread over seed pairs. ``ci_low``/``ci_high`` are a 95%
percentile bootstrap over *latents* (each pair's per-latent values resampled with replacement,
the pair means averaged), seeded by the run seed. Pairs are not resampled: with 3 seeds there are
3 pairs that share seeds, so a bootstrap over pairs would be degenerate and over-confident;
the latent bootstrap states how precisely the finite dictionaries pin down the mean, given the
matching, while seed-to-seed variation is reported as the pair spread.

Every seed must have the same width: SAEs of different widths (a width ladder) are compared by the
``stitching`` task, which took over the ``stitch_*`` metrics in cross-seed's version 3.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmark.data.activations import iter_token_batches, sample_token_rows
from benchmark.errors import TaskError
from benchmark.metrics import definitions as defs
from benchmark.metrics.seed_pairs import SHARED_THRESHOLD, PairResult, chance_baseline, compare_pair
from benchmark.metrics.stats import mean_std, pair_summary
from benchmark.results import MetricValue
from tasks import register_task
from tasks.base import ArtifactSpec, PlotSpec, Task, TaskInputs, TaskMetadata, TaskOutput, UnitResources, metric_spec
from tasks.citations import PAULO_BELROSE_2025, SONG_2025, join
from tasks.reliability import reliability_summaries

log = logging.getLogger(__name__)

HIST_EDGES = np.round(np.linspace(-1.0, 1.0, 41), 10)  # 0.05-wide bins of matched cosine
FREQ_EDGES = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # firing-frequency bins (first: never fired)
DEFAULT_TOKEN_SAMPLE = 16_384


@dataclass(frozen=True)
class CrossSeedConfig:
    """Settings of the cross-seed task (part of every run spec)."""

    n_tokens: int = DEFAULT_TOKEN_SAMPLE  # token sample for L0, firing and activation correlation (capped by --limit)
    shared_threshold: float = SHARED_THRESHOLD  # both matched cosines must exceed it for a shared latent


# --------------------------------------------------------------------------------------------
# activations (optional)
# --------------------------------------------------------------------------------------------
@dataclass
class ActivationStats:
    """Per-seed firing statistics on a token sample and per-pair matched activation correlations."""

    n_tokens: int
    firing_frequency: dict[int, np.ndarray] = field(default_factory=dict)  # seed -> [d_sae]
    l0: dict[int, float] = field(default_factory=dict)
    correlation: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (a, b) -> [m_a]
    data_key: str | None = None


def activation_stats(
    saes: dict[int, Any], pairs: dict[tuple[int, int], PairResult], provider: Any, *,
    n_tokens: int, seed: int, batch_size: int, device: str, quiet: bool = True,
) -> ActivationStats:
    """Firing frequency and L0 of every seed, and the Pearson correlation over the token sample of
    each decoder-matched latent pair's activations (NaN when either latent is constant there)."""
    from tqdm.auto import tqdm

    acts = provider.activations() if callable(getattr(provider, "activations", None)) else provider
    total = int(acts.shape[0])
    rows = sample_token_rows(total, n_tokens, seed=seed)
    stats = ActivationStats(n_tokens=len(rows), data_key=str(getattr(provider, "key", "")) or None)
    fire = {s: torch.zeros(sae.d_sae, dtype=torch.float64) for s, sae in saes.items()}
    l0_sum = {s: 0.0 for s in saes}
    index = {}
    for key, pr in pairs.items():
        ia = torch.as_tensor(np.nonzero(pr.decoder.partner_a >= 0)[0])
        jb = torch.as_tensor(pr.decoder.partner_a[ia.numpy()])
        index[key] = (ia, jb)
    moments = {key: torch.zeros(5, len(ia), dtype=torch.float64) for key, (ia, _) in index.items()}
    batches = iter_token_batches(acts, rows, batch_size, device)
    for x in tqdm(batches, total=math.ceil(len(rows) / batch_size), disable=quiet, desc="encode sample", leave=False):
        with torch.no_grad():
            z = {s: sae.encode(x.to(sae.W_enc.dtype)).float().cpu() for s, sae in saes.items()}
        for s, zs in z.items():
            active = zs > 0
            fire[s] += active.sum(0, dtype=torch.float64)
            l0_sum[s] += float(active.sum())
        for key, (ia, jb) in index.items():
            xa = z[key[0]][:, ia].double()
            yb = z[key[1]][:, jb].double()
            mom = moments[key]
            mom[0] += xa.sum(0)
            mom[1] += yb.sum(0)
            mom[2] += (xa * xa).sum(0)
            mom[3] += (yb * yb).sum(0)
            mom[4] += (xa * yb).sum(0)
    n = float(len(rows))
    for s in saes:
        stats.firing_frequency[s] = (fire[s] / n).numpy()
        stats.l0[s] = l0_sum[s] / n
    for key, (ia, _) in index.items():
        sx, sy, sxx, syy, sxy = moments[key].numpy()
        cov = n * sxy - sx * sy
        var = (n * sxx - sx * sx) * (n * syy - sy * sy)
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.where(var > 1e-12 * np.maximum(1.0, (n * sxx) * (n * syy)), cov / np.sqrt(np.maximum(var, 1e-300)), np.nan)
        full = np.full(len(pairs[key].decoder.partner_a), np.nan)
        full[ia.numpy()] = np.clip(corr, -1.0, 1.0)
        stats.correlation[key] = full
    return stats


# --------------------------------------------------------------------------------------------
# the whole comparison and its tables
# --------------------------------------------------------------------------------------------
@dataclass
class CrossSeedResult:
    metrics: list[MetricValue]
    pairs: dict[tuple[int, int], PairResult]
    latents: pd.DataFrame
    histogram: pd.DataFrame
    by_frequency: pd.DataFrame | None = None
    matching_methods: list[str] = field(default_factory=list)
    matching_kernels: list[str] = field(default_factory=list)  # kernels of the exact matcher ("dense": no kernel)


def compute_cross_seed(
    saes: dict[int, Any], *, seed: int = 0, device: str = "cpu", activations: Any = None,
    n_tokens: int = DEFAULT_TOKEN_SAMPLE, batch_size: int = 1024, quiet: bool = True,
    threshold: float = SHARED_THRESHOLD,
) -> CrossSeedResult:
    """Every cross-seed metric for ``{seed: SAE}`` (at least two SAEs with the same ``d_in`` and width)."""
    if len(saes) < 2:
        raise TaskError(f"cross-seed needs at least 2 seeds, got {len(saes)}")
    d_ins = {s: sae.d_in for s, sae in saes.items()}
    if len(set(d_ins.values())) != 1:
        raise TaskError(f"all seeds must read the same activations; d_in differs: {d_ins}", field="sae.d_in")
    widths = {s: sae.d_sae for s, sae in saes.items()}
    if len(set(widths.values())) != 1:
        raise TaskError(f"all seeds must have the same width, got {widths}; SAEs of different widths are compared by "
                        "the stitching task", field="sae.width")
    seeds = sorted(saes)
    pairs: dict[tuple[int, int], PairResult] = {}
    for a, b in itertools.combinations(seeds, 2):
        pairs[(a, b)] = compare_pair(a, saes[a], b, saes[b], device=device, threshold=threshold)
    act = None
    if activations is not None:
        act = activation_stats(
            saes, pairs, activations, n_tokens=n_tokens, seed=seed, batch_size=batch_size, device=device, quiet=quiet
        )
        for key, pr in pairs.items():
            pr.activation_corr_a = act.correlation[key]

    metrics: list[MetricValue] = []
    d = next(iter(d_ins.values()))
    width = next(iter(widths.values()))
    group = list(pairs.values())
    methods = sorted({p.decoder.method for p in pairs.values()} | {p.encoder.method for p in pairs.values()})
    uncertified = sum(1 for p in pairs.values() for mt in (p.decoder, p.encoder) if mt.certified is False)
    base_extra = {"matching": methods, "uncertified_matchings": uncertified, "threshold": threshold}

    names = {
        "decoder_mcc": "decoder_pw_mcc",
        "encoder_mcc": "encoder_pw_mcc",
        "shared_fraction": "shared_fraction",
        "shared_fraction_any_partner": "shared_fraction_any_partner",
        "shared_fraction_decoder": "shared_fraction_decoder",
        "mean_max_cosine": "mean_max_cosine",
        "activation_correlation": "activation_correlation",
    }
    per_latent = [p.per_latent() for p in group]
    extra = dict(base_extra, pairs=[p.label for p in group], widths=[width, width])
    for key, name in names.items():
        if key not in per_latent[0]:
            continue
        metrics.append(pair_summary(name, [pl[key] for pl in per_latent], seed=seed, subset="all", extra=extra))
        if len(group) > 1:
            for p, pl in zip(group, per_latent):
                v = pl[key]
                if np.isfinite(v).any():
                    metrics.append(MetricValue(name, float(np.nanmean(v)), n=int(np.isfinite(v).sum()),
                                               subset=f"pair={p.label}", extra={"widths": [width, width]}))
    chance, chance_std, trials = chance_baseline(width, width, d, seed=seed, device=device)
    metrics.append(MetricValue("chance_mcc", chance, std=chance_std, n=trials, subset="all",
                               extra={"method": f"benchmark.metrics.seed_pairs.chance_baseline, {trials} trial(s)",
                                      "shape": [width, width, d]}))

    dead = [float((sae.decoder_directions().norm(dim=1) == 0).float().mean()) for sae in (saes[s] for s in seeds)]
    mean, std = mean_std(dead)
    metrics.append(MetricValue("dead_fraction", mean, std=std, n=len(dead),
                               extra={"what": "zero decoder rows; with activations see firing_frequency in latents"}))

    by_freq = None
    if act is not None:
        mean, std = mean_std(act.l0[s] for s in seeds)
        metrics.append(MetricValue("l0", mean, std=std, n=act.n_tokens,
                                   extra={"per_seed": {str(s): act.l0[s] for s in seeds}, "tokens": act.n_tokens,
                                          "data_key": act.data_key}))
        mean, std = mean_std(float((act.firing_frequency[s] == 0).mean()) for s in seeds)
        metrics.append(MetricValue("never_fired_fraction", mean, std=std, n=act.n_tokens, extra={"tokens": act.n_tokens}))
        by_freq = consistency_by_frequency(pairs, act)
        for row in by_freq.itertuples():
            if row.n:
                metrics.append(MetricValue(
                    "matched_cosine_by_frequency", float(row.mean_decoder_cosine), n=int(row.n),
                    subset=f"freq=[{row.bin_low:g},{row.bin_high:g})",
                    extra={"shared_fraction": float(row.shared_fraction), "what": "equal-width pairs, both directions"},
                ))

    return CrossSeedResult(
        metrics=metrics, pairs=pairs, latents=latent_table(pairs, act), histogram=cosine_histogram(pairs),
        by_frequency=by_freq, matching_methods=methods,
        matching_kernels=sorted({m.kernel or "dense" for p in pairs.values() for m in (p.decoder, p.encoder)}),
    )


def cosine_histogram(pairs: dict[tuple[int, int], PairResult]) -> pd.DataFrame:
    """Counts of decoder matched cosines in 0.05-wide bins, pooled over seed pairs."""
    values = [p.decoder.cosines for p in pairs.values()]
    pooled = np.clip(np.concatenate(values), -1.0, 1.0)
    counts, _ = np.histogram(pooled, bins=HIST_EDGES)
    return pd.DataFrame({"bin_low": HIST_EDGES[:-1], "bin_high": HIST_EDGES[1:], "count": counts.astype(np.int64)})


def latent_table(pairs: dict[tuple[int, int], PairResult], act: ActivationStats | None) -> pd.DataFrame:
    """One row per (seed, latent, other seed): decoder/encoder partner and cosine, max cosine,
    shared flag, firing frequency (when activations were given) and matched activation correlation."""
    frames = []
    for (a, b), p in pairs.items():
        for src, dst, dec_p, dec_c, enc_p, enc_c, mx, shared, corr in (
            (a, b, p.decoder.partner_a, p.decoder.cos_a, p.encoder.partner_a, p.encoder.cos_a, p.max_cos_a,
             p.shared_a, p.activation_corr_a),
            (b, a, p.decoder.partner_b, p.decoder.cos_b, p.encoder.partner_b, p.encoder.cos_b, p.max_cos_b,
             _shared_b(p), _corr_b(p)),
        ):
            frame = pd.DataFrame({
                "seed": np.int64(src), "latent": np.arange(len(dec_p), dtype=np.int64), "other_seed": np.int64(dst),
                "decoder_partner": dec_p, "decoder_cosine": dec_c,
                "encoder_partner": enc_p, "encoder_cosine": enc_c,
                "max_decoder_cosine": mx, "shared": shared.astype(bool),
            })
            frame["firing_frequency"] = act.firing_frequency[src] if act is not None else np.nan
            frame["activation_correlation"] = corr if corr is not None else np.nan
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _shared_b(p: PairResult) -> np.ndarray:
    shared = np.zeros(p.width_b, dtype=bool)
    idx = np.nonzero(p.shared_a)[0]
    shared[p.decoder.partner_a[idx]] = True
    return shared


def _corr_b(p: PairResult) -> np.ndarray | None:
    if p.activation_corr_a is None:
        return None
    out = np.full(p.width_b, np.nan)
    idx = np.nonzero(p.decoder.partner_a >= 0)[0]
    out[p.decoder.partner_a[idx]] = p.activation_corr_a[idx]
    return out


def consistency_by_frequency(pairs: dict[tuple[int, int], PairResult], act: ActivationStats) -> pd.DataFrame:
    """Mean matched decoder cosine and shared fraction by firing-frequency bin of the latent
    (both sides of every equal-width pair). The first bin holds latents that never fired."""
    freqs, cosines, shared = [], [], []
    for (a, b), p in pairs.items():
        freqs += [act.firing_frequency[a], act.firing_frequency[b]]
        cosines += [p.decoder.cos_a, p.decoder.cos_b]
        shared += [p.shared_a, _shared_b(p)]
    rows = []
    if freqs:
        f, c, s = np.concatenate(freqs), np.concatenate(cosines), np.concatenate(shared)
        edges = FREQ_EDGES
        for i in range(len(edges) - 1):
            lo, hi = edges[i], edges[i + 1]
            mask = (f == 0) if i == 0 else ((f >= lo) & (f < hi) & (f > 0)) if hi < 1.0 else ((f >= lo) & (f <= hi) & (f > 0))
            n = int(mask.sum())
            rows.append({"bin_low": lo, "bin_high": hi, "n": n,
                         "mean_decoder_cosine": float(np.nanmean(c[mask])) if n else np.nan,
                         "shared_fraction": float(s[mask].mean()) if n else np.nan})
    return pd.DataFrame(rows, columns=["bin_low", "bin_high", "n", "mean_decoder_cosine", "shared_fraction"])


# --------------------------------------------------------------------------------------------
# the task
# --------------------------------------------------------------------------------------------


@register_task
class CrossSeedTask(Task):
    synthetic_recipe_reason = "synthetic recipes are compared across seeds inside the synthetic task"
    config_class = CrossSeedConfig
    metadata = TaskMetadata(
        name="cross-seed",
        version="3",
        title="Cross-seed consistency",
        description=(
            "Do SAEs trained with different seeds learn the same latents? Decoder rows and encoder "
            "directions of every pair of seeds are matched one-to-one (optimal assignment on signed "
            "cosine); PW-MCC is the mean matched cosine averaged over pairs, the shared-latent fraction "
            "counts latents whose decoder and encoder both match the same partner with cosine > 0.7. "
            "Spread: std over seed pairs; CI: 95% bootstrap over latents. With activations for the "
            "submission's model and hook it also reports L0, the activation correlation of matched "
            "latents and consistency by firing frequency. Every seed has the submission's primary width (width "
            "ladders are compared by the stitching task)."
        ),
        metrics=(
            defs.DECODER_PW_MCC.as_main(),
            metric_spec("encoder_pw_mcc", "PW-MCC of encoder directions (separate assignment)", "higher", -1, 1),
            defs.SHARED_FRACTION,
            metric_spec("shared_fraction_any_partner", "Paulo & Belrose read literally: decoder and encoder matches both > 0.7, partners may differ (mean of both directions)", "higher", 0, 1),
            metric_spec("shared_fraction_decoder", "fraction of latents whose decoder match has cos > 0.7", "higher", 0, 1),
            metric_spec("mean_max_cosine", "mean over latents of the best decoder cosine with any latent of the other seed (not one-to-one)", "higher", -1, 1),
            defs.CHANCE_MCC,
            metric_spec("activation_correlation", "mean Pearson correlation over a token sample of decoder-matched latents' activations", "higher", -1, 1),
            defs.L0,
            defs.NEVER_FIRED_FRACTION,
            defs.DEAD_FRACTION,
            metric_spec("matched_cosine_by_frequency", "mean matched decoder cosine of latents in a firing-frequency bin (subset)", "higher", -1, 1),
        ),
        accepts=("checkpoints", "recipe"),
        min_seeds=2,
        needs_saes=True,
        uses_activations=True,
        # d_sae x d_sae cosine matrices per seed pair (16k latents: 1 GiB each) and a token sample encoded
        resources=UnitResources(cpus=1.0, memory_gb=4.0, gpu=True),
        chance_metric="chance_mcc",
        artifacts=(
            ArtifactSpec("latents", "one row per (seed, latent, other seed): decoder and encoder partner and cosine, "
                         "max cosine, shared flag, firing frequency and matched activation correlation",
                         ("seed", "latent", "other_seed", "decoder_partner", "decoder_cosine", "encoder_partner",
                          "encoder_cosine", "max_decoder_cosine", "shared", "firing_frequency", "activation_correlation")),
            ArtifactSpec("matched_cosine_histogram", "counts of matched decoder cosines in 0.05-wide bins, pooled over "
                         "equal-width pairs", ("bin_low", "bin_high", "count")),
            ArtifactSpec("consistency_by_frequency", "mean matched decoder cosine and shared fraction by firing-frequency "
                         "bin (with activations only)", ("bin_low", "bin_high", "n", "mean_decoder_cosine", "shared_fraction")),
        ),
        plots=(
            PlotSpec("metric_vs_l0", "decoder-pw-mcc-vs-l0", "decoder_pw_mcc vs L0, by architecture", metric="decoder_pw_mcc"),
            PlotSpec("artifact_histogram", "matched-cosine-histogram", "Matched decoder cosines across seeds",
                     artifact="matched_cosine_histogram", x_low="bin_low", x_high="bin_high", y="count",
                     x_label="matched decoder cosine", y_label="share of matched latents", x_range=(-1.0, 1.0),
                     y_range=(0.0, None), note="Heights: bin count / total count of that submission."),
        ),
        summaries=reliability_summaries(("decoder_pw_mcc", "shared_fraction", "activation_correlation")),
        citation=join(SONG_2025, PAULO_BELROSE_2025),
        references=("https://arxiv.org/abs/2505.20254", "https://arxiv.org/abs/2501.16615"),
        superseded=("v1: dead_fraction and the chance trial policy lived in the task; the run seed was not part of the "
                    "stored identity, so units of two seeds or a --limit preview could be served as each other",
                    "v2: seeds of unequal widths were compared under stitch_* metric names; those moved to the stitching "
                    "task (a width ladder, with the insertion test); cross-seed now refuses seeds of different widths "
                    "and reports every metric over equal-width pairs only"),
    )

    def run(self, inputs: TaskInputs) -> TaskOutput:
        cfg: CrossSeedConfig = inputs.config
        n_tokens = min(cfg.n_tokens, inputs.limit) if inputs.limit else cfg.n_tokens
        result = compute_cross_seed(
            inputs.require_saes(), seed=inputs.seed, device=inputs.device, activations=inputs.activations,
            n_tokens=n_tokens, batch_size=int(inputs.batch_size or 1024), quiet=inputs.quiet,
            threshold=cfg.shared_threshold,
        )
        artifacts = {"latents": result.latents, "matched_cosine_histogram": result.histogram}
        if result.by_frequency is not None:
            artifacts["consistency_by_frequency"] = result.by_frequency
        provider = inputs.activations
        data_hash = (str(getattr(provider, "key", "")) or None) if provider is not None else None
        return TaskOutput(metrics=result.metrics, artifacts=artifacts, data_hash=data_hash,
                          provenance={"matching_kernels": result.matching_kernels})
