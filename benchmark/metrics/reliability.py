"""Reliability statistics: how much of a metric is noise, and can it tell architectures apart?

Pure functions of numbers (no results store, no pandas schema): the lens that applies them to
stored rows is :mod:`benchmark.metrics.reliability_lens`. After Chanin (2026), "Are Sparse
Autoencoder Benchmarks Reliable?" (arXiv 2605.18229). Every function states its formula.

Notation. ``z = Φ⁻¹(1 − α/2)`` (1.95996 at 95%). A *group* is one architecture (a submission of
the panel); a *replicate* is one training seed of it (or one seed pair for pairwise metrics); a
*task seed* reruns the task's own randomness on the same SAEs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import stats

Z95 = float(stats.norm.ppf(0.975))


def z_value(level: float = 0.95) -> float:
    """``Φ⁻¹((1 + level) / 2)``: the two-sided normal quantile (1.95996 for 0.95)."""
    return float(stats.norm.ppf((1.0 + level) / 2.0))


# --- one sample of repeated values -----------------------------------------------------------
@dataclass(frozen=True)
class Spread:
    """Mean, sample std (ddof = 1) and coefficient of variation of repeated values."""

    n: int
    mean: float
    std: float | None  # None for n < 2
    cv: float | None  # std / |mean|; None when std is None or mean == 0


def spread(values: Sequence[float]) -> Spread:
    """``n``, ``mean = Σx/n``, ``std = √(Σ(x − mean)² / (n − 1))`` and ``cv = std / |mean|``
    of finite ``values`` (NaN are dropped first; identical values give exactly 0)."""
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return Spread(0, math.nan, None, None)
    mean = float(arr.mean())
    # identical values have exactly zero spread (the mean's rounding must not invent noise)
    std = (0.0 if np.ptp(arr) == 0 else float(arr.std(ddof=1))) if n > 1 else None
    cv = std / abs(mean) if std is not None and mean != 0 else None
    return Spread(n, mean, std, cv)


def minimum_detectable_difference(sigma: float, level: float = 0.95) -> float:
    """Smallest difference two single runs can claim at ``level``: ``z · √2 · σ``.

    Two runs that each carry independent noise of standard deviation ``σ`` differ by noise of
    standard deviation ``√2·σ``; a two-sided normal test at ``level`` declares a difference only
    beyond ``z·√2·σ`` (``1.95996·√2·σ ≈ 2.772·σ`` at 95%)."""
    return z_value(level) * math.sqrt(2.0) * float(sigma)


def std_upper_bound(std: float, n: int, level: float = 0.95) -> float | None:
    """One-sided upper confidence bound of a normal standard deviation estimated from ``n`` values:
    ``s · √((n − 1) / χ²_{1−level, n−1})`` (how large the noise could still be with few seeds)."""
    if n < 2 or std is None:
        return None
    return float(std * math.sqrt((n - 1) / stats.chi2.ppf(1.0 - level, n - 1)))


def pooled_variance(variances: Sequence[float], counts: Sequence[int]) -> tuple[float | None, int]:
    """``(Σ (nᵢ − 1)·sᵢ²) / Σ (nᵢ − 1)`` over samples with ``nᵢ ≥ 2`` and a finite variance, and the
    pooled degrees of freedom ``Σ (nᵢ − 1)``; (None, 0) when none qualifies."""
    num, dof = 0.0, 0
    for var, n in zip(variances, counts):
        if var is None or n is None or n < 2 or not math.isfinite(var):
            continue
        num += (n - 1) * float(var)
        dof += n - 1
    return (num / dof, dof) if dof else (None, 0)


def mean_standard_error(std: float, n: int, *, pairwise_seeds: int | None = None) -> float:
    """Standard error of a mean over replicates.

    Independent replicates (training seeds): ``s / √n``.

    Seed pairs (``pairwise_seeds = S``): the values are the ``P = S(S−1)/2`` pairs of a U-statistic
    of order 2 over ``S`` seeds (e.g. PW-MCC), so pairs that share a seed are correlated. With
    ``ζ₂`` the variance of one pair value and ``ζ₁ = θ·ζ₂`` (``0 ≤ θ ≤ ½``) the covariance of two
    pairs sharing one seed, Hoeffding's decomposition gives
    ``Var(U) = 2/(S(S−1)) · (2(S−2)ζ₁ + ζ₂)``, while the sample variance over pairs has
    ``E[s²] = ζ₂ − 4ζ₁/(S+1)`` (each pair shares a seed with 2(S−2) of the other P−1 pairs). Their
    ratio grows with θ and is largest at θ = ½, so ``se² = s² · 2(S+1)/(S(S−1))`` is unbiased in that
    worst case and conservative otherwise (S = 3: se = 1.155·s; S = 5: 0.775·s; large S: s·√(2/S))."""
    if pairwise_seeds is not None:
        S = int(pairwise_seeds)
        if S < 2:
            raise ValueError("seed pairs need at least two seeds")
        return float(std) * math.sqrt(2.0 * (S + 1) / (S * (S - 1)))
    return float(std) / math.sqrt(n)


# --- variance components of a nested panel ---------------------------------------------------------
@dataclass(frozen=True)
class VarianceComponents:
    """Method-of-moments (ANOVA) variance components of ``y = μ + a_group + b_replicate + e``.

    ``between``: σ²_a (architectures); ``replicate``: σ²_b (training seeds within an architecture);
    ``residual``: σ²_e (task seeds within a replicate, i.e. evaluation noise). A level with no degrees
    of freedom is None (not measured). ``icc = σ²_a / (σ²_a + σ²_b + σ²_e)`` over measured levels."""

    groups: int
    replicates: int
    observations: int
    between: float | None
    replicate: float | None
    residual: float | None
    truncated: tuple[str, ...] = ()  # components whose moment estimate was negative (set to 0)
    mean_squares: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float | None:
        parts = [v for v in (self.between, self.replicate, self.residual) if v is not None]
        return float(sum(parts)) if parts else None

    def share(self, name: str) -> float | None:
        """Share of the total variance of one component (None when unmeasured or the total is 0)."""
        value = getattr(self, name)
        total = self.total
        if value is None or total is None or total <= 0:
            return None
        return float(value / total)

    @property
    def icc(self) -> float | None:
        """Intraclass correlation: the between-group share of the variance."""
        return self.share("between")


def nested_variance_components(values: Sequence[float], groups: Sequence[object],
                               replicates: Sequence[object] | None = None, *, truncate: bool = True) -> VarianceComponents:
    """Variance components of a two-level nested random-effects panel (unbalanced allowed).

    ``values[k]`` is one observation, ``groups[k]`` its group, ``replicates[k]`` its replicate
    within the group (None: every observation is its own replicate, a one-way layout). With
    ``nᵢⱼ`` observations in replicate ``j`` of group ``i``, ``nᵢ = Σⱼ nᵢⱼ``, ``N = Σ nᵢ``, ``g``
    groups and ``R`` replicates in all::

        SS_A = Σᵢ nᵢ (ȳᵢ − ȳ)²          df_A = g − 1
        SS_B = Σᵢⱼ nᵢⱼ (ȳᵢⱼ − ȳᵢ)²      df_B = R − g
        SS_E = Σ (y − ȳᵢⱼ)²              df_E = N − R
        E[MS_E] = σ²_e
        E[MS_B] = σ²_e + c₁ σ²_b,        c₁ = (N − Σᵢ Σⱼ nᵢⱼ² / nᵢ) / (R − g)
        E[MS_A] = σ²_e + c₂ σ²_b + c₃ σ²_a,
                  c₂ = (Σᵢ Σⱼ nᵢⱼ² / nᵢ − Σᵢⱼ nᵢⱼ² / N) / (g − 1),   c₃ = (N − Σᵢ nᵢ² / N) / (g − 1)

    (Searle, Casella & McCulloch 1992, §5; balanced: c₁ = c₂ = T, c₃ = S·T). The estimates solve
    these equations with the observed mean squares; a negative estimate is set to 0 and named in
    ``truncated`` (``truncate=False`` keeps the unbiased, possibly negative, moment estimates). A
    level with no degrees of freedom is not measured (None)."""
    y = np.asarray(list(values), dtype=np.float64)
    g_labels = list(groups)
    r_labels = list(replicates) if replicates is not None else list(range(len(y)))
    if not (len(y) == len(g_labels) == len(r_labels)):
        raise ValueError("values, groups and replicates must have one entry per observation")
    keep = np.isfinite(y)
    y = y[keep]
    g_labels = [g for g, k in zip(g_labels, keep) if k]
    r_labels = [r for r, k in zip(r_labels, keep) if k]
    cells: dict[object, dict[object, list[float]]] = {}
    for value, g, r in zip(y, g_labels, r_labels):
        cells.setdefault(g, {}).setdefault((g, r), []).append(float(value))
    n_groups = len(cells)
    n_reps = sum(len(reps) for reps in cells.values())
    N = len(y)
    if N == 0:
        return VarianceComponents(0, 0, 0, None, None, None)
    grand = float(y.mean())
    ss_a = ss_b = ss_e = 0.0
    sum_nij2_over_ni = sum_nij2 = sum_ni2 = 0.0
    for reps in cells.values():
        group_values = np.concatenate([np.asarray(v) for v in reps.values()])
        n_i = group_values.size
        mean_i = float(group_values.mean())
        ss_a += n_i * (mean_i - grand) ** 2
        sum_ni2 += n_i**2
        for obs in reps.values():
            arr = np.asarray(obs)
            n_ij = arr.size
            mean_ij = float(arr.mean())
            ss_b += n_ij * (mean_ij - mean_i) ** 2
            ss_e += float(((arr - mean_ij) ** 2).sum())
            sum_nij2_over_ni += n_ij**2 / n_i
            sum_nij2 += n_ij**2
    df_a, df_b, df_e = n_groups - 1, n_reps - n_groups, N - n_reps
    ms = {}
    if df_a:
        ms["between"] = ss_a / df_a
    if df_b:
        ms["replicate"] = ss_b / df_b
    if df_e:
        ms["residual"] = ss_e / df_e
    truncated = []
    residual = ms.get("residual")
    replicate = None
    if df_b:
        c1 = (N - sum_nij2_over_ni) / df_b
        replicate = (ms["replicate"] - (residual or 0.0)) / c1
        if replicate < 0:
            truncated.append("replicate")
            replicate = 0.0 if truncate else replicate
    between = None
    if df_a:
        c2 = (sum_nij2_over_ni - sum_nij2 / N) / df_a
        c3 = (N - sum_ni2 / N) / df_a
        between = (ms["between"] - (residual or 0.0) - c2 * (replicate or 0.0)) / c3
        if between < 0:
            truncated.append("between")
            between = 0.0 if truncate else between
    return VarianceComponents(n_groups, n_reps, N, between, replicate, residual, tuple(truncated), ms)


# --- tests between groups ----------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupEstimate:
    """A group's mean with its standard error and the degrees of freedom of that error."""

    label: str
    mean: float
    se: float
    df: float
    n: int


