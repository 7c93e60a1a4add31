"""The reliability lens as summaries any task declares: ``summaries=reliability_summaries(metrics=(...))``.

Four stored tables per task (computed by ``canonbench summarize`` from the rows of every task
seed, see :mod:`benchmark.metrics.reliability_lens`; the task seeds are run by
``canonbench reliability``):

* ``reliability`` (role ``reliability``): one row per measure (metric × aggregate subset): noise,
  minimum detectable difference, variance shares, Welch ANOVA, rank stability, validity, the
  verdict against the declared thresholds and the sentence the page shows;
* ``reliability_noise``: evaluation and training-seed noise per submission;
* ``reliability_pairs``: the pair matrix (Welch t, Holm-adjusted) per measure;
* ``reliability_ranks``: the rank groups of the shown scores (ties within noise).

The thresholds are declared once (:class:`~benchmark.metrics.reliability_lens.ReliabilityThresholds`),
stored in every verdict row and shown on the task page. Changing them, or the lens, bumps
:data:`LENS_VERSION` (the summaries' version).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from benchmark.metrics.reliability_lens import (
    DEFAULT_THRESHOLDS,
    NOISE_COLUMNS,
    PAIR_COLUMNS,
    RANK_COLUMNS,
    VERDICT_COLUMNS,
    ReliabilityThresholds,
    reliability_lens,
)
from tasks.base import SummarySpec

LENS_VERSION = "1"

#: Where the tables go on the site (``SummarySpec.role``).
ROLES = ("reliability", "reliability_noise", "reliability_pairs", "reliability_ranks")


def reliability_summaries(metrics: Sequence[str], *, validity: Mapping[str, str] | None = None,
                          ground_truth: Sequence[str] = (),
                          thresholds: ReliabilityThresholds = DEFAULT_THRESHOLDS) -> tuple[SummarySpec, ...]:
    """The four summaries of the lens for ``metrics`` (declare the main metric and every metric the
    overview shows). ``validity``: metric → the ground-truth metric (same task and subset) it must
    track; ``ground_truth``: metrics that are ground truth themselves."""
    metrics = tuple(metrics)
    validity = dict(validity or {})
    ground_truth = tuple(ground_truth)

    def table(name: str):
        def compute(rows: pd.DataFrame) -> pd.DataFrame:
            lens = reliability_lens(rows, metrics, validity=validity, ground_truth=ground_truth, thresholds=thresholds)
            return getattr(lens, name)
        return compute

    listed = ", ".join(metrics)
    common = (f"Metrics: {listed}. Computed from the stored rows of every task seed of each shown unit "
              f"(`canonbench reliability PATHS --tasks TASK --task-seeds 0-4`). Thresholds: {thresholds.as_text()}.")
    return (
        SummarySpec(
            "reliability", LENS_VERSION, "How reliable is this metric?",
            "Per metric and subset: evaluation noise over task seeds (σ, CV), training-seed noise, the minimum detectable "
            "difference of two shown scores (1.96·√2·σ, σ² = σ²_eval + se²_seed), the between-architecture share of variance "
            "(nested ANOVA components), Welch's ANOVA, the pair matrix count, Kendall's τ between task seeds, validity "
            "against ground truth, and the verdict. " + common,
            VERDICT_COLUMNS, table("verdict"), rows="task_seeds", role="reliability"),
        SummarySpec(
            "reliability_noise", LENS_VERSION, "Noise per submission",
            "Per submission: spread over task seeds (same SAEs: σ_eval, its 95% upper bound, CV, MDD = 1.96·√2·σ_eval) "
            "and over training seeds or seed pairs (σ_seed, CV, standard error of the submission's mean). " + common,
            NOISE_COLUMNS, table("noise"), rows="task_seeds", role="reliability_noise"),
        SummarySpec(
            "reliability_pairs", LENS_VERSION, "Which submissions differ beyond noise?",
            "Every pair of submissions: Welch's t on the groups' replicate means (training seeds, seed pairs with the "
            "U-statistic bound, or task seeds when no per-seed values exist), p-values Holm-adjusted over all pairs of the "
            "measure. " + common,
            PAIR_COLUMNS, table("pairs"), rows="task_seeds", role="reliability_pairs"),
        SummarySpec(
            "reliability_ranks", LENS_VERSION, "Rank groups",
            "Rank of each shown score: 1 + the number of submissions better by more than the measure's minimum detectable "
            "difference; submissions within noise of each other share a rank. " + common,
            RANK_COLUMNS, table("ranks"), rows="task_seeds", role="reliability_ranks"),
    )


__all__ = ["LENS_VERSION", "ROLES", "reliability_summaries"]
