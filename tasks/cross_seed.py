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

Unequal widths (a small and a large SAE, stitching-style) are reported under ``stitch_*`` metric
names with ``subset = "widths=<small>x<large>"`` and are never averaged into equal-width PW-MCC.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch

from benchmark.errors import TaskError
from benchmark.results import MetricValue
from tasks import register_task
from tasks.citations import PAULO_BELROSE_2025, SONG_2025, join
from tasks.base import Task, TaskContext, TaskMetadata, TaskOutput, metric_spec

log = logging.getLogger(__name__)

SHARED_THRESHOLD = 0.7
BOOTSTRAP_REPS = 1000
HIST_EDGES = np.round(np.linspace(-1.0, 1.0, 41), 10)  # 0.05-wide bins of matched cosine
FREQ_EDGES = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # firing-frequency bins (first: never fired)
DEFAULT_TOKEN_SAMPLE = 16_384




# --------------------------------------------------------------------------------------------
# matching: the engine in benchmark.metrics.matching, with a dense fallback for small problems
# --------------------------------------------------------------------------------------------
@dataclass
class PairMatch:
    """A one-to-one matching of rows of A ``[m, d]`` to rows of B ``[n, d]``.

    ``partner_a[i]`` is the B row matched to A row ``i`` (-1 when unmatched, only possible when
    m > n); ``cos_a[i]`` its signed cosine (NaN when unmatched); ``partner_b``/``cos_b`` the
    inverse view. ``cosines`` holds the min(m, n) matched cosines in A-row order.
    """

    partner_a: np.ndarray
    cos_a: np.ndarray
    partner_b: np.ndarray
    cos_b: np.ndarray
    method: str = ""
    certified: bool | None = None

    @property
    def cosines(self) -> np.ndarray:
        return self.cos_a[self.partner_a >= 0]

    @property
    def mcc(self) -> float:
        return float(self.cosines.mean())


