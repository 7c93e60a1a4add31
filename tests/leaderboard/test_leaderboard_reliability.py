"""The leaderboard shows the stored reliability lens: rank groups with a reason, a failing metric
flagged, the pair matrix; it computes no statistic (a stale lens shows no ranks)."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pytest

from benchmark.results import MetricValue, ResultStore, UnitProvenance, make_rows
from benchmark.spec import short_hash
from benchmark.summaries import summarize
from leaderboard.build import build_site
from leaderboard.plots import pair_matrix
from tasks.base import MetricSpec, Task, TaskMetadata
from tasks.reliability import reliability_summaries

DATE = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)


def lens_task(name: str) -> type[Task]:
    meta = TaskMetadata(name=name, version="1", title=f"Lens fixture {name}", description="d", accepts=("recipe",),
                        metrics=(MetricSpec("score", "a score", "higher", (0.0, 1.0), main=True),),
                        citation="@misc{x}", summaries=reliability_summaries(("score",)))
    return type("LensFixture", (Task,), {"metadata": meta})


def write_panel(root, task: str, means: dict[str, float], *, seeds=4, task_seeds=5, sigma_seed=0.002, sigma_eval=0.001,
                rng_seed=0, overwrite_seed0: dict[str, float] | None = None) -> None:
    store = ResultStore(root)
    rng = np.random.default_rng(rng_seed)
    directions = {"score": "higher"}
    for index, (sub, mu) in enumerate(means.items()):
        effects = sigma_seed * rng.standard_normal(seeds)
        for t in range(task_seeds):
            spec = {"seed": t, "task": task, "task_version": "1", "config": {}}
            prov = UnitProvenance(run_id=f"r{index}{t}", submission=sub, submission_kind="recipe", local=True, task=task,
                                  task_version="1", benchmark_version="0", git_sha=None, device="cpu", dtype="float32",
                                  spec=spec, spec_hash=short_hash(spec), inputs_hash=f"{index:016x}",
                                  architecture=sub.split("/")[1])
            per_seed = [mu + e + sigma_eval * rng.standard_normal() for e in effects]
            value = float(np.mean(per_seed))
            if overwrite_seed0 and t == 0 and sub in overwrite_seed0:
                value = overwrite_seed0[sub]
            values = [MetricValue("score", value, n=seeds)]
            values += [MetricValue("score", float(v), n=1, subset=f"seed={s}") for s, v in enumerate(per_seed)]
            store.write_unit(make_rows(values, prov, directions, timestamp=f"2026-01-01T00:00:0{t}+00:00", runtime_s=0.0),
                             overwrite=bool(overwrite_seed0))


def build(tmp_path, task_cls, name="site"):
    index = build_site(results_dir=tmp_path / "results", submissions_dir=None, out_dir=tmp_path / name, build_date=DATE,
                       tasks={task_cls.metadata.name: task_cls})
    return index.read_text(), (tmp_path / name / "tasks" / f"{task_cls.metadata.name}.html").read_text()


def test_ranks_show_ties_with_the_stored_reason(tmp_path):
    task = lens_task("lens-a")
    write_panel(tmp_path / "results", "lens-a", {"o/topk": 0.300, "o/relu": 0.301, "o/gated": 0.40, "o/jump": 0.20})
    assert not any(o.error for o in summarize(tmp_path / "results", registry={"lens-a": task}))
    overview, page = build(tmp_path, task)
    tied = re.findall(r'<span class="rank tied" title="([^"]*)">#2=</span>', overview)
    assert len(tied) == 2 and any("within noise of o/topk" in t for t in tied)
    assert '<span class="rank" title="rank 1: no submission is better' in overview
    assert re.search(r'<span class="rank" title="rank 4: 3 submission\(s\) better', overview)
    assert "fails reliability" not in overview
    assert "How reliable is this metric?" in page and "passes" in page and 'class="chart pair-matrix"' in page
    assert page.count('class="rank tied"') == 2  # the scores table shows them too
    _, again = build(tmp_path, task, name="site2")
    assert again == page  # deterministic, SVG included


def test_a_metric_that_fails_is_flagged_on_the_overview(tmp_path):
    task = lens_task("lens-b")
    write_panel(tmp_path / "results", "lens-b", {"o/a": 0.3, "o/b": 0.3, "o/c": 0.3}, sigma_seed=0.02, rng_seed=3)
    summarize(tmp_path / "results", registry={"lens-b": task})
    overview, page = build(tmp_path, task)
    assert "fails reliability" in overview and "Fails the reliability thresholds" in overview
    assert 'class="verdict-fails"' in page and "between-architecture share" in page


def test_ranks_are_read_not_computed_a_stale_lens_shows_none(tmp_path):
    task = lens_task("lens-c")
    means = {"o/a": 0.3, "o/b": 0.5, "o/c": 0.7}
    write_panel(tmp_path / "results", "lens-c", means)
    overview, _ = build(tmp_path, task, name="before")
    assert 'class="rank' not in overview and "Not measured yet" in (tmp_path / "before" / "tasks" / "lens-c.html").read_text()
    summarize(tmp_path / "results", registry={"lens-c": task})
    assert build(tmp_path, task, name="summarized")[0].count('class="rank') == 3
    write_panel(tmp_path / "results", "lens-c", means, overwrite_seed0={"o/a": 0.9})  # rerun after summarize
    overview, page = build(tmp_path, task, name="stale")
    assert overview.count('class="rank') == 0  # one shown score changed: every rank of the measure is stale
    assert "Stale: the shown scores of score (all) changed" in page


def test_pair_matrix_escapes_and_reads_stored_values():
    import pandas as pd

    pairs = pd.DataFrame([{"a": "<x>", "b": "o/y", "diff": 0.25, "p_holm": 0.001, "differs": True, "alpha": 0.05,
                           "evidence": "training seeds"}])
    fig = pair_matrix(pairs, names=["<x>", "o/y"], figure_id="f", title="t", mdd=0.1)
    assert "<x>" not in fig.svg and "&lt;x&gt;" in fig.svg
    assert "0.250" in fig.svg and "-0.250" in fig.svg and fig.svg.count('class="pm-differ"') == 3  # 2 cells + legend
    assert pair_matrix(pairs.iloc[0:0], names=[], figure_id="f", title="t").svg is None
