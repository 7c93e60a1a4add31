"""The static leaderboard: renders the results store, the manifests and the tasks' metadata into an
offline HTML site (``canonbench leaderboard build``). It formats stored rows; it never computes a metric."""

from leaderboard.plots import (
    GT_MCC_METRIC,
    L0_METRIC,
    MATCHED_COSINE_HISTOGRAM,
    PRESET_SUBSET_PREFIX,
    PW_MCC_METRIC,
    SIMILARITY_BY_COSINE_BIN,
)

__all__ = [
    "GT_MCC_METRIC",
    "L0_METRIC",
    "MATCHED_COSINE_HISTOGRAM",
    "PRESET_SUBSET_PREFIX",
    "PW_MCC_METRIC",
    "SIMILARITY_BY_COSINE_BIN",
]
