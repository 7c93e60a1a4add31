"""SAE stitching (Leask et al. 2025): does a wider SAE only refine a narrower one, or find new latents?

The kernel behind the ``stitching`` task, for one *rung* of a width ladder: a narrow SAE ``S``
(``m_S`` latents) and a wide SAE ``L`` (``m_L`` latents) of the same model and hook, evaluated on one
sample of inputs ``x [N, d]``.

**A stitched SAE (choice).** Leask et al. stitch ReLU SAEs by moving encoder columns and decoder rows
between them. To stay defined for every architecture (TopK and BatchTopK latents compete inside their
own SAE), a latent moved into another SAE *keeps the activation it has in its own SAE*: a stitched
SAE made of a set ``U`` of latents of ``S`` and ``L`` reconstructs ``x̂ = b + Σ_{u∈U} z_u(x) e_u``,
with ``z_u`` the latent's activation in its own SAE, ``e_u`` its effective decoder row (the row the
SAE's ``decode`` multiplies ``z_u`` with) and ``b`` the narrow SAE's decoder bias. For ReLU SAEs
this is Leask et al.'s insertion up to the pre-encoder bias. Everything is computed in the SAEs'
shared normalised input space (both SAEs must normalise inputs the same way), in float64.

**Insertion test.** For each wide latent ``j``: ``Δ_j = mean_n ‖r_n − z_nj e_j‖² − ‖r_n‖²`` with
``r = x − x̂_S`` the narrow SAE's residual (per input, summed over ``d``). ``j`` is *novel* when
``Δ_j < 0`` (adding it to the narrow SAE lowers the reconstruction error), a *reconstruction* latent
otherwise (it raises the error or leaves it unchanged, e.g. never active on the sample).

**Max-cosine proxy.** ``max_cosine_j``: the best signed decoder cosine of ``j`` with any narrow
latent (:func:`benchmark.metrics.matching.row_max_cosines`). The proxy calls ``j`` novel when it is
below a threshold; :func:`proxy_auc` is the area under the ROC curve of ``1 − max_cosine`` for the
insertion test's novel latents.

**Stitched curve (choice of order).** From the narrow SAE to the wide one: first every novel latent
is inserted, one per step, most helpful (lowest ``Δ``) first; then the reconstruction latents are
swapped in for their *parents* in groups. A reconstruction latent's parents are its most similar
narrow latent plus every narrow latent with decoder cosine above ``group_threshold``; a group is a
connected component of that bipartite graph (its narrow latents leave, its wide latents enter, in one
step). Narrow latents that parent no reconstruction latent are removed one per step. Groups and
removals are applied in order of their effect on the narrow SAE alone (most helpful first). A last
step swaps the narrow decoder bias for the wide one, so the curve ends exactly at the wide SAE. The
curve is the fraction of variance unexplained (FVU: summed squared error over the total variance of
``x``) after each step (at most ``max_points`` evenly spread steps; every step when fewer), with the
L0 of the stitched set.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmark.errors import TaskError
from benchmark.metrics.matching import row_max_cosines

log = logging.getLogger(__name__)

#: Thresholds at which the max-cosine proxy's agreement with the insertion test is reported.
PROXY_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
#: Inputs per batch of a pass over the sample, and the most contribution entries (inputs × latents ×
#: d) one batch of the group pass materialises.
BATCH_ROWS = 2048
GROUP_BLOCK = 1 << 23


@dataclass
class RungResult:
    """Stitching one narrow SAE into one wide SAE (see the module docstring).

    Per wide latent ``[m_L]``: ``insertion_delta`` (change of the mean squared error per input),
    ``novel``, ``max_cosine`` and ``parent`` (most similar narrow latent), ``group`` (swap group of a
    reconstruction latent, -1 for novel latents), ``frequency`` (firing rate on the sample) and
    ``step_wide`` (the stitching step at which it enters); ``step_narrow [m_S]``: the step at which each
    narrow latent leaves. ``steps``: one row per evaluated stitching step (see :func:`stitch_rung`);
    ``fvu_narrow``/``fvu_wide``: the two SAEs' fractions of variance unexplained on the sample."""

    narrow_width: int
    wide_width: int
    n_inputs: int
    insertion_delta: np.ndarray
    novel: np.ndarray
    max_cosine: np.ndarray
    parent: np.ndarray
    group: np.ndarray
    frequency: np.ndarray
    narrow_frequency: np.ndarray
    fvu_narrow: float
    fvu_wide: float
    steps: pd.DataFrame
    step_wide: np.ndarray
    step_narrow: np.ndarray
    matched_activation_correlation: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def novel_fraction(self) -> float:
        return float(self.novel.mean())

    @property
    def curve_fvu(self) -> np.ndarray:
        return self.steps["fvu"].to_numpy()

    @property
    def monotone(self) -> bool:
        """True when the stitched curve never rises (up to float64 rounding)."""
        return self.max_increase <= 0.0

    @property
    def max_increase(self) -> float:
        """Largest rise of the FVU between consecutive curve points (0 when it never rises)."""
        fvu = self.curve_fvu
        if len(fvu) < 2:
            return 0.0
        rises = np.diff(fvu)
        tol = 1e-9 * max(abs(self.fvu_narrow), 1e-12)
        rises = np.where(rises > tol, rises, 0.0)
        return float(rises.max())

    @property
    def novel_share_of_gain(self) -> float | None:
        """Share of the narrow → wide FVU improvement delivered by inserting the novel latents alone
        (None when the wide SAE is not better than the narrow one)."""
        gain = self.fvu_narrow - self.fvu_wide
        inserted = self.steps[self.steps["phase"].isin(["narrow", "insert"])]["fvu"]
        if gain <= 0 or not len(inserted):
            return None
        return float((self.fvu_narrow - inserted.iloc[-1]) / gain)