def match_rows(a: torch.Tensor, b: torch.Tensor, *, device: str = "cpu") -> PairMatch:
    """Optimal one-to-one matching (max sum of signed cosine) of unit rows ``a [m, d]``, ``b [n, d]``.

    Uses :func:`benchmark.metrics.matching.match_dictionaries` (exact at scale); falls back to scipy's
    dense assignment in float64 when that module is not installed.
    """
    m, n = a.shape[0], b.shape[0]
    try:
        from benchmark.metrics.matching import match_dictionaries
    except ImportError:
        match_dictionaries = None
    if match_dictionaries is not None:
        res = match_dictionaries(a, b, device=device)
        rows_a = _as_numpy(res.rows_a).astype(np.int64)
        rows_b = _as_numpy(res.rows_b).astype(np.int64)
        cos = _as_numpy(res.cosines).astype(np.float64)
        method, certified = str(getattr(res, "method", "")), getattr(res, "certified", None)
    else:
        from scipy.optimize import linear_sum_assignment

        if m * n > 8192 * 8192:
            raise TaskError(f"benchmark.metrics.matching is not available and a dense {m}x{n} assignment is too large")
        sim = (a.double().cpu() @ b.double().cpu().T).numpy()
        rows_a, rows_b = linear_sum_assignment(sim, maximize=True)
        cos = sim[rows_a, rows_b]
        method, certified = "scipy-dense-fallback", True
    partner_a = np.full(m, -1, dtype=np.int64)
    partner_b = np.full(n, -1, dtype=np.int64)
    cos_a = np.full(m, np.nan)
    cos_b = np.full(n, np.nan)
    partner_a[rows_a], cos_a[rows_a] = rows_b, cos
    partner_b[rows_b], cos_b[rows_b] = rows_a, cos
    return PairMatch(partner_a, cos_a, partner_b, cos_b, method=method, certified=certified)


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def max_cosines(a: torch.Tensor, b: torch.Tensor, *, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-row maximum cosine of unit rows ``a [m, d]`` against ``b [n, d]`` and of ``b`` against ``a``
    (not one-to-one; Sharkey et al. 2022). Returns float64 arrays ``[m]`` and ``[n]``."""
    best_b = torch.full((b.shape[0],), -math.inf, dtype=torch.float32, device=b.device)
    best_a = []
    for start in range(0, a.shape[0], chunk):
        sim = a[start : start + chunk] @ b.T
        best_a.append(sim.max(dim=1).values)
        best_b = torch.maximum(best_b, sim.max(dim=0).values)
    return torch.cat(best_a).double().cpu().numpy(), best_b.double().cpu().numpy()


def chance_baseline(m: int, n: int, d: int, *, seed: int, device: str = "cpu") -> tuple[float | None, str]:
    """MCC of two independent random unit dictionaries of shapes ``[m, d]`` and ``[n, d]``."""
    trials = 3 if max(m, n) <= 4096 else 1
    try:
        from benchmark.metrics.matching import chance_mcc
    except ImportError:
        chance_mcc = None
    if chance_mcc is not None:
        res = chance_mcc(m, n, d, seed=seed, trials=trials, device=device)
        return float(getattr(res, "mean", res)), f"benchmark.metrics.matching.chance_mcc, {trials} trial(s)"
    if max(m, n) > 4096:
        return None, "benchmark.metrics.matching is not available; dense chance baseline skipped above 4096 latents"
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(trials):
        ra = torch.nn.functional.normalize(torch.randn(m, d, generator=gen), dim=1)
        rb = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1)
        values.append(match_rows(ra, rb).mcc)
    return float(np.mean(values)), f"dense scipy, {trials} trial(s)"


# --------------------------------------------------------------------------------------------
# statistics helpers
# --------------------------------------------------------------------------------------------
def bootstrap_mean_of_means(
    per_pair: list[np.ndarray], *, seed: int, reps: int = BOOTSTRAP_REPS, level: float = 0.95
) -> tuple[float, float] | tuple[None, None]:
    """Percentile CI of ``mean_p mean(per_pair[p])`` resampling each pair's values with replacement.

    NaNs are dropped first. Returns (low, high), or (None, None) when there is nothing to resample.
    """
    arrays = [np.asarray(v, dtype=np.float64) for v in per_pair]
    arrays = [v[np.isfinite(v)] for v in arrays]
    arrays = [v for v in arrays if v.size]
    if not arrays:
        return None, None
    rng = np.random.default_rng(seed)
    stats = np.zeros(reps)
    chunk = max(1, min(reps, 2_000_000 // max(v.size for v in arrays)))
    for values in arrays:
        done = 0
        while done < reps:
            k = min(chunk, reps - done)
            idx = rng.integers(0, values.size, size=(k, values.size))
            stats[done : done + k] += values[idx].mean(axis=1)
            done += k
    stats /= len(arrays)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def summarise(
    name: str,
    per_pair: list[np.ndarray],
    *,
    seed: int,
    subset: str = "all",
    extra: dict[str, Any] | None = None,
) -> MetricValue:
    """Mean over pairs of per-latent means, spread over pairs, latent-bootstrap CI."""
    means = [float(np.nanmean(v)) for v in per_pair if np.isfinite(v).any()]
    if not means:
        return MetricValue(name, None, subset=subset, note="no defined values (all latents dead or unmatched)")
    value = float(np.mean(means))
    std = float(np.std(means, ddof=1)) if len(means) > 1 else None
    lo, hi = bootstrap_mean_of_means(per_pair, seed=seed)
    info = {"spread": "std over seed pairs", "ci": f"95% percentile bootstrap over latents, B={BOOTSTRAP_REPS}"}
    info.update(extra or {})
    n = int(sum(np.isfinite(v).sum() for v in per_pair))
    # numerical safety: the percentile interval of a mean always brackets it, up to rounding
    if lo is not None:
        lo, hi = min(lo, value), max(hi, value)
    return MetricValue(name, value, std=std, ci_low=lo, ci_high=hi, n=n, subset=subset, extra=info)


# --------------------------------------------------------------------------------------------
# the pairwise comparison
# --------------------------------------------------------------------------------------------
@dataclass
class PairResult:
    seed_a: int
    seed_b: int
    width_a: int
    width_b: int
    decoder: PairMatch
    encoder: PairMatch
    max_cos_a: np.ndarray  # decoder, A rows vs any B row
    max_cos_b: np.ndarray
    shared_a: np.ndarray  # bool [m]: A latent shared (same partner in both assignments, both > 0.7)
    any_partner_a: np.ndarray  # bool [m]: both assignments > 0.7, partners may differ
    any_partner_b: np.ndarray  # bool [n]
    activation_corr_a: np.ndarray | None = None  # [m], NaN where undefined / unmatched

    @property
    def equal_width(self) -> bool:
        return self.width_a == self.width_b

    @property
    def label(self) -> str:
        return f"{self.seed_a}-{self.seed_b}"

    def per_latent(self) -> dict[str, np.ndarray]:
        """Per-latent values whose means are this pair's metrics (over the min(m, n) matched A rows)."""
        matched = self.decoder.partner_a >= 0
        enc_matched = self.encoder.partner_a >= 0
        k = min(self.width_a, self.width_b)
        shared = np.zeros(k)
        shared[: int(self.shared_a.sum())] = 1.0  # a fraction of k: order is irrelevant for means
        dec_only = np.zeros(k)
        dec_only[: int((self.decoder.cos_a[matched] > SHARED_THRESHOLD).sum())] = 1.0
        out = {
            "decoder_mcc": self.decoder.cos_a[matched],
            "encoder_mcc": self.encoder.cos_a[enc_matched],
            "shared_fraction": shared,
            "shared_fraction_decoder": dec_only,
        }
        if self.equal_width:
            any_partner = np.concatenate([self.any_partner_a, self.any_partner_b]).astype(float)
            out["shared_fraction_any_partner"] = any_partner
            out["mean_max_cosine"] = np.concatenate([self.max_cos_a, self.max_cos_b])
        else:
            small_is_a = self.width_a < self.width_b
            out["max_cosine_large_to_small"] = self.max_cos_b if small_is_a else self.max_cos_a
            out["max_cosine_small_to_large"] = self.max_cos_a if small_is_a else self.max_cos_b
        if self.activation_corr_a is not None:
            out["activation_correlation"] = self.activation_corr_a[matched]
        return out


def compare_pair(
    seed_a: int, sae_a: Any, seed_b: int, sae_b: Any, *, device: str = "cpu", threshold: float = SHARED_THRESHOLD
) -> PairResult:
    """Decoder and encoder matchings of two SAEs plus the per-latent shared flags."""
    dec_a, dec_b = sae_a.decoder_directions().to(device), sae_b.decoder_directions().to(device)
    enc_a, enc_b = sae_a.encoder_directions().to(device), sae_b.encoder_directions().to(device)
    decoder = match_rows(dec_a, dec_b, device=device)
    encoder = match_rows(enc_a, enc_b, device=device)
    max_a, max_b = max_cosines(dec_a, dec_b)
    return build_pair_result(seed_a, seed_b, decoder, encoder, max_a, max_b, threshold=threshold)


def build_pair_result(
    seed_a: int, seed_b: int, decoder: PairMatch, encoder: PairMatch, max_a: np.ndarray, max_b: np.ndarray,
    *, threshold: float = SHARED_THRESHOLD,
) -> PairResult:
    """Combine a decoder and an encoder matching into shared-latent flags (see the module docstring)."""
    with np.errstate(invalid="ignore"):
        dec_ok_a = np.nan_to_num(decoder.cos_a, nan=-2.0) > threshold
        enc_ok_a = np.nan_to_num(encoder.cos_a, nan=-2.0) > threshold
        dec_ok_b = np.nan_to_num(decoder.cos_b, nan=-2.0) > threshold
        enc_ok_b = np.nan_to_num(encoder.cos_b, nan=-2.0) > threshold
    same_partner = (decoder.partner_a == encoder.partner_a) & (decoder.partner_a >= 0)
    return PairResult(
        seed_a=seed_a, seed_b=seed_b,
        width_a=len(decoder.partner_a), width_b=len(decoder.partner_b),
        decoder=decoder, encoder=encoder, max_cos_a=max_a, max_cos_b=max_b,
        shared_a=dec_ok_a & enc_ok_a & same_partner,
        any_partner_a=dec_ok_a & enc_ok_a,
        any_partner_b=dec_ok_b & enc_ok_b,
    )


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


def activation_matrix(provider: Any) -> Any:
    """The provider's activations ``[n_tokens, d_in]`` (memory-mapped tensor or array)."""
    acts = provider.activations() if callable(getattr(provider, "activations", None)) else provider
    return acts


def sample_token_rows(n_total: int, n_sample: int, *, seed: int) -> np.ndarray:
    """Sorted distinct token indices, a uniform sample drawn with ``seed``."""
    if n_sample >= n_total:
        return np.arange(n_total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=n_sample, replace=False))


