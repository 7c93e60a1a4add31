"""Exact one-to-one matching of SAE dictionaries: MCC, PW-MCC, chance baseline, mean max cosine.

Conventions (see /work/shared/reference/metrics.md):
- A dictionary is a [latents, dim] array (numpy or torch, any float dtype); each row is scaled to unit
  norm, zero (dead) rows stay zero and have cosine 0 with everything.
- Cosines are signed. The assignment maximises the total matched cosine, one-to-one, matching every
  row of the smaller dictionary; MCC is the mean over the rows of the smaller side.
- Results are exact: ``match_dictionaries`` returns the optimum of the dense problem, and says
  whether optimality was certified (always, unless ``max_rounds`` ran out).
- For encoder matching, pass ``W_enc.T`` (one row per latent) yourself; rows are rows.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from benchmark.errors import CanonBenchError
from benchmark.metrics.matching import _cosine as cz
from benchmark.metrics.matching import _sets as st
from benchmark.metrics.matching._engine import solve_certified, solve_dense
from benchmark.metrics.matching._kernels import CANDIDATE_PRECISIONS

logger = logging.getLogger(__name__)

__all__ = [
    "Matching",
    "PairwiseMCC",
    "ChanceMCC",
    "mcc",
    "match_dictionaries",
    "pw_mcc",
    "mean_max_cosine",
    "row_max_cosines",
    "chance_mcc",
]

# Problems with at most this many cosine entries go to the dense solver under method="auto".
DENSE_MAX_ENTRIES = 1024 * 1024


@dataclass(frozen=True)
class Matching:
    """An optimal one-to-one matching between the rows of two dictionaries.

    rows_a[t] is matched to rows_b[t] with cosine ``cosines[t]`` (fp64, recomputed exactly); there are
    min(len(a), len(b)) pairs, sorted by the index on the smaller side. ``value`` is their mean (the
    MCC); ``averaged_side`` names the smaller side ("a" when equal). ``certified`` is True when the
    assignment is proven optimal for the dense problem (the dense solver is exact by construction).
    """

    rows_a: np.ndarray
    rows_b: np.ndarray
    cosines: np.ndarray
    value: float
    certified: bool
    method: str
    n_a: int
    n_b: int
    averaged_side: str
    dead_a: int
    dead_b: int
    seconds: float
    details: dict = field(default_factory=dict, repr=False)
    # kernel of the cheap passes ("int8", "bf16", "fp32"; "" for the dense method) and the
    # self-check timings that chose it (seconds per probe matmul and kind), for provenance
    kernel: str = ""
    kernel_timings: dict = field(default_factory=dict, repr=False)

    @property
    def total(self) -> float:
        """Sum of matched cosines (the maximised objective)."""
        return float(self.cosines.sum())

    def shared_fraction(self, threshold: float) -> float:
        """Fraction of matched pairs with cosine above ``threshold``."""
        return float(np.mean(self.cosines > threshold))


def match_dictionaries(
    a: Any,
    b: Any,
    *,
    device: str | torch.device = "cpu",
    method: str = "auto",
    k: int = 48,
    fix_margin: float | None = None,
    max_rounds: int = 100,
    block_rows: int | None = None,
    progress: bool = False,
    candidates: str = "auto",
    price_sample: int = 1024,
) -> Matching:
    """Optimal signed-cosine matching between the rows of ``a`` [m, d] and ``b`` [n, d].

    device: where the kernel passes run ("cpu", "cuda", a torch.device); exact fp64 work and the
    sparse solves stay on the CPU. method: "auto" (dense below ~1M entries, else sparse), "dense"
    (fp64 cost matrix + scipy ``linear_sum_assignment``; memory O(m·n)) or "sparse" (candidate
    graph, sparse LAPJV, dual certificate; memory O((m + n)·d + known entries)). k: most columns per
    row taken from the candidate pass, ranked at estimated prices (a row with a clean partner keeps
    fewer; more are added as the certificate needs them). price_sample: rows of the random
    subproblem solved densely to estimate column prices (0: none). max_rounds: certificate rounds before giving up (then ``certified`` is False).
    candidates: kernel of the passes over all m·n cosines: "int8" (exact int32 sums of int8 codes),
    "bf16" (fp32 accumulation, verified), "fp32", or "auto" (the fastest kernel that passes its
    self-check on this machine; see ``_kernels``). Every kernel carries a rigorous per-row error
    bound, so the result is exact either way; ``Matching.kernel`` records the one used.
    fix_margin: no longer used (the sparse solver needs no tentatively fixed pairs); accepted so
    that older callers keep working.
    """
    start = time.perf_counter()
    a64 = cz.as_float_rows(a, "a")
    b64 = cz.as_float_rows(b, "b")
    if a64.shape[1] != b64.shape[1]:
        raise CanonBenchError(f"dimension mismatch: a has dim {a64.shape[1]}, b has dim {b64.shape[1]}", field="b")
    if method not in ("auto", "dense", "sparse"):
        raise CanonBenchError(f"unknown method {method!r} (auto, dense, sparse)", field="method")
    if k < 1:
        raise CanonBenchError(f"k must be >= 1, got {k}", field="k")
    if candidates not in CANDIDATE_PRECISIONS:
        raise CanonBenchError(f"unknown candidates {candidates!r} {CANDIDATE_PRECISIONS}", field="candidates")
    dev = cz.resolve_device(device)
    unit_a, live_a = cz.unit_rows64(a64, "a")
    unit_b, live_b = cz.unit_rows64(b64, "b")
    del a64, b64
    swapped = unit_a.shape[0] > unit_b.shape[0]
    small, large = (unit_b, unit_a) if swapped else (unit_a, unit_b)
    live_small = live_b if swapped else live_a
    m, n = small.shape[0], large.shape[0]

    # Dead rows of the smaller side score 0 against any column and there are always enough
    # columns left for them (m ≤ n), so they are matched at the end to unused columns.
    live_rows = np.flatnonzero(live_small)
    row_col = np.full(m, -1, dtype=np.int64)
    # exact (fp64) matched cosines; dead rows of the smaller side score exactly 0
    cosines = np.zeros(m)
    details: dict = {}
    certified = True
    used_method = "dense"
    kernel, kernel_timings = "", {}
    if len(live_rows):
        small_live = small if len(live_rows) == m else small[torch.from_numpy(live_rows)]
        if method == "dense" or (method == "auto" and len(live_rows) * n <= DENSE_MAX_ENTRIES):
            raw = solve_dense(small_live, large)
        else:
            raw = solve_certified(
                small_live, large, device=dev, k=k, max_rounds=max_rounds, block_rows=block_rows,
                progress=progress, candidates=candidates, price_sample=price_sample,
            )
            details.update(vars(raw.stats))
            kernel, kernel_timings = raw.stats.candidates, dict(raw.stats.kernel_timings)
        certified, used_method = raw.certified, raw.method
        row_col[live_rows] = raw.row_col
        cosines[live_rows] = raw.row_value
    dead_rows = np.flatnonzero(~live_small)
    if len(dead_rows):
        free = st.setdiff(np.arange(n), row_col[live_rows])
        row_col[dead_rows] = free[: len(dead_rows)]

    rows_small = np.arange(m)
    rows_a, rows_b = (row_col, rows_small) if swapped else (rows_small, row_col)
    return Matching(
        rows_a=rows_a,
        rows_b=rows_b,
        cosines=cosines,
        value=float(cosines.mean()),
        certified=bool(certified),
        method=used_method,
        n_a=int(len(live_a)),
        n_b=int(len(live_b)),
        averaged_side="b" if swapped else "a",
        dead_a=int((~live_a).sum()),
        dead_b=int((~live_b).sum()),
        seconds=time.perf_counter() - start,
        details=details,
        kernel=kernel,
        kernel_timings=kernel_timings,
    )


def mcc(a: Any, b: Any, **kwargs: Any) -> float:
    """MCC: mean signed cosine of the optimal one-to-one matching of rows of ``a`` and ``b``.

    Averaged over the smaller dictionary (every one of its rows is matched). Keyword arguments go to
    :func:`match_dictionaries`. Range [-1, 1]; 1 for a permutation of the same dictionary.
    """
    return match_dictionaries(a, b, **kwargs).value


@dataclass(frozen=True)
class PairwiseMCC:
    """MCC over all unordered pairs of dictionaries (e.g. seeds).

    values[(i, j)] for i < j; ``mean`` and ``std`` over pairs (sample std, ddof=1; 0.0 for one pair).
    ``matchings[(i, j)]`` holds the Matching objects when requested.
    """

    values: dict
    mean: float
    std: float
    matchings: dict | None = None

    @property
    def pairs(self) -> list[tuple[int, int, float]]:
        return [(i, j, v) for (i, j), v in sorted(self.values.items())]


def pw_mcc(dictionaries: Sequence[Any], *, return_matchings: bool = False, **kwargs: Any) -> PairwiseMCC:
    """PW-MCC: MCC of every unordered pair of ``dictionaries`` (≥ 2), with mean and sample std."""
    if len(dictionaries) < 2:
        raise CanonBenchError(f"need at least 2 dictionaries, got {len(dictionaries)}", field="dictionaries")
    values, matchings = {}, {}
    for i, j in itertools.combinations(range(len(dictionaries)), 2):
        match = match_dictionaries(dictionaries[i], dictionaries[j], **kwargs)
        values[(i, j)] = match.value
        if return_matchings:
            matchings[(i, j)] = match
    arr = np.array(list(values.values()))
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return PairwiseMCC(values, float(arr.mean()), std, matchings if return_matchings else None)


def row_max_cosines(a: Any, b: Any, *, device: str | torch.device = "cpu", block_rows: int | None = None) -> np.ndarray:
    """For each row of ``a [m, d]``, the largest signed cosine with any row of ``b [n, d]`` (fp64 ``[m]``).

    Not one-to-one (Sharkey et al. 2022). Dead rows of ``a`` give 0. Blocked (the full matrix never
    exists); fp32 search, fp64 recompute of the top few per row.
    """
    a64, b64 = cz.as_float_rows(a, "a"), cz.as_float_rows(b, "b")
    if a64.shape[1] != b64.shape[1]:
        raise CanonBenchError(f"dimension mismatch: a has dim {a64.shape[1]}, b has dim {b64.shape[1]}", field="b")
    dev = cz.resolve_device(device)
    ua, _ = cz.unit_rows64(a64, "a")
    ub, _ = cz.unit_rows64(b64, "b")
    blk = block_rows or cz.block_rows_for(ub.shape[0])
    maxima = cz.row_max_cosines(ua.to(dev, torch.float32), ub.to(dev, torch.float32), ua, ub, blk)
    return np.asarray(maxima.cpu().numpy() if isinstance(maxima, torch.Tensor) else maxima, dtype=np.float64)


def mean_max_cosine(a: Any, b: Any, *, device: str | torch.device = "cpu", block_rows: int | None = None) -> float:
    """Mean over rows of ``a`` of :func:`row_max_cosines` (Sharkey et al. 2022): not one-to-one, not
    symmetric; an upper bound on MCC when len(a) ≤ len(b). Dead rows of ``a`` count as 0."""
    return float(row_max_cosines(a, b, device=device, block_rows=block_rows).mean())


@dataclass(frozen=True)
class ChanceMCC:
    """MCC between independent random unit Gaussian dictionaries (chance baseline)."""

    mean: float
    std: float
    values: tuple

    def __float__(self) -> float:
        return self.mean


def random_dictionary_pair(m: int, n: int, d: int, seed: int, trial: int) -> tuple[np.ndarray, np.ndarray]:
    """The pair used by trial ``trial`` of :func:`chance_mcc`: iid N(0, 1) fp64 rows, a [m, d] then b [n, d]."""
    rng = np.random.default_rng([seed, trial])
    return rng.standard_normal((m, d)), rng.standard_normal((n, d))


def chance_mcc(m: int, n: int, d: int, *, seed: int = 0, trials: int = 3, **kwargs: Any) -> ChanceMCC:
    """Chance baseline: MCC of two independent random Gaussian dictionaries of shapes [m, d], [n, d].

    Averaged over ``trials`` independent pairs (see :func:`random_dictionary_pair`); std is the sample
    std over trials. Keyword arguments go to :func:`match_dictionaries`.
    """
    if min(m, n, d, trials) < 1:
        raise CanonBenchError(f"m, n, d and trials must be >= 1, got {(m, n, d, trials)}", field="chance_mcc")
    values = tuple(mcc(*random_dictionary_pair(m, n, d, seed, t), **kwargs) for t in range(trials))
    arr = np.array(values)
    return ChanceMCC(float(arr.mean()), float(arr.std(ddof=1)) if trials > 1 else 0.0, values)
