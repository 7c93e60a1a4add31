"""The reliability lens on constructed panels: known noise and known separation come back out."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmark.metrics.reliability_lens import ReliabilityThresholds, reliability_lens, split_subset

Z = stats.norm.ppf(0.975)


def panel_rows(arch_means: dict[str, float], *, seeds: int, task_seeds: int, sigma_seed: float, sigma_eval: float,
               metric: str = "m", direction: str = "higher", subset: str = "all", rng=None, pairs: bool = False):
    """Rows in the results schema of a simulated panel: per-seed values μ_a + b_as + e_ast and the
    aggregate (their mean) at every task seed; with ``pairs`` the replicates are seed pairs instead."""
    rng = rng or np.random.default_rng(0)
    rows = []
    prefix = "" if subset == "all" else subset + ","
    for sub, mu in arch_means.items():
        effects = sigma_seed * rng.standard_normal(seeds)
        for t in range(task_seeds):
            unit = f"{abs(hash((sub, t))) % 16**16:016x}-{0:016x}"
            common = {"submission": sub, "architecture": sub.split("/")[1], "metric": metric, "task_seed": t,
                      "direction": direction, "unit_key": unit, "spec": json.dumps({"seed": t, "task": "x"}), "task": "x"}
            if pairs:
                reps = {f"{a}-{b}": mu + (effects[a] + effects[b]) / 2 + sigma_eval * rng.standard_normal()
                        for a, b in itertools.combinations(range(seeds), 2)}
            else:
                reps = {str(s): mu + effects[s] + sigma_eval * rng.standard_normal() for s in range(seeds)}
            kind = "pair" if pairs else "seed"
            for label, value in reps.items():
                rows.append({**common, "subset": f"{prefix}{kind}={label}", "value": value})
            rows.append({**common, "subset": subset, "value": float(np.mean(list(reps.values())))})
    return pd.DataFrame(rows)


ARCHS = {"p/topk": 0.30, "p/relu": 0.30, "p/jump": 0.34, "p/gated": 0.45}


@pytest.fixture(scope="module")
def big_panel():
    return panel_rows(ARCHS, seeds=5, task_seeds=30, sigma_seed=0.01, sigma_eval=0.005, rng=np.random.default_rng(1))


def test_split_subset():
    assert split_subset("all") == ("all", None, None)
    assert split_subset("seed=3") == ("all", "seed", "3")
    assert split_subset("preset=toy,pair=42-43") == ("preset=toy", "pair", "42-43")
    assert split_subset("preset=toy") == ("preset=toy", None, None)


def test_known_noise_comes_back(big_panel):
    lens = reliability_lens(big_panel, ["m"])
    verdict = lens.verdict.iloc[0]
    # evaluation noise of the aggregate: the mean of 5 per-seed values, each with its own σ_eval
    assert verdict["eval_std"] == pytest.approx(0.005 / math.sqrt(5), rel=0.2)
    assert verdict["eval_cv"] == pytest.approx(verdict["eval_std"] / np.mean(list(ARCHS.values())), rel=0.02)
    assert verdict["eval_mdd"] == pytest.approx(Z * math.sqrt(2) * verdict["eval_std"])
    # the same numbers computed independently from the rows
    agg = big_panel[big_panel.subset == "all"]
    per_sub_var = agg.groupby("submission")["value"].var(ddof=1)
    assert verdict["eval_std"] == pytest.approx(math.sqrt(per_sub_var.mean()))  # equal task-seed counts: pooled = mean
    seeds = big_panel[big_panel.subset.str.startswith("seed=")]
    seed_var = seeds.groupby(["submission", "task_seed"])["value"].var(ddof=1).groupby("submission").mean()
    assert verdict["seed_se"] == pytest.approx(math.sqrt((seed_var / 5).mean()))
    assert verdict["mdd"] == pytest.approx(Z * math.sqrt(2) * math.sqrt(per_sub_var.mean() + (seed_var / 5).mean()))
    # against the simulation's parameters: se² of a 5-seed mean = (σ_seed² + σ_eval²)/5
    assert verdict["seed_se"] == pytest.approx(math.sqrt((0.01**2 + 0.005**2) / 5), rel=0.5)
    noise = lens.noise.set_index("submission")
    assert set(noise.index) == set(ARCHS) and (noise["task_seeds"] == 30).all()
    assert noise.loc["p/gated", "eval_std"] == pytest.approx(agg[agg.submission == "p/gated"]["value"].std(ddof=1))


def test_known_separation_comes_back(big_panel):
    lens = reliability_lens(big_panel, ["m"])
    verdict = lens.verdict.iloc[0]
    means = np.array(list(ARCHS.values()))
    # variance components: the architecture effects' variance, seed and evaluation noise of per-seed values
    assert verdict["var_between"] == pytest.approx(means.var(ddof=1), rel=0.15)
    assert verdict["var_eval"] == pytest.approx(0.005**2, rel=0.1)
    assert verdict["share_between"] > 0.9 and verdict["discriminability"] == "pass"
    pairs = {(r.a, r.b): r for r in lens.pairs.itertuples()}
    assert len(pairs) == 6 and verdict["pairs_differ"] == 5
    assert not pairs[("p/relu", "p/topk")].differs  # equal architectures stay within noise
    assert all(r.differs for k, r in pairs.items() if k != ("p/relu", "p/topk"))
    assert (lens.pairs["evidence"] == "training seeds").all()
    # rank stability: Kendall τ-b between every two of the 30 task seeds, averaged
    agg = big_panel[big_panel.subset == "all"].pivot(index="submission", columns="task_seed", values="value")
    taus = [stats.kendalltau(agg[a], agg[b]).statistic for a, b in itertools.combinations(agg.columns, 2)]
    assert verdict["tau_mean"] == pytest.approx(np.mean(taus)) and verdict["tau_pairs"] == len(taus)


def test_a_metric_that_cannot_separate_architectures_fails(big_panel):
    same = panel_rows({k: 0.3 for k in ARCHS}, seeds=5, task_seeds=10, sigma_seed=0.01, sigma_eval=0.005,
                      rng=np.random.default_rng(2))
    lens = reliability_lens(same, ["m"])
    verdict = lens.verdict.iloc[0]
    assert verdict["discriminability"] == "fail" and verdict["verdict"] == "fails"
    assert verdict["share_between"] < 0.5 and "between-architecture share" in verdict["reasons"]
    assert verdict["pairs_differ"] == 0


def test_rank_groups_follow_the_stored_mdd(big_panel):
    lens = reliability_lens(big_panel, ["m"])
    ranks = lens.ranks.set_index("submission")
    mdd = lens.verdict.iloc[0]["mdd"]
    assert (ranks["mdd"] == mdd).all()
    shown = big_panel[(big_panel.subset == "all") & (big_panel.task_seed == 0)].set_index("submission")["value"]
    for name, row in ranks.iterrows():
        better = sum(1 for other, v in shown.items() if v - shown[name] > mdd)
        assert row["rank"] == 1 + better
        assert json.loads(row["tied_with"]) == sorted(o for o, v in shown.items() if o != name and abs(v - shown[name]) <= mdd)
    assert ranks.loc["p/gated", "rank"] == 1
    assert ranks.loc["p/topk", "rank"] == ranks.loc["p/relu", "rank"]  # equal architectures share a rank
    assert "within noise of p/relu" in ranks.loc["p/topk", "reason"]


def test_validity_against_ground_truth():
    rng = np.random.default_rng(3)
    truth = {f"p/a{i}": v for i, v in enumerate(np.linspace(0.2, 0.9, 6))}
    proxy = {k: v + 0.02 * rng.standard_normal() for k, v in truth.items()}
    rows = pd.concat([
        panel_rows(truth, seeds=3, task_seeds=5, sigma_seed=0.01, sigma_eval=0.0, metric="gt", rng=rng),
        panel_rows(proxy, seeds=3, task_seeds=5, sigma_seed=0.01, sigma_eval=0.0, metric="pw", rng=rng),
        panel_rows({k: -v for k, v in truth.items()}, seeds=3, task_seeds=5, sigma_seed=0.01, sigma_eval=0.0,
                   metric="bad", rng=rng),
    ])
    lens = reliability_lens(rows, ["gt", "pw", "bad"], validity={"pw": "gt", "bad": "gt"}, ground_truth=("gt",))
    v = lens.verdict.set_index("metric")
    shown = rows[(rows.subset == "all") & (rows.task_seed == 0)].pivot(index="submission", columns="metric", values="value")
    assert v.loc["pw", "validity_spearman"] == pytest.approx(stats.spearmanr(shown["pw"], shown["gt"])[0])
    assert v.loc["pw", "validity_pearson"] == pytest.approx(stats.pearsonr(shown["pw"], shown["gt"])[0])
    assert v.loc["pw", "validity"] == "pass" and v.loc["bad", "validity"] == "fail" and v.loc["gt", "validity"] == "ground truth"
    few = reliability_lens(rows[rows.submission.isin(list(truth)[:4])], ["pw"], validity={"pw": "gt"})
    assert few.verdict.iloc[0]["validity"] == "not measured" and few.verdict.iloc[0]["validity_n"] == 4
    # deterministic metric: zero evaluation noise, CV 0, and the noise is all training-seed noise
    assert v.loc["gt", "eval_std"] == 0 and v.loc["gt", "eval_cv"] == 0 and v.loc["gt", "seed_se"] > 0


def test_seed_pairs_use_the_u_statistic_bound_and_direction_none_is_not_ranked():
    rows = panel_rows({"p/a": 0.3, "p/b": 0.5, "p/c": 0.7}, seeds=4, task_seeds=5, sigma_seed=0.02, sigma_eval=0.001,
                      pairs=True, rng=np.random.default_rng(4))
    lens = reliability_lens(rows, ["m"])
    noise = lens.noise.set_index("submission")
    assert (noise["replicate_kind"] == "pair").all() and (noise["replicates"] == 6).all()
    assert noise.loc["p/a", "seed_se"] == pytest.approx(noise.loc["p/a", "seed_std"] * math.sqrt(2 * 5 / (4 * 3)))
    assert lens.verdict.iloc[0]["replicate_kind"] == "seed pairs"
    chance = reliability_lens(rows.assign(direction="none"), ["m"])
    assert chance.ranks.empty and chance.verdict.iloc[0]["discriminability"] == "n/a"
    assert chance.verdict.iloc[0]["verdict"] == "reference"


def test_few_task_seeds_is_incomplete_and_the_shown_unit_is_respected():
    rows = panel_rows({"p/a": 0.3, "p/b": 0.5, "p/c": 0.7}, seeds=3, task_seeds=2, sigma_seed=0.01, sigma_eval=0.01,
                      rng=np.random.default_rng(5))
    lens = reliability_lens(rows, ["m"], thresholds=ReliabilityThresholds(min_task_seeds=5))
    verdict = lens.verdict.iloc[0]
    assert verdict["verdict"] == "incomplete" and "2 task seed(s)" in verdict["reasons"]
    marked = rows.assign(shown_unit=rows.task_seed == 1)
    ranks = reliability_lens(marked, ["m"]).ranks
    assert (ranks["task_seed"] == 1).all()
    one_seed = reliability_lens(rows[rows.task_seed == 0], ["m"])
    assert one_seed.verdict.iloc[0]["eval_std"] is pd.NA and one_seed.verdict.iloc[0]["seed_se"] > 0
    assert reliability_lens(rows.iloc[0:0], ["m"]).verdict.empty
