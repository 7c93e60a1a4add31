"""The whole reliability path on a small panel: 3 architectures × 3 training seeds of synthetic-organism
recipes, 3 task seeds through the real runner (`canonbench reliability`), the stored lens, the site."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from benchmark import cli
from benchmark.results import ResultStore

RECIPE = """kind = "recipe"
name = "panel/{name}"
title = "{arch} on song2025-toy (test panel)"
authors = ["t"]
license = "MIT"

[recipe]
architecture = "{arch}"
width = 32
seeds = [1, 2, 3]
trains_on = "synthetic"
presets = ["song2025-toy"]

[recipe.hyperparameters]
lr = 1e-2
steps = 40
batch_size = 256
{extra}
"""
PANEL = {
    "topk": ("topk", 'k = 3\ninit = "unit"'),
    "standard": ("standard", 'l1_coefficient = 0.01\ninit = "tied"'),
    "batchtopk": ("batchtopk", 'k = 3\ninit = "unit"'),
}


@pytest.fixture(scope="module")
def panel_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("panel")
    folder = root / "submissions"
    folder.mkdir()
    for name, (arch, extra) in PANEL.items():
        (folder / f"{name}.toml").write_text(RECIPE.format(name=name, arch=arch, extra=extra))
    results, cache, site = root / "results", root / "cache", root / "site"
    code = cli.main(["reliability", str(folder), "--tasks", "synthetic", "--task-seeds", "0-2", "--results", str(results),
                     "--cache-dir", str(cache), "--quiet"])
    assert code == 0
    assert cli.main(["leaderboard", "build", "--results", str(results), "--submissions", str(folder), "--out", str(site),
                     "--quiet"]) == 0
    return results, site


def test_every_task_seed_is_a_stored_unit_and_the_lens_is_stored(panel_site):
    results, _ = panel_site
    store = ResultStore(results)
    frame = store.read()
    assert set(frame["task_seed"]) == {0, 1, 2}
    assert frame.groupby("submission")["unit_key"].nunique().to_dict() == {f"panel/{n}": 3 for n in PANEL}
    verdict = store.read_summary("synthetic", "reliability", "1").set_index("metric")
    assert set(verdict.index) == {"gt_mcc", "decoder_pw_mcc", "chance_mcc"}
    assert len(json.loads(verdict["units"].iloc[0])) == 9  # computed from every task seed's unit
    assert (verdict["min_task_seeds"] == 3).all() and (verdict["verdict"] != "passes").all()  # < 5 task seeds
    assert "(deterministic given the SAEs)" in verdict.loc["gt_mcc", "sentence"]
    # GT-MCC and PW-MCC are deterministic given the SAEs; the chance baseline follows the task seed
    assert verdict.loc["gt_mcc", "eval_std"] == 0 and verdict.loc["decoder_pw_mcc", "eval_std"] == 0
    assert verdict.loc["chance_mcc", "eval_std"] > 0 and verdict.loc["chance_mcc", "discriminability"] == "n/a"
    assert verdict.loc["gt_mcc", "replicate_kind"] == "training seeds"
    assert verdict.loc["decoder_pw_mcc", "replicate_kind"] == "seed pairs"
    assert verdict.loc["decoder_pw_mcc", "validity_truth"] == "gt_mcc" and verdict.loc["decoder_pw_mcc", "validity_n"] == 3
    assert verdict.loc["decoder_pw_mcc", "validity"] == "not measured"  # 3 submissions < the declared 5
    assert verdict.loc["chance_mcc", "verdict"] == "reference"
    assert verdict.loc["gt_mcc", "mdd"] > 0
    pairs = store.read_summary("synthetic", "reliability_pairs", "1")
    assert len(pairs[pairs["metric"] == "gt_mcc"]) == 3
    ranks = store.read_summary("synthetic", "reliability_ranks", "1")
    assert set(ranks["metric"]) == {"gt_mcc", "decoder_pw_mcc"} and (ranks["task_seed"] == 0).all()
    print("\n" + verdict[["subset", "eval_std", "eval_cv", "seed_se", "mdd", "share_between", "welch_p", "pairs_differ",
                          "tau_mean", "validity_spearman", "verdict"]].to_string())


def test_the_task_page_shows_the_reliability_section(panel_site):
    _, site = panel_site
    page = (site / "tasks" / "synthetic.html").read_text()
    assert "How reliable is this metric?" in page
    assert re.search(r"gt_mcc \(preset=song2025-toy\): differences below [0-9.]+ are noise", page)
    assert 'class="chart pair-matrix"' in page and "Holm-adjusted p" in page
    assert "Thresholds" in page and "Spearman ρ with the ground truth at least: 0.5" in page
    assert "canonbench reliability PANEL --tasks synthetic --task-seeds 0-4" in page
    assert (site / "downloads" / "task-synthetic" / "reliability.csv").is_file()
    matrix = list((site / "downloads" / "task-synthetic").glob("plot-reliability-pairs-gt_mcc-*.csv"))
    assert len(matrix) == 1 and len(pd.read_csv(matrix[0])) == 3  # the data behind the matrix: its 3 pairs
    stored = pd.read_csv(site / "downloads" / "task-synthetic" / "reliability-ranks.csv")
    assert set(stored["submission"]) == {f"panel/{n}" for n in PANEL}
    assert "Not measured yet" in (site / "tasks" / "cross-seed.html").read_text()  # declared, not run: said so


def test_task_seeds_are_parsed_and_bad_ones_named_in_one_line(capsys, tmp_path):
    from benchmark.runner import parse_task_seeds

    assert parse_task_seeds("0-4") == [0, 1, 2, 3, 4] and parse_task_seeds("3, 0,7-8") == [0, 3, 7, 8]
    for bad in ("4-1", "a", "-1", ""):
        code = cli.main(["reliability", str(tmp_path), "--task-seeds", bad, "--results", str(tmp_path / "r")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "--task-seeds" in err, (bad, err)