def welch_anova(estimates: Sequence[GroupEstimate]) -> tuple[float, float, float, float]:
    """Welch's heteroscedastic one-way ANOVA from group means and standard errors: ``(F, df₁, df₂, p)``.

    ``wᵢ = 1/seᵢ²``, ``m = Σ wᵢ x̄ᵢ / Σ wᵢ``, ``A = Σ wᵢ (x̄ᵢ − m)² / (k − 1)``,
    ``λ = Σ (1 − wᵢ/Σw)² / dfᵢ``, ``F = A / (1 + 2λ(k − 2)/(k² − 1))``, ``df₁ = k − 1``,
    ``df₂ = (k² − 1) / (3λ)`` (Welch 1951). With ``seᵢ = sᵢ/√nᵢ`` and ``dfᵢ = nᵢ − 1`` this is the
    textbook Welch test; a zero standard error is floored at 1e-12 of the data's scale (an exact
    group: any difference from it is significant)."""
    k = len(estimates)
    if k < 2:
        return math.nan, math.nan, math.nan, math.nan
    means = np.array([e.mean for e in estimates], dtype=np.float64)
    scale = max(1.0, float(np.abs(means).max()))
    se2 = np.maximum(np.array([e.se for e in estimates], dtype=np.float64) ** 2, (1e-12 * scale) ** 2)
    dfs = np.array([e.df for e in estimates], dtype=np.float64)
    w = 1.0 / se2
    m = float((w * means).sum() / w.sum())
    a = float((w * (means - m) ** 2).sum() / (k - 1))
    lam = float((((1 - w / w.sum()) ** 2) / dfs).sum())
    f = a / (1 + 2 * lam * (k - 2) / (k**2 - 1))
    df2 = (k**2 - 1) / (3 * lam)
    p = float(stats.f.sf(f, k - 1, df2))
    return float(f), float(k - 1), float(df2), p