# --------------------------------------------------------------------------------------------
# the SAEs as decoders of contributions
# --------------------------------------------------------------------------------------------
def effective_decoder(sae: Any) -> torch.Tensor:
    """Rows ``[d_sae, d_in]`` (float64) that ``sae.decode`` multiplies latent activations with: the
    raw decoder rows, divided by their norms for TopK/BatchTopK SAEs that rescale activations by them."""
    rows = sae.W_dec.detach().to(torch.float64)
    if getattr(sae.config, "rescale_acts_by_decoder_norm", False) and sae.config.architecture in ("topk", "batchtopk"):
        rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return rows


def _normalisation(sae: Any) -> tuple[str, float]:
    mode = sae.config.input_normalisation
    return mode, (float(sae.config.input_scale) if mode == "scalar" else 1.0)


def check_stitchable(narrow: Any, wide: Any) -> None:
    """Raise a one-line error when two SAEs cannot be stitched (different input width or scaling)."""
    if narrow.d_in != wide.d_in:
        raise TaskError(f"SAEs of widths {narrow.d_sae} and {wide.d_sae} read inputs of different size "
                        f"({narrow.d_in} vs {wide.d_in})", field="sae.d_in")
    if _normalisation(narrow) != _normalisation(wide):
        raise TaskError(f"SAEs of widths {narrow.d_sae} and {wide.d_sae} normalise their inputs differently "
                        f"({_normalisation(narrow)} vs {_normalisation(wide)}); their latents cannot be stitched",
                        field="normalize_activations")


@torch.no_grad()
def _encode(sae: Any, x_norm: torch.Tensor) -> torch.Tensor:
    return sae._encode_normalised(x_norm.to(sae.W_enc.dtype)).to(torch.float64)


# --------------------------------------------------------------------------------------------
# one encoding pass: sparse activations and per-latent statistics
# --------------------------------------------------------------------------------------------
@dataclass
class _Batch:
    """One batch of the sample, encoded once: active latents as ``(rows, cols, values)`` over the
    combined index (wide latents ``0..m_L-1``, narrow latents ``m_L..m_L+m_S-1``)."""

    start: int
    stop: int
    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor


