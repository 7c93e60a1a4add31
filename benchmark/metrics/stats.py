"""Summary statistics shared by the tasks: mean and spread, bootstrap intervals, rank correlation.

Every task that reports "mean ± std over seeds (or pairs)" or a bootstrap interval calls these, so
the definitions (sample std with ddof=1, percentile bootstrap) are written once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmark.results import MetricValue

BOOTSTRAP_REPS = 1000


def mean_std(values) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None for a single value) of ``values``."""
    arr = np.asarray(list(values), dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


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


def pair_summary(
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


__all__ = ["BOOTSTRAP_REPS", "bootstrap_mean_of_means", "mean_std", "pair_summary"]