def welch_t(a: GroupEstimate, b: GroupEstimate) -> tuple[float, float, float]:
    """Welch's two-sample t-test from means and standard errors: ``(t, df, two-sided p)``.

    ``t = (x̄_a − x̄_b) / √(se_a² + se_b²)``, Welch–Satterthwaite
    ``df = (se_a² + se_b²)² / (se_a⁴/df_a + se_b⁴/df_b)``. Both errors 0: the difference is exact
    (``p = 0`` when the means differ, 1 when they are equal)."""
    va, vb = a.se**2, b.se**2
    diff = a.mean - b.mean
    if va + vb == 0:
        return (math.copysign(math.inf, diff) if diff else 0.0), math.inf, (0.0 if diff else 1.0)
    t = diff / math.sqrt(va + vb)
    terms = (va**2 / a.df if va else 0.0) + (vb**2 / b.df if vb else 0.0)
    df = (va + vb) ** 2 / terms
    return float(t), float(df), float(2 * stats.t.sf(abs(t), df))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: sort ``p₍₁₎ ≤ … ≤ p₍ₘ₎``, ``p̃₍ᵢ₎ = maxⱼ≤ᵢ min(1, (m − j + 1)·p₍ⱼ₎)``.
    Rejecting ``p̃ < α`` controls the family-wise error at ``α`` under any dependence (Holm 1979)."""
    p = np.asarray(list(pvalues), dtype=np.float64)
    m = p.size
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


@dataclass(frozen=True)
class PairTest:
    a: str
    b: str
    diff: float  # mean_a − mean_b
    se: float
    t: float
    df: float
    p: float
    p_holm: float
    differs: bool  # p_holm < alpha


def pair_matrix(estimates: Sequence[GroupEstimate], alpha: float = 0.05) -> list[PairTest]:
    """Every unordered pair of groups (in the given order) tested with :func:`welch_t`, the
    p-values Holm-adjusted over all pairs (:func:`holm`); a pair *differs* when ``p_holm < alpha``."""
    pairs = [(estimates[i], estimates[j]) for i in range(len(estimates)) for j in range(i + 1, len(estimates))]
    raw = [welch_t(a, b) for a, b in pairs]
    adjusted = holm([r[2] for r in raw])
    out = []
    for (a, b), (t, df, p), ph in zip(pairs, raw, adjusted):
        out.append(PairTest(a.label, b.label, a.mean - b.mean, math.sqrt(a.se**2 + b.se**2), t, df, p, ph, ph < alpha))
    return out


# --- rankings ------------------------------------------------------------------------------------------
def rank_with_ties(values: Sequence[float], direction: str, mdd: float) -> list[int]:
    """Rank under noise: ``rankᵢ = 1 + #{j : vⱼ is better than vᵢ by more than mdd}``.

    "Better" is larger for ``direction="higher"`` and smaller for ``"lower"``. Submissions whose
    differences stay within ``mdd`` share a rank; a submission is ranked below another only when the
    other beats it beyond noise. ``mdd = 0`` gives the ordinary competition ranking ("1224")."""
    if direction not in ("higher", "lower"):
        raise ValueError(f"no ranking for direction {direction!r}")
    v = np.asarray(list(values), dtype=np.float64)
    sign = 1.0 if direction == "higher" else -1.0
    better = sign * (v[None, :] - v[:, None]) > mdd  # better[i, j]: j beats i beyond mdd
    return (1 + better.sum(axis=1)).astype(int).tolist()


def kendall_tau_pairs(table: dict[object, dict[str, float]], min_items: int = 3) -> list[tuple[object, object, float, int]]:
    """Kendall's τ-b between the rankings of every two task seeds.

    ``table[seed][submission] = value``. For each pair of seeds the submissions present at both are
    compared with ``scipy.stats.kendalltau`` (τ-b, which corrects for ties:
    ``τ_b = (C − D) / √((C + D + T_x)(C + D + T_y))``). Pairs with fewer than ``min_items`` common
    submissions, or with τ undefined (all values tied), are left out. Returns ``(seed_a, seed_b, τ, n)``."""
    seeds = sorted(table)
    out = []
    for i, sa in enumerate(seeds):
        for sb in seeds[i + 1:]:
            common = sorted(set(table[sa]) & set(table[sb]))
            if len(common) < min_items:
                continue
            x = [table[sa][c] for c in common]
            y = [table[sb][c] for c in common]
            tau = stats.kendalltau(x, y).statistic
            if tau is None or not math.isfinite(tau):
                continue
            out.append((sa, sb, float(tau), len(common)))
    return out


# --- validity ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Correlation:
    n: int
    pearson: float | None
    pearson_p: float | None
    spearman: float | None
    spearman_p: float | None
    note: str = ""


def correlation(x: Sequence[float], y: Sequence[float], min_points: int = 3) -> Correlation:
    """Pearson ``r = cov(x, y)/(σ_x σ_y)`` and Spearman ``ρ`` (Pearson of ranks) with two-sided
    p-values (scipy), over pairs where both are finite; None with a note for fewer than
    ``min_points`` pairs or a constant variable."""
    xa = np.asarray(list(x), dtype=np.float64)
    ya = np.asarray(list(y), dtype=np.float64)
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    n = int(xa.size)
    if n < min_points:
        return Correlation(n, None, None, None, None, f"fewer than {min_points} points")
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return Correlation(n, None, None, None, None, "a variable is constant")
    pr = stats.pearsonr(xa, ya)
    sr = stats.spearmanr(xa, ya)
    return Correlation(n, float(pr[0]), float(pr[1]), float(sr[0]), float(sr[1]))


__all__ = ["Correlation", "GroupEstimate", "PairTest", "Spread", "VarianceComponents", "Z95", "correlation", "holm",
           "kendall_tau_pairs", "mean_standard_error", "minimum_detectable_difference", "nested_variance_components",
           "pair_matrix", "pooled_variance", "rank_with_ties", "spread", "std_upper_bound", "welch_anova", "welch_t",
           "z_value"]