@dataclass
class _Pass1:
    n: int
    total_ss: float
    sse_narrow: float
    sse_wide: float
    insert_q: np.ndarray  # Σ_n z_nj²            (wide)
    insert_p: np.ndarray  # Σ_n z_nj (r_n · e_j)  (wide; r the narrow residual)
    narrow_q: np.ndarray  # Σ_n z_ni²            (narrow)
    narrow_p: np.ndarray  # Σ_n z_ni (r_n · e_i)  (narrow)
    fire_wide: np.ndarray
    fire_narrow: np.ndarray
    correlation: np.ndarray | None
    batches: list[_Batch]


def _inputs(narrow: Any, x: torch.Tensor, batch: _Batch) -> torch.Tensor:
    """The batch's inputs in the SAEs' normalised space, float64."""
    return narrow.normalise_input(x[batch.start:batch.stop])[0].to(torch.float64)


def _residual(xn: torch.Tensor, bias: torch.Tensor, batch: _Batch, e_all: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """``xn − bias − Σ z_u e_u`` over the batch's active latents selected by ``which`` (a mask on entries)."""
    r = xn - bias
    rows, cols, values = batch.rows[which], batch.cols[which], batch.values[which]
    return r.index_add_(0, rows - batch.start, -values.unsqueeze(1) * e_all[cols])


@torch.no_grad()
def _first_pass(narrow: Any, wide: Any, x: torch.Tensor, e_s: torch.Tensor, e_l: torch.Tensor,
                partner: np.ndarray | None, batch_rows: int) -> _Pass1:
    """Encode the sample once with both SAEs; the insertion test's sums, firing counts, the two SAEs'
    errors and (with ``partner``) matched-latent activation moments."""
    m_s, m_l = e_s.shape[0], e_l.shape[0]
    e_all = torch.cat([e_l, e_s])
    b_s = narrow.b_dec.detach().to(torch.float64)
    b_l = wide.b_dec.detach().to(torch.float64)
    sums = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = sse_s = sse_l = 0.0
    q = torch.zeros(m_l + m_s, dtype=torch.float64)
    p = torch.zeros(m_l + m_s, dtype=torch.float64)
    fire = torch.zeros(m_l + m_s, dtype=torch.float64)
    batches: list[_Batch] = []
    pairs = moments = None
    if partner is not None:
        ia = torch.as_tensor(np.nonzero(partner >= 0)[0])
        pairs = (ia, torch.as_tensor(partner[ia.numpy()]))
        moments = torch.zeros(5, len(ia), dtype=torch.float64)
    for start in range(0, x.shape[0], batch_rows):
        xb = x[start:start + batch_rows]
        x_norm, _ = narrow.normalise_input(xb)
        z_l, z_s = _encode(wide, x_norm), _encode(narrow, x_norm)
        if pairs is not None:
            a, b = z_s[:, pairs[0]], z_l[:, pairs[1]]
            moments += torch.stack([a.sum(0), b.sum(0), (a * a).sum(0), (b * b).sum(0), (a * b).sum(0)])
        rows_l, cols_l = torch.nonzero(z_l, as_tuple=True)
        rows_s, cols_s = torch.nonzero(z_s, as_tuple=True)
        batch = _Batch(start, start + xb.shape[0], torch.cat([rows_l, rows_s]) + start, torch.cat([cols_l, cols_s + m_l]),
                       torch.cat([z_l[rows_l, cols_l], z_s[rows_s, cols_s]]))
        batches.append(batch)
        xn = x_norm.to(torch.float64)
        is_narrow = batch.cols >= m_l
        r_s = _residual(xn, b_s, batch, e_all, is_narrow)
        r_l = _residual(xn, b_l, batch, e_all, ~is_narrow)
        sums += xn.sum(0)
        squares += float((xn * xn).sum())
        sse_s += float((r_s * r_s).sum())
        sse_l += float((r_l * r_l).sum())
        v = batch.values
        q.index_add_(0, batch.cols, v * v)
        p.index_add_(0, batch.cols, v * (r_s[batch.rows - start] * e_all[batch.cols]).sum(1))
        fire += torch.bincount(batch.cols, minlength=m_l + m_s).to(torch.float64)
    n = int(x.shape[0])
    total = squares - float((sums * sums).sum()) / n
    correlation = None
    if moments is not None:
        sx, sy, sxx, syy, sxy = moments.numpy()
        cov = n * sxy - sx * sy
        var = (n * sxx - sx * sx) * (n * syy - sy * sy)
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.where(var > 1e-12 * np.maximum(1.0, (n * sxx) * (n * syy)), cov / np.sqrt(np.maximum(var, 1e-300)), np.nan)
        correlation = np.full(len(partner), np.nan)
        correlation[pairs[0].numpy()] = np.clip(corr, -1.0, 1.0)
    q, p, fire = q.numpy(), p.numpy(), fire.numpy()
    return _Pass1(n, total, sse_s, sse_l, q[:m_l], p[:m_l], q[m_l:], p[m_l:], fire[:m_l], fire[m_l:], correlation, batches)


# --------------------------------------------------------------------------------------------
# parents and groups
# --------------------------------------------------------------------------------------------
def parents_and_edges(wide_dirs: torch.Tensor, narrow_dirs: torch.Tensor, threshold: float,
                      block_rows: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(parent [m_L], edge_wide, edge_narrow)``: each wide latent's most similar narrow latent (signed
    decoder cosine of unit rows), and every (wide, narrow) pair with cosine above ``threshold``
    (computed in blocks of wide rows; the full matrix never exists)."""
    a, b = wide_dirs.to(torch.float32), narrow_dirs.to(torch.float32)
    parent = np.empty(a.shape[0], dtype=np.int64)
    ew, en = [], []
    for start in range(0, a.shape[0], block_rows):
        cos = a[start:start + block_rows] @ b.T
        parent[start:start + cos.shape[0]] = cos.argmax(1).numpy()
        rows, cols = torch.nonzero(cos > threshold, as_tuple=True)
        ew.append(rows.numpy() + start)
        en.append(cols.numpy())
    return parent, np.concatenate(ew).astype(np.int64), np.concatenate(en).astype(np.int64)


def swap_groups(reconstruction: np.ndarray, parent: np.ndarray, edge_wide: np.ndarray, edge_narrow: np.ndarray,
                m_narrow: int) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the bipartite graph of reconstruction latents and narrow latents (edges:
    each reconstruction latent to its parent and to every narrow latent above the threshold).

    Returns ``(group of each wide latent [m_L], group of each narrow latent [m_S])``; -1 marks wide
    latents outside the graph (novel ones) and narrow latents that parent no reconstruction latent.
    Group ids are 0..G-1 in order of each group's smallest wide latent."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m_wide = len(parent)
    recon = np.nonzero(reconstruction)[0]
    keep = reconstruction[edge_wide]
    rows = np.concatenate([recon, edge_wide[keep]])
    cols = np.concatenate([parent[recon], edge_narrow[keep]]) + m_wide
    size = m_wide + m_narrow
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(size, size))
    _, labels = connected_components(graph, directed=False)
    wide_group = np.full(m_wide, -1, dtype=np.int64)
    narrow_group = np.full(m_narrow, -1, dtype=np.int64)
    renumber: dict[int, int] = {}
    for j in recon:  # ascending wide index: ids in order of each group's smallest wide latent
        renumber.setdefault(int(labels[j]), len(renumber))
        wide_group[j] = renumber[int(labels[j])]
    linked = np.zeros(m_narrow, dtype=bool)
    linked[cols - m_wide] = True
    for i in np.nonzero(linked)[0]:
        narrow_group[i] = renumber[int(labels[m_wide + i])]
    return wide_group, narrow_group


# --------------------------------------------------------------------------------------------
# stitching steps
# --------------------------------------------------------------------------------------------
@dataclass
class _Steps:
    """The ordered steps: latent ``u`` of the combined index (wide ``0..m_L-1``, narrow ``m_L..``)
    enters (+1, wide) or leaves (-1, narrow) at step ``step_of[u]`` (-1: never moves)."""

    step_of: np.ndarray
    phase: list[str]
    label: list[str]
    isolated_delta: list[float]


@torch.no_grad()
def _group_deltas(p1: _Pass1, e_s: torch.Tensor, e_l: torch.Tensor, unit_group: np.ndarray, n_groups: int,
                  sign: np.ndarray) -> np.ndarray:
    """``Σ_n ‖c_gn‖²`` per group, ``c_g = Σ_{u∈g} s_u z_u e_u`` over the combined latents ``u`` (the
    quadratic part of each group's effect on the narrow SAE's error; the linear part comes from pass 1).
    Sparse: each input's active latents are summed per group (``index_add`` over (input, group) keys)."""
    e_signed = torch.cat([e_l, e_s]) * torch.as_tensor(sign).unsqueeze(1)
    group = torch.as_tensor(unit_group)
    out = torch.zeros(n_groups, dtype=torch.float64)
    for batch in p1.batches:
        keep = group[batch.cols] >= 0
        rows, cols, values = batch.rows[keep], batch.cols[keep], batch.values[keep]
        if len(rows) == 0:
            continue
        keys, inverse = torch.unique(rows * n_groups + group[cols], return_inverse=True)
        sums = torch.zeros(len(keys), e_signed.shape[1], dtype=torch.float64)
        sums.index_add_(0, inverse, values.unsqueeze(1) * e_signed[cols])
        out.index_add_(0, keys % n_groups, (sums * sums).sum(1))
    return out.numpy()


def order_steps(p1: _Pass1, novel: np.ndarray, e_l: torch.Tensor, e_s: torch.Tensor, wide_group: np.ndarray,
                narrow_group: np.ndarray, group_quadratic: np.ndarray, insertion_delta: np.ndarray) -> _Steps:
    """The stitching order (module docstring): novel latents by insertion Δ, then groups and lone narrow
    latents by their isolated effect on the narrow SAE's mean squared error."""
    m_l, m_s = len(novel), len(narrow_group)
    step_of = np.full(m_l + m_s, -1, dtype=np.int64)
    phase, label, delta = ["narrow"], ["narrow SAE"], [0.0]
    for j in np.argsort(insertion_delta + np.where(novel, 0.0, np.inf), kind="stable")[: int(novel.sum())]:
        step_of[j] = len(phase)
        phase.append("insert")
        label.append(f"+L{j}")
        delta.append(float(insertion_delta[j]))
    n = p1.n
    norms_s = (e_s * e_s).sum(1).numpy()
    n_groups = int(group_quadratic.shape[0])
    linear = np.zeros(n_groups)
    np.add.at(linear, wide_group[wide_group >= 0], -2.0 * p1.insert_p[wide_group >= 0])
    np.add.at(linear, narrow_group[narrow_group >= 0], 2.0 * p1.narrow_p[narrow_group >= 0])
    group_delta = (group_quadratic + linear) / n
    lone = np.nonzero(narrow_group < 0)[0]
    # removing narrow latent i alone: Σ_n ‖r_n + z_ni e_i‖² − ‖r_n‖² = Σ z² ‖e_i‖² + 2 Σ z (r·e_i)
    lone_delta = (p1.narrow_q[lone] * norms_s[lone] + 2.0 * p1.narrow_p[lone]) / n
    items = [(float(group_delta[g]), 0, g) for g in range(n_groups)] + [(float(lone_delta[t]), 1, int(i)) for t, i in enumerate(lone)]
    items.sort(key=lambda item: (item[0], item[1], item[2]))
    wide_members: dict[int, list[int]] = {}
    for j in np.nonzero(wide_group >= 0)[0]:
        wide_members.setdefault(int(wide_group[j]), []).append(int(j))
    narrow_members: dict[int, list[int]] = {}
    for i in np.nonzero(narrow_group >= 0)[0]:
        narrow_members.setdefault(int(narrow_group[i]), []).append(int(i))
    for value, kind, key in items:
        step = len(phase)
        if kind == 0:
            for j in wide_members.get(key, []):
                step_of[j] = step
            for i in narrow_members.get(key, []):
                step_of[m_l + i] = step
            phase.append("swap")
            label.append(f"{'+'.join('L%d' % j for j in wide_members.get(key, []))} for "
                         f"{'+'.join('S%d' % i for i in narrow_members.get(key, []))}")
        else:
            step_of[m_l + key] = step
            phase.append("remove")
            label.append(f"-S{key}")
        delta.append(value)
    phase.append("bias")
    label.append("wide decoder bias")
    delta.append(float("nan"))
    return _Steps(step_of, phase, label, delta)


@torch.no_grad()
def _curve(x: torch.Tensor, narrow: Any, wide: Any, e_s: torch.Tensor, e_l: torch.Tensor, steps: _Steps,
           points: np.ndarray, p1: _Pass1) -> np.ndarray:
    """Summed squared error after each step in ``points`` (ascending step indices, 0 = narrow SAE).

    Sparse and exact: an input's residual only changes at the steps that move one of its active
    latents. Per input, its active latents in step order are accumulated (a running sum over at most
    its L0 entries), and each change of its squared residual is added at the first curve point at or
    after the step; the curve is the running sum of those changes over points."""
    m_l = e_l.shape[0]
    n_steps = len(steps.phase) - 1  # the last step is the bias swap
    b_s = narrow.b_dec.detach().to(torch.float64)
    shift = wide.b_dec.detach().to(torch.float64) - b_s
    e_all = torch.cat([e_l, e_s])
    e_signed = torch.cat([e_l, -e_s])  # wide latents enter (+), narrow latents leave (−)
    step_of = torch.as_tensor(steps.step_of)
    point_of_step = torch.as_tensor(np.searchsorted(points, np.arange(n_steps + 1), side="left"))
    bias_point = int(np.searchsorted(points, n_steps, side="left"))
    d = e_signed.shape[1]
    changes = torch.zeros(len(points) + 1, dtype=torch.float64)
    for batch in p1.batches:
        size = batch.stop - batch.start
        r0 = _residual(_inputs(narrow, x, batch), b_s, batch, e_all, batch.cols >= m_l)
        order = torch.argsort((batch.rows - batch.start) * (n_steps + 1) + step_of[batch.cols])
        rows, cols, values = batch.rows[order] - batch.start, batch.cols[order], batch.values[order]
        counts = torch.bincount(rows, minlength=size)
        rank = torch.arange(len(rows)) - (torch.cumsum(counts, 0) - counts)[rows]
        width = int(counts.max()) if len(rows) else 0
        v0 = (r0 * r0).sum(1)
        changes[0] += v0.sum()
        r_final, v_final = r0.clone(), v0.clone()
        per_chunk = max(GROUP_BLOCK // max(width * d, 1), 1)
        for lo in range(0, size if width else 0, per_chunk):
            hi = min(lo + per_chunk, size)
            sel = (rows >= lo) & (rows < hi)
            r_sel, c_sel, k_sel = rows[sel] - lo, cols[sel], rank[sel]
            padded = torch.zeros(hi - lo, width, d, dtype=torch.float64)
            padded[r_sel, k_sel] = values[sel].unsqueeze(1) * e_signed[c_sel]
            after = r0[lo:hi].unsqueeze(1) - padded.cumsum(1)  # residual after each active latent, in step order
            v = (after * after).sum(-1)
            before = torch.cat([v0[lo:hi].unsqueeze(1), v[:, :-1]], dim=1)
            changes.index_add_(0, point_of_step[step_of[c_sel]], v[r_sel, k_sel] - before[r_sel, k_sel])
            last = (counts[lo:hi] - 1).clamp_min(0)
            active = counts[lo:hi] > 0
            idx = torch.arange(hi - lo)
            r_final[lo:hi] = torch.where(active.unsqueeze(1), after[idx, last], r0[lo:hi])
            v_final[lo:hi] = torch.where(active, v[idx, last], v0[lo:hi])
        with_bias = r_final - shift  # the last step: the wide SAE's decoder bias
        changes[bias_point] += ((with_bias * with_bias).sum(1) - v_final).sum()
    return torch.cumsum(changes, 0)[: len(points)].numpy()


def curve_points(n_steps: int, phase_end: int, max_points: int) -> np.ndarray:
    """Step indices at which the curve is evaluated: all ``0..n_steps`` when they fit in ``max_points``,
    else evenly spread ones that always include 0, the end of the insert phase and the last step."""
    if n_steps + 1 <= max_points:
        return np.arange(n_steps + 1)
    spread = np.unique(np.round(np.linspace(0, n_steps, max(max_points - 1, 2))).astype(np.int64))
    return np.unique(np.concatenate([spread, [0, phase_end, n_steps - 1, n_steps]]))


# --------------------------------------------------------------------------------------------
# the whole rung
# --------------------------------------------------------------------------------------------
def stitch_rung(narrow: Any, wide: Any, x: torch.Tensor, *, group_threshold: float = 0.7, max_points: int = 1024,
                partner: np.ndarray | None = None, batch_rows: int = BATCH_ROWS) -> RungResult:
    """Stitch ``narrow`` into ``wide`` on inputs ``x [N, d_in]`` (model units): insertion test, proxy
    cosines, swap groups and the stitched curve (module docstring). ``partner``: optional narrow →
    wide latent matching whose activation correlation is measured on the same pass."""
    check_stitchable(narrow, wide)
    if x.shape[0] == 0:
        raise TaskError("no inputs to stitch on", field="n_inputs")
    x = x.detach().cpu()
    narrow, wide = narrow.cpu(), wide.cpu()
    e_s, e_l = effective_decoder(narrow), effective_decoder(wide)
    p1 = _first_pass(narrow, wide, x, e_s, e_l, partner, batch_rows)
    if p1.total_ss <= 0:
        raise TaskError("the inputs have no variance; the reconstruction error cannot be normalised", field="n_inputs")
    n = p1.n
    norms_l = (e_l * e_l).sum(1).numpy()
    insertion_delta = (p1.insert_q * norms_l - 2.0 * p1.insert_p) / n
    novel = insertion_delta < 0
    wide_dirs, narrow_dirs = wide.decoder_directions(), narrow.decoder_directions()
    max_cos = row_max_cosines(wide_dirs, narrow_dirs)
    parent, edge_w, edge_n = parents_and_edges(wide_dirs, narrow_dirs, group_threshold)
    wide_group, narrow_group = swap_groups(~novel, parent, edge_w, edge_n, narrow.d_sae)
    n_groups = int(wide_group.max()) + 1 if (wide_group >= 0).any() else 0
    unit_group = np.concatenate([wide_group, narrow_group])
    sign = np.concatenate([np.ones(wide.d_sae), -np.ones(narrow.d_sae)])
    quadratic = _group_deltas(p1, e_s, e_l, unit_group, n_groups, sign) if n_groups else np.zeros(0)
    steps = order_steps(p1, novel, e_l, e_s, wide_group, narrow_group, quadratic, insertion_delta)
    n_steps = len(steps.phase) - 1
    phase_end = int(novel.sum())
    points = curve_points(n_steps, phase_end, max_points)
    sse = _curve(x, narrow, wide, e_s, e_l, steps, points, p1)
    fvu = sse / p1.total_ss
    table = _steps_table(steps, points, fvu, p1, wide.d_sae, narrow.d_sae)
    return RungResult(
        narrow_width=narrow.d_sae, wide_width=wide.d_sae, n_inputs=n, insertion_delta=insertion_delta, novel=novel,
        max_cosine=max_cos, parent=parent, group=wide_group, frequency=p1.fire_wide / n,
        narrow_frequency=p1.fire_narrow / n, fvu_narrow=p1.sse_narrow / p1.total_ss, fvu_wide=p1.sse_wide / p1.total_ss,
        steps=table, step_wide=steps.step_of[: wide.d_sae].copy(), step_narrow=steps.step_of[wide.d_sae:].copy(),
        matched_activation_correlation=p1.correlation,
        extra={"d_in": narrow.d_in, "groups": n_groups, "lone_narrow": int((narrow_group < 0).sum()), "steps": n_steps,
               "curve_points": int(len(points)), "group_threshold": group_threshold},
    )


def _steps_table(steps: _Steps, points: np.ndarray, fvu: np.ndarray, p1: _Pass1, m_l: int, m_s: int) -> pd.DataFrame:
    """One row per evaluated step: what moved, the stitched dictionary's size and L0, and the FVU."""
    n = p1.n
    freq = np.concatenate([p1.fire_wide, p1.fire_narrow]) / n
    step_of = steps.step_of
    n_steps = len(steps.phase) - 1
    moved_wide = np.bincount(step_of[:m_l][step_of[:m_l] >= 0], minlength=n_steps + 1)
    moved_narrow = np.bincount(step_of[m_l:][step_of[m_l:] >= 0], minlength=n_steps + 1)
    l0_change = np.zeros(n_steps + 1)
    signed = np.concatenate([freq[:m_l], -freq[m_l:]])
    np.add.at(l0_change, step_of[step_of >= 0], signed[step_of >= 0])
    wide_in = np.cumsum(moved_wide)
    narrow_out = np.cumsum(moved_narrow)
    l0 = freq[m_l:].sum() + np.cumsum(l0_change)
    rows = []
    for point, value in zip(points, fvu):
        rows.append({"step": int(point), "phase": steps.phase[point], "moved": steps.label[point],
                     "wide_latents": int(wide_in[point]), "narrow_latents": int(m_s - narrow_out[point]),
                     "l0": float(l0[point]), "isolated_delta_mse": steps.isolated_delta[point], "fvu": float(value)})
    return pd.DataFrame(rows, columns=["step", "phase", "moved", "wide_latents", "narrow_latents", "l0",
                                       "isolated_delta_mse", "fvu"])


# --------------------------------------------------------------------------------------------
# the proxy and ground truth
# --------------------------------------------------------------------------------------------
def proxy_auc(max_cosine: np.ndarray, novel: np.ndarray) -> float | None:
    """Area under the ROC curve of the score ``1 − max_cosine`` for the novel latents (ties count ½;
    the Mann–Whitney form). None when either class is empty."""
    from scipy.stats import rankdata

    pos, neg = int(novel.sum()), int((~novel).sum())
    if pos == 0 or neg == 0:
        return None
    ranks = rankdata(-np.asarray(max_cosine, dtype=np.float64))
    return float((ranks[novel].sum() - pos * (pos + 1) / 2) / (pos * neg))


def proxy_agreement(max_cosine: np.ndarray, novel: np.ndarray, threshold: float) -> float:
    """Fraction of wide latents on which the proxy (novel iff ``max_cosine < threshold``) agrees
    with the insertion test."""
    return float(((np.asarray(max_cosine) < threshold) == np.asarray(novel)).mean())


def ground_truth_novelty(wide_dirs: torch.Tensor, narrow_dirs: torch.Tensor, truth: torch.Tensor,
                         threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """On a synthetic organism: for each wide latent, whether it matches a true feature (best cosine
    ≥ ``threshold``) and whether that feature is *missed* by the narrow SAE (no narrow latent reaches
    ``threshold`` with it). Returns ``(matches [m_L], missed [m_L])`` (missed is False where no match)."""
    truth_dirs = torch.nn.functional.normalize(truth.to(torch.float32), dim=1)
    cos = wide_dirs.to(torch.float32) @ truth_dirs.T
    best, feature = cos.max(dim=1)
    recovered = row_max_cosines(truth_dirs, narrow_dirs) >= threshold
    matches = best.numpy() >= threshold
    missed = matches & ~recovered[feature.numpy()]
    return matches, missed


__all__ = ["PROXY_THRESHOLDS", "RungResult", "check_stitchable", "curve_points", "effective_decoder",
           "ground_truth_novelty", "parents_and_edges", "proxy_agreement", "proxy_auc", "stitch_rung", "swap_groups"]
