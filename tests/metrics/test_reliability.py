"""Reliability statistics against closed forms, simulations with known answers, and scipy/statsmodels."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from benchmark.metrics import reliability as rel

statsmodels = pytest.importorskip("statsmodels")


# --- evaluation noise: CV, MDD, the bound on σ ---------------------------------------------------------------
def test_spread_matches_numpy_and_recovers_known_noise():
    rng = np.random.default_rng(0)
    values = 0.5 + 0.02 * rng.standard_normal(4000)
    sp = rel.spread(values)
    assert sp.n == 4000 and sp.mean == pytest.approx(values.mean())
    assert sp.std == pytest.approx(values.std(ddof=1))
    assert sp.std == pytest.approx(0.02, rel=0.05)
    assert sp.cv == pytest.approx(0.02 / 0.5, rel=0.05)
    assert rel.spread([1.0]).std is None and rel.spread([0.0, 0.0]).cv is None
    assert rel.spread([1.0, np.nan, 3.0]).n == 2


def test_mdd_is_the_95_percent_quantile_of_the_difference_of_two_runs():
    sigma = 0.013
    assert rel.minimum_detectable_difference(sigma) == pytest.approx(1.959964 * math.sqrt(2) * sigma, rel=1e-6)
    assert rel.Z95 == pytest.approx(stats.norm.ppf(0.975))
    # simulation: two independent runs of one metric with noise σ differ by more than the MDD 5% of the time
    rng = np.random.default_rng(1)
    diffs = np.abs(sigma * rng.standard_normal(200_000) - sigma * rng.standard_normal(200_000))
    assert np.mean(diffs > rel.minimum_detectable_difference(sigma)) == pytest.approx(0.05, abs=0.003)
    assert np.quantile(diffs, 0.99) == pytest.approx(rel.minimum_detectable_difference(sigma, level=0.99), rel=0.02)


def test_std_upper_bound_covers_the_true_sigma_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    sigma, n, trials = 0.1, 5, 20_000
    samples = sigma * rng.standard_normal((trials, n))
    s = samples.std(axis=1, ddof=1)
    upper = np.array([rel.std_upper_bound(v, n) for v in s])
    assert np.mean(sigma <= upper) == pytest.approx(0.95, abs=0.006)
    assert rel.std_upper_bound(0.1, 1) is None


def test_pooled_variance_is_the_within_mean_square():
    rng = np.random.default_rng(3)
    samples = [rng.standard_normal(k) for k in (3, 5, 8)]
    var, dof = rel.pooled_variance([x.var(ddof=1) for x in samples], [len(x) for x in samples])
    within = sum(((x - x.mean()) ** 2).sum() for x in samples) / (sum(map(len, samples)) - len(samples))
    assert var == pytest.approx(within) and dof == 13
    assert rel.pooled_variance([None, 1.0], [5, 1]) == (None, 0)


# --- the standard error of a mean over seed pairs (a U-statistic) ---------------------------------------------
@pytest.mark.parametrize("seeds", [3, 5])
def test_pair_standard_error_is_exact_in_the_worst_case_and_conservative_otherwise(seeds):
    """h(a, b) = X_a + X_b has ζ₁ = ζ₂/2 (the worst case): E[se²] must equal Var(U); with independent
    pair values (ζ₁ = 0) it must exceed it."""
    rng = np.random.default_rng(4)
    trials = 40_000
    pairs = list(itertools.combinations(range(seeds), 2))
    x = rng.standard_normal((trials, seeds))
    h = np.stack([x[:, a] + x[:, b] for a, b in pairs], axis=1)
    u = h.mean(axis=1)
    se2 = np.array([rel.mean_standard_error(s, len(pairs), pairwise_seeds=seeds) ** 2 for s in h.std(axis=1, ddof=1)])
    assert se2.mean() == pytest.approx(u.var(), rel=0.03)
    assert u.var() == pytest.approx(4 / seeds, rel=0.03)  # closed form: Var(2/S·ΣX) = 4/S
    independent = rng.standard_normal((trials, len(pairs)))
    se2_ind = np.array([rel.mean_standard_error(s, len(pairs), pairwise_seeds=seeds) ** 2
                        for s in independent.std(axis=1, ddof=1)])
    assert se2_ind.mean() > independent.mean(axis=1).var() * 1.2
    assert rel.mean_standard_error(2.0, 4) == pytest.approx(1.0)


# --- variance components -------------------------------------------------------------------------------------
def _panel(rng, arch_means, sigma_seed, sigma_eval, seeds, task_seeds):
    values, groups, reps = [], [], []
    for g, mu in enumerate(arch_means):
        for s in range(seeds):
            b = sigma_seed * rng.standard_normal()
            for t in range(task_seeds):
                values.append(mu + b + sigma_eval * rng.standard_normal())
                groups.append(g)
                reps.append(s)
    return np.array(values), groups, reps


def test_variance_components_match_statsmodels_mixedlm_on_a_balanced_panel():
    import warnings

    import pandas as pd
    import statsmodels.formula.api as smf
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    rng = np.random.default_rng(5)
    y, g, r = _panel(rng, rng.normal(0, 0.05, 8), 0.02, 0.01, seeds=4, task_seeds=3)
    comps = rel.nested_variance_components(y, g, r)
    assert comps.truncated == ()
    frame = pd.DataFrame({"y": y, "g": g, "r": [f"{a}-{b}" for a, b in zip(g, r)]})
    model = smf.mixedlm("y ~ 1", frame, groups="g", re_formula="1", vc_formula={"r": "0 + C(r)"})
    with warnings.catch_warnings():  # statsmodels' boundary notice; the estimates below are what is compared
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = model.fit(reml=True, method=["lbfgs"])
    # balanced, all estimates positive: REML equals the ANOVA (moment) estimates
    assert comps.between == pytest.approx(float(fit.cov_re.iloc[0, 0]), rel=2e-3)
    assert comps.replicate == pytest.approx(float(fit.vcomp[0]), rel=2e-3)
    assert comps.residual == pytest.approx(float(fit.scale), rel=2e-3)


def test_variance_components_are_unbiased_on_an_unbalanced_panel():
    """Moment estimates (no truncation) average to the true components over many simulated panels."""
    rng = np.random.default_rng(6)
    true_a, true_b, true_e = 0.04, 0.01, 0.0025
    layout = [(3, [2, 3, 1]), (2, [4, 2]), (4, [1, 1, 2, 3]), (2, [3, 3]), (3, [2, 2, 5])]  # (replicates, task seeds each)
    estimates = []
    for _ in range(3000):
        values, groups, reps = [], [], []
        for gi, (n_rep, counts) in enumerate(layout):
            a = math.sqrt(true_a) * rng.standard_normal()
            for ri in range(n_rep):
                b = math.sqrt(true_b) * rng.standard_normal()
                for _ in range(counts[ri]):
                    values.append(a + b + math.sqrt(true_e) * rng.standard_normal())
                    groups.append(gi)
                    reps.append(ri)
        c = rel.nested_variance_components(values, groups, reps, truncate=False)
        estimates.append((c.between, c.replicate, c.residual))
    mean = np.mean(estimates, axis=0)
    se = np.std(estimates, axis=0, ddof=1) / math.sqrt(len(estimates))
    for got, want, err in zip(mean, (true_a, true_b, true_e), se):
        assert abs(got - want) < 4 * err, (got, want, err)


def test_icc_recovers_the_between_share_of_a_large_panel():
    rng = np.random.default_rng(7)
    sb, se = 0.02, 0.01
    arch = rng.normal(0, 0.03, 200)
    y, g, r = _panel(rng, arch, sb, se, seeds=5, task_seeds=4)
    comps = rel.nested_variance_components(y, g, r)
    sa2 = arch.var(ddof=1)  # the panel's own architecture effects (what the estimator targets)
    total = sa2 + sb**2 + se**2
    assert comps.icc == pytest.approx(sa2 / total, abs=0.03)
    assert comps.share("replicate") == pytest.approx(sb**2 / total, abs=0.03)
    assert comps.share("residual") == pytest.approx(se**2 / total, abs=0.01)
    one_way = rel.nested_variance_components(y, g, [0] * len(y))  # no replicate level: within = everything else
    assert one_way.replicate is None and one_way.residual == pytest.approx(np.mean([np.var(y[np.array(g) == k], ddof=1) for k in range(200)]))


# --- tests between groups ------------------------------------------------------------------------------------
def _estimates(samples):
    return [rel.GroupEstimate(str(i), float(np.mean(x)), float(np.std(x, ddof=1) / math.sqrt(len(x))), len(x) - 1, len(x))
            for i, x in enumerate(samples)]


def test_welch_anova_matches_statsmodels():
    from statsmodels.stats.oneway import anova_oneway

    rng = np.random.default_rng(8)
    samples = [rng.normal(0.30, 0.01, 3), rng.normal(0.31, 0.03, 5), rng.normal(0.35, 0.02, 4), rng.normal(0.30, 0.005, 3)]
    f, df1, df2, p = rel.welch_anova(_estimates(samples))
    ref = anova_oneway(samples, use_var="unequal")
    assert f == pytest.approx(ref.statistic, rel=1e-9)
    assert df2 == pytest.approx(ref.df[1], rel=1e-9) and df1 == ref.df[0]
    assert p == pytest.approx(ref.pvalue, rel=1e-7)


def test_welch_t_matches_scipy_and_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(9)
    a, b = rng.normal(0.3, 0.02, 4), rng.normal(0.33, 0.05, 6)
    t, df, p = rel.welch_t(*_estimates([a, b]))
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert t == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue) and df == pytest.approx(ref.df)
    raw = [0.01, 0.04, 0.03, 0.005, 0.2, 0.04]
    assert rel.holm(raw) == pytest.approx(list(multipletests(raw, method="holm")[1]))
    assert rel.welch_t(rel.GroupEstimate("a", 1.0, 0.0, 2, 3), rel.GroupEstimate("b", 1.0, 0.0, 2, 3))[2] == 1.0
    assert rel.welch_t(rel.GroupEstimate("a", 1.0, 0.0, 2, 3), rel.GroupEstimate("b", 0.9, 0.0, 2, 3))[2] == 0.0


def test_pair_matrix_separates_what_differs_and_only_that():
    """Two architectures with the same effect and one 10 noise-σ away: with 5 seeds each, the matrix
    flags the far one against both and (over 200 panels) the equal pair in ≲ 5% of panels."""
    rng = np.random.default_rng(10)
    flagged_equal = 0
    for _ in range(200):
        samples = [rng.normal(0.30, 0.01, 5), rng.normal(0.30, 0.01, 5), rng.normal(0.40, 0.01, 5)]
        tests = {(t.a, t.b): t for t in rel.pair_matrix(_estimates(samples))}
        assert tests[("0", "2")].differs and tests[("1", "2")].differs
        flagged_equal += tests[("0", "1")].differs
    assert flagged_equal <= 0.05 * 200 + 2 * math.sqrt(0.05 * 0.95 * 200)


# --- rankings -------------------------------------------------------------------------------------------------
def test_rank_with_ties():
    assert rel.rank_with_ties([0.30, 0.29, 0.28], "higher", 0.015) == [1, 1, 2]
    assert rel.rank_with_ties([0.30, 0.29, 0.28], "lower", 0.015) == [2, 1, 1]
    values = np.random.default_rng(11).random(12)
    values[3] = values[7]
    assert rel.rank_with_ties(values, "higher", 0.0) == stats.rankdata(-values, method="min").astype(int).tolist()
    assert rel.rank_with_ties(values, "higher", 10.0) == [1] * 12
    with pytest.raises(ValueError):
        rel.rank_with_ties(values, "none", 0.1)


def test_kendall_tau_between_task_seeds_matches_scipy_and_the_arcsine_law():
    """Scores μᵢ + εᵢₜ with μ ~ N(0, σ_a²), ε ~ N(0, σ_e²): two task seeds' scores are bivariate normal with
    ρ = σ_a²/(σ_a² + σ_e²), and E[τ] = (2/π)·arcsin(ρ) (Greiner's relation)."""
    rng = np.random.default_rng(12)
    sa, se = 1.0, 0.6
    mu = rng.normal(0, sa, 400)
    table = {t: {f"s{i}": float(m + rng.normal(0, se)) for i, m in enumerate(mu)} for t in range(6)}
    pairs = rel.kendall_tau_pairs(table)
    assert len(pairs) == 15 and all(n == 400 for *_, n in pairs)
    x = [table[0][f"s{i}"] for i in range(400)]
    y = [table[1][f"s{i}"] for i in range(400)]
    assert pairs[0][2] == pytest.approx(stats.kendalltau(x, y).statistic)
    rho = sa**2 / (sa**2 + se**2)
    assert np.mean([p[2] for p in pairs]) == pytest.approx(2 / math.pi * math.asin(rho), abs=0.03)
    assert rel.kendall_tau_pairs({0: {"a": 1.0, "b": 2.0}, 1: {"a": 1.0, "b": 2.0}}) == []  # fewer than 3 submissions


def test_correlation_matches_scipy():
    rng = np.random.default_rng(13)
    x = rng.random(9)
    y = x + 0.3 * rng.random(9)
    c = rel.correlation(x, y)
    assert c.pearson == pytest.approx(stats.pearsonr(x, y)[0]) and c.spearman == pytest.approx(stats.spearmanr(x, y)[0])
    assert c.spearman_p == pytest.approx(stats.spearmanr(x, y)[1])
    assert rel.correlation([1, 2], [3, 4]).pearson is None
    assert "constant" in rel.correlation([1, 1, 1], [1, 2, 3]).note