def iter_token_batches(acts: Any, rows: np.ndarray, batch_size: int, device: str) -> Iterable[torch.Tensor]:
    """Float32 batches ``[batch, d_in]`` of the selected token rows."""
    for start in range(0, len(rows), batch_size):
        idx = rows[start : start + batch_size]
        if isinstance(acts, torch.Tensor):
            batch = acts[torch.as_tensor(idx)]
        else:
            batch = torch.as_tensor(np.asarray(acts[idx]))
        yield batch.to(device=device, dtype=torch.float32)


def activation_stats(
    saes: dict[int, Any], pairs: dict[tuple[int, int], PairResult], provider: Any, *,
    n_tokens: int, seed: int, batch_size: int, device: str, quiet: bool = True,
) -> ActivationStats:
    """Firing frequency and L0 of every seed, and the Pearson correlation over the token sample of
    each decoder-matched latent pair's activations (NaN when either latent is constant there)."""
    from tqdm.auto import tqdm

    acts = activation_matrix(provider)
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


def compute_cross_seed(
    saes: dict[int, Any], *, seed: int = 0, device: str = "cpu", activations: Any = None,
    n_tokens: int = DEFAULT_TOKEN_SAMPLE, batch_size: int = 1024, quiet: bool = True,
) -> CrossSeedResult:
    """Every cross-seed metric for ``{seed: SAE}`` (at least two SAEs with the same ``d_in``)."""
    if len(saes) < 2:
        raise TaskError(f"cross-seed needs at least 2 seeds, got {len(saes)}")
    d_ins = {s: sae.d_in for s, sae in saes.items()}
    if len(set(d_ins.values())) != 1:
        raise TaskError(f"all seeds must read the same activations; d_in differs: {d_ins}", field="sae.d_in")
    seeds = sorted(saes)
    pairs: dict[tuple[int, int], PairResult] = {}
    for a, b in itertools.combinations(seeds, 2):
        if saes[a].d_sae > saes[b].d_sae:  # the smaller dictionary is always side A of a stitch pair
            a, b = b, a
        pairs[(a, b)] = compare_pair(a, saes[a], b, saes[b], device=device)
    act = None
    if activations is not None:
        act = activation_stats(
            saes, pairs, activations, n_tokens=n_tokens, seed=seed, batch_size=batch_size, device=device, quiet=quiet
        )
        for key, pr in pairs.items():
            pr.activation_corr_a = act.correlation[key]

    metrics: list[MetricValue] = []
    d = next(iter(d_ins.values()))
    groups: dict[tuple[int, int], list[PairResult]] = {}
    for pr in pairs.values():
        groups.setdefault((pr.width_a, pr.width_b), []).append(pr)
    equal_groups = sorted(w for w in groups if w[0] == w[1])
    methods = sorted({p.decoder.method for p in pairs.values()} | {p.encoder.method for p in pairs.values()})
    uncertified = sum(1 for p in pairs.values() for mt in (p.decoder, p.encoder) if mt.certified is False)
    base_extra = {"matching": methods, "uncertified_matchings": uncertified, "threshold": SHARED_THRESHOLD}

    names_equal = {
        "decoder_mcc": "decoder_pw_mcc",
        "encoder_mcc": "encoder_pw_mcc",
        "shared_fraction": "shared_fraction",
        "shared_fraction_any_partner": "shared_fraction_any_partner",
        "shared_fraction_decoder": "shared_fraction_decoder",
        "mean_max_cosine": "mean_max_cosine",
        "activation_correlation": "activation_correlation",
    }
    names_stitch = {
        "decoder_mcc": "stitch_decoder_mcc",
        "encoder_mcc": "stitch_encoder_mcc",
        "shared_fraction": "stitch_shared_fraction",
        "shared_fraction_decoder": "stitch_shared_fraction_decoder",
        "max_cosine_large_to_small": "stitch_max_cosine_large_to_small",
        "max_cosine_small_to_large": "stitch_max_cosine_small_to_large",
        "activation_correlation": "stitch_activation_correlation",
    }
    if not equal_groups:
        metrics.append(MetricValue("decoder_pw_mcc", None, note="no two seeds share a width; see stitch_* metrics"))
    for widths, group in sorted(groups.items()):
        equal = widths[0] == widths[1]
        if equal:
            subset = "all" if len(equal_groups) == 1 else f"width={widths[0]}"
            names = names_equal
        else:
            subset = f"widths={widths[0]}x{widths[1]}"
            names = names_stitch
        per_latent = [p.per_latent() for p in group]
        extra = dict(base_extra, pairs=[p.label for p in group], widths=list(widths))
        for key, name in names.items():
            if key not in per_latent[0]:
                continue
            metrics.append(summarise(name, [pl[key] for pl in per_latent], seed=seed, subset=subset, extra=extra))
            if equal and len(group) > 1:
                for p, pl in zip(group, per_latent):
                    v = pl[key]
                    if np.isfinite(v).any():
                        metrics.append(MetricValue(name, float(np.nanmean(v)), n=int(np.isfinite(v).sum()),
                                                   subset=f"pair={p.label}", extra={"widths": list(widths)}))
        chance, how = chance_baseline(widths[0], widths[1], d, seed=seed, device=device)
        chance_name = "chance_mcc" if equal else "stitch_chance_mcc"
        if chance is None:
            metrics.append(MetricValue(chance_name, None, subset=subset, note=how))
        else:
            metrics.append(MetricValue(chance_name, chance, subset=subset, extra={"method": how, "shape": [widths[0], widths[1], d]}))

    dead = [float((sae.decoder_directions().norm(dim=1) == 0).float().mean()) for sae in (saes[s] for s in seeds)]
    metrics.append(MetricValue("dead_fraction", float(np.mean(dead)), std=float(np.std(dead, ddof=1)), n=len(dead),
                               extra={"what": "zero decoder rows; with activations see firing_frequency in latents"}))

    by_freq = None
    if act is not None:
        l0s = [act.l0[s] for s in seeds]
        metrics.append(MetricValue("l0", float(np.mean(l0s)), std=float(np.std(l0s, ddof=1)), n=act.n_tokens,
                                   extra={"per_seed": {str(s): act.l0[s] for s in seeds}, "tokens": act.n_tokens,
                                          "data_key": act.data_key}))
        never = [float((act.firing_frequency[s] == 0).mean()) for s in seeds]
        metrics.append(MetricValue("never_fired_fraction", float(np.mean(never)), std=float(np.std(never, ddof=1)),
                                   n=act.n_tokens, extra={"tokens": act.n_tokens}))
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
    )


def cosine_histogram(pairs: dict[tuple[int, int], PairResult]) -> pd.DataFrame:
    """Counts of decoder matched cosines in 0.05-wide bins, pooled over equal-width pairs."""
    values = [p.decoder.cosines for p in pairs.values() if p.equal_width] or [p.decoder.cosines for p in pairs.values()]
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
        if not p.equal_width:
            continue
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
    metadata = TaskMetadata(
        name="cross-seed",
        version="1",
        title="Cross-seed consistency",
        description=(
            "Do SAEs trained with different seeds learn the same latents? Decoder rows and encoder "
            "directions of every pair of seeds are matched one-to-one (optimal assignment on signed "
            "cosine); PW-MCC is the mean matched cosine averaged over pairs, the shared-latent fraction "
            "counts latents whose decoder and encoder both match the same partner with cosine > 0.7. "
            "Spread: std over seed pairs; CI: 95% bootstrap over latents. With activations for the "
            "submission's model and hook it also reports L0, the activation correlation of matched "
            "latents and consistency by firing frequency. Unequal widths appear as stitch_* metrics."
        ),
        metrics=(
            metric_spec("decoder_pw_mcc", "mean over seed pairs of the mean matched decoder cosine (Song et al.)", "higher", -1, 1, main=True),
            metric_spec("encoder_pw_mcc", "PW-MCC of encoder directions (separate assignment)", "higher", -1, 1),
            metric_spec("shared_fraction", "fraction of latents matched to the same partner by the decoder and the encoder assignment, both cos > 0.7", "higher", 0, 1),
            metric_spec("shared_fraction_any_partner", "Paulo & Belrose read literally: decoder and encoder matches both > 0.7, partners may differ (mean of both directions)", "higher", 0, 1),
            metric_spec("shared_fraction_decoder", "fraction of latents whose decoder match has cos > 0.7", "higher", 0, 1),
            metric_spec("mean_max_cosine", "mean over latents of the best decoder cosine with any latent of the other seed (not one-to-one)", "higher", -1, 1),
            metric_spec("chance_mcc", "MCC of two random unit dictionaries of the same shape", "none", -1, 1),
            metric_spec("activation_correlation", "mean Pearson correlation over a token sample of decoder-matched latents' activations", "higher", -1, 1),
            metric_spec("l0", "mean number of active latents per token on the activation sample (mean over seeds)", "none", 0, None, unit="latents"),
            metric_spec("never_fired_fraction", "fraction of latents that never fired on the activation sample (mean over seeds)", "lower", 0, 1),
            metric_spec("dead_fraction", "fraction of latents with an all-zero decoder row (mean over seeds)", "lower", 0, 1),
            metric_spec("matched_cosine_by_frequency", "mean matched decoder cosine of latents in a firing-frequency bin (subset)", "higher", -1, 1),
            metric_spec("stitch_decoder_mcc", "unequal widths: mean matched decoder cosine over the smaller SAE's latents", "higher", -1, 1),
            metric_spec("stitch_encoder_mcc", "unequal widths: the same for encoder directions", "higher", -1, 1),
            metric_spec("stitch_shared_fraction", "unequal widths: shared fraction of the smaller SAE's latents", "higher", 0, 1),
            metric_spec("stitch_shared_fraction_decoder", "unequal widths: decoder-only shared fraction", "higher", 0, 1),
            metric_spec("stitch_max_cosine_large_to_small", "unequal widths: mean best cosine of the larger SAE's latents with the smaller (low = novel latents, Leask et al.)", "none", -1, 1),
            metric_spec("stitch_max_cosine_small_to_large", "unequal widths: mean best cosine of the smaller SAE's latents with the larger", "higher", -1, 1),
            metric_spec("stitch_activation_correlation", "unequal widths: activation correlation of matched latents", "higher", -1, 1),
            metric_spec("stitch_chance_mcc", "unequal widths: chance MCC for the same shapes", "none", -1, 1),
        ),
        accepts=("checkpoints", "recipe"),
        min_seeds=2,
        needs_activations=False,
        uses_activations=True,
        citation=join(SONG_2025, PAULO_BELROSE_2025),
        references=("https://arxiv.org/abs/2505.20254", "https://arxiv.org/abs/2501.16615"),
    )

    def run(self, ctx: TaskContext) -> TaskOutput:
        saes = ctx.saes()
        provider = ctx.activations if ctx.activations is not None else ctx.options.get("activations")
        opts = ctx.options
        n_tokens = int(opts.get("cross_seed_tokens", opts.get("limit") or DEFAULT_TOKEN_SAMPLE))
        result = compute_cross_seed(
            saes, seed=ctx.seed, device=ctx.device, activations=provider, n_tokens=n_tokens,
            batch_size=int(opts.get("batch_size") or 1024), quiet=ctx.quiet,
        )
        artifacts = {"latents": result.latents, "matched_cosine_histogram": result.histogram}
        if result.by_frequency is not None:
            artifacts["consistency_by_frequency"] = result.by_frequency
        data_hash = str(getattr(provider, "key", "")) or None if provider is not None else None
        return TaskOutput(metrics=result.metrics, artifacts=artifacts, data_hash=data_hash)
