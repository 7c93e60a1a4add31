"""SAE stitching kernel: insertion test, proxy, groups and the stitched curve against brute-force
recomputations and constructed dictionaries with known answers."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

from benchmark.errors import TaskError
from benchmark.metrics.stitching import (
    curve_points, effective_decoder, ground_truth_novelty, proxy_agreement, proxy_auc, stitch_rung, swap_groups,
)
from benchmark.sae.model import SAE, SAEConfig

D = 24


def basis(n: int = D, seed: int = 0) -> torch.Tensor:
    """Orthonormal rows ``[n, D]``."""
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0].T[:n].float().contiguous()


def relu_sae(rows: torch.Tensor, *, bias: float = -1e-3, b_enc: torch.Tensor | None = None) -> SAE:
    """A ReLU SAE whose encoder is its decoder's transpose (exact on orthonormal rows, up to ``bias``)."""
    enc_bias = torch.full((rows.shape[0],), bias) if b_enc is None else b_enc
    return SAE(SAEConfig("standard", rows.shape[1], rows.shape[0]), W_enc=rows.T.clone(), W_dec=rows.clone(), b_enc=enc_bias)


def sparse_codes(n: int, m: int, p: float = 0.3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    values = 0.1 + torch.rand(n, m, generator=g)
    return values * (torch.rand(n, m, generator=g) < p)


def nested(m: int = 8, k: int = 4):
    """A narrow SAE on ``m`` orthonormal directions and a wide one on the same plus ``k`` new ones
    (and one latent that never fires), with data drawn on all ``m + k`` directions."""
    rows = basis(m + k + 1)
    narrow = relu_sae(rows[:m])
    b_enc = torch.full((m + k + 1,), -1e-3)
    b_enc[-1] = -1e3  # a latent that never fires: inserting it changes nothing, so it is not novel
    wide = relu_sae(rows, b_enc=b_enc)
    x = sparse_codes(3000, m + k) @ rows[: m + k]
    return narrow, wide, x


def brute_mse(x: torch.Tensor, parts: list[torch.Tensor], bias: torch.Tensor) -> float:
    recon = bias.double() + sum(parts)
    return float(((x.double() - recon) ** 2).sum(1).mean())


def decoded_rows(sae: SAE) -> torch.Tensor:
    """``[d_sae, d]``: what ``sae.decode`` adds for a unit activation of each latent (read through the
    SAE's own decode, independently of the kernel's ``effective_decoder``)."""
    wide = copy.deepcopy(sae).double()  # float64, like the kernel, so that rounding cannot hide a difference
    with torch.no_grad():
        return wide.decode(torch.eye(sae.d_sae, dtype=torch.float64)) - wide.b_dec


def contributions(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """``[n, d_sae, d]``: each latent's contribution to the reconstruction (its own activation)."""
    z = sae.encode(x).double()
    return z.unsqueeze(-1) * decoded_rows(sae).unsqueeze(0)


def test_nested_dictionaries_have_exactly_the_new_latents_novel():
    narrow, wide, x = nested(8, 4)
    result = stitch_rung(narrow, wide, x)
    expected = np.zeros(13, dtype=bool)
    expected[8:12] = True
    assert (result.novel == expected).all()
    assert result.novel_fraction == pytest.approx(4 / 13)
    assert result.frequency[-1] == 0 and result.insertion_delta[-1] == 0.0  # "stays": a reconstruction latent
    # the proxy: copies have cosine 1, new orthogonal directions cosine ~0
    assert np.allclose(result.max_cosine[:8], 1.0, atol=1e-6) and (np.abs(result.max_cosine[8:]) < 1e-5).all()
    # AUC: every novel latent ranks below the 8 copies; against the dead latent (also ~0) the order is arbitrary
    assert 32 / 36 <= proxy_auc(result.max_cosine, result.novel) <= 1.0


def test_insertion_delta_equals_brute_force_for_every_latent():
    narrow, wide, x = nested(8, 4)
    result = stitch_rung(narrow, wide, x)
    c_narrow, c_wide = contributions(narrow, x), contributions(wide, x)
    base = brute_mse(x, [c_narrow.sum(1)], narrow.b_dec)
    for j in range(wide.d_sae):
        inserted = brute_mse(x, [c_narrow.sum(1), c_wide[:, j]], narrow.b_dec)
        assert result.insertion_delta[j] == pytest.approx(inserted - base, abs=1e-10)


def random_topk(width: int, k: int, seed: int, *, rescale: bool = False) -> SAE:
    """A TopK SAE; with ``rescale`` its decoder rows have norms in [0.5, 2] and activations are rescaled
    by them (SAELens' ``rescale_acts_by_decoder_norm``), so its effective rows differ from ``W_dec``."""
    g = torch.Generator().manual_seed(seed)
    dec = torch.nn.functional.normalize(torch.randn(width, D, generator=g), dim=1)
    enc = dec.T + 0.1 * torch.randn(D, width, generator=g)
    if rescale:
        dec = dec * (0.5 + 1.5 * torch.rand(width, 1, generator=g))
    return SAE(SAEConfig("topk", D, width, k=k, rescale_acts_by_decoder_norm=rescale), W_enc=enc, W_dec=dec,
               b_dec=0.05 * torch.randn(D, generator=g), b_enc=0.01 * torch.randn(width, generator=g))


def test_effective_decoder_is_what_decode_multiplies_activations_with():
    for sae in (random_topk(8, 2, seed=1), random_topk(8, 2, seed=2, rescale=True)):
        assert torch.allclose(effective_decoder(sae), decoded_rows(sae), atol=1e-6)
    assert not torch.allclose(effective_decoder(random_topk(8, 2, seed=2, rescale=True)).float(),
                              random_topk(8, 2, seed=2, rescale=True).W_dec)


@pytest.fixture(scope="module")
def topk_rung():
    narrow, wide = random_topk(16, 3, seed=3), random_topk(32, 4, seed=4, rescale=True)
    g = torch.Generator().manual_seed(5)
    x = sparse_codes(1500, 40, p=0.1, seed=6) @ torch.randn(40, D, generator=g)
    return narrow, wide, x, stitch_rung(narrow, wide, x, group_threshold=0.3)


def test_topk_latents_keep_their_own_activation(topk_rung):
    narrow, wide, x, result = topk_rung
    c_narrow, c_wide = contributions(narrow, x), contributions(wide, x)
    base = brute_mse(x, [c_narrow.sum(1)], narrow.b_dec)
    brute = [brute_mse(x, [c_narrow.sum(1), c_wide[:, j]], narrow.b_dec) - base for j in range(wide.d_sae)]
    assert np.allclose(result.insertion_delta, brute, atol=1e-9)
    assert (result.novel == (np.array(brute) < 0)).all()
    tot = float(((x.double() - x.double().mean(0)) ** 2).sum(1).mean())
    assert result.fvu_narrow == pytest.approx(base / tot, rel=1e-9)
    assert result.fvu_wide == pytest.approx(brute_mse(x, [c_wide.sum(1)], wide.b_dec) / tot, rel=1e-9)


def test_stitched_curve_equals_brute_force_at_every_step(topk_rung):
    narrow, wide, x, result = topk_rung
    c_narrow, c_wide = contributions(narrow, x), contributions(wide, x)
    tot = float(((x.double() - x.double().mean(0)) ** 2).sum(1).mean())
    n_steps = int(result.extra["steps"])
    assert list(result.steps["step"]) == list(range(n_steps + 1))
    for row in result.steps.itertuples():
        wide_in = torch.as_tensor((result.step_wide >= 1) & (result.step_wide <= row.step))
        narrow_in = torch.as_tensor(~((result.step_narrow >= 1) & (result.step_narrow <= row.step)))
        bias = wide.b_dec if row.step == n_steps else narrow.b_dec
        mse = brute_mse(x, [c_narrow[:, narrow_in].sum(1), c_wide[:, wide_in].sum(1)], bias)
        assert row.fvu == pytest.approx(mse / tot, abs=1e-10), row
    assert result.steps["fvu"].iloc[0] == pytest.approx(result.fvu_narrow, abs=1e-10)
    assert result.steps["fvu"].iloc[-1] == pytest.approx(result.fvu_wide, abs=1e-10)
    # every wide latent enters once, every narrow latent leaves once, the bias step moves none
    assert (result.step_wide >= 1).all() and (result.step_narrow >= 1).all() and (result.step_wide < n_steps).all()
    # novel latents enter first, by insertion effect
    novel_steps = result.step_wide[result.novel]
    assert sorted(novel_steps) == list(range(1, int(result.novel.sum()) + 1))
    order = np.argsort(novel_steps)
    assert (np.diff(result.insertion_delta[result.novel][order]) >= 0).all()
    # each swap/remove step's isolated effect (what orders them) is that step applied alone to the narrow SAE
    base = brute_mse(x, [c_narrow.sum(1)], narrow.b_dec)
    later = result.steps[result.steps["phase"].isin(["swap", "remove"])]
    assert len(later) and (np.diff(later["isolated_delta_mse"].to_numpy()) >= 0).all()
    for row in later.itertuples():
        wide_in = torch.as_tensor(result.step_wide == row.step)
        narrow_in = torch.as_tensor(result.step_narrow != row.step)
        alone = brute_mse(x, [c_narrow[:, narrow_in].sum(1), c_wide[:, wide_in].sum(1)], narrow.b_dec)
        assert row.isolated_delta_mse == pytest.approx(alone - base, abs=1e-10), row
    # monotone is "never rises": compare with the curve itself
    rises = np.diff(result.steps["fvu"].to_numpy())
    assert result.monotone == bool((rises <= 1e-9 * result.fvu_narrow).all())
    assert result.max_increase == pytest.approx(max(rises.max(), 0.0) if rises.max() > 1e-9 * result.fvu_narrow else 0.0)


def test_sparse_points_read_the_same_curve(topk_rung):
    narrow, wide, x, full = topk_rung
    few = stitch_rung(narrow, wide, x, group_threshold=0.3, max_points=7)
    assert len(few.steps) <= 9 and few.steps["step"].iloc[0] == 0
    by_step = dict(zip(full.steps["step"], full.steps["fvu"]))
    for step, fvu in zip(few.steps["step"], few.steps["fvu"]):
        assert fvu == pytest.approx(by_step[step], abs=1e-12)
    n_steps = int(full.extra["steps"])
    points = curve_points(n_steps, 5, 7)
    assert points[0] == 0 and points[-1] == n_steps and 5 in points and n_steps - 1 in points


def test_l0_along_the_curve_is_the_stitched_sets_firing_rate(topk_rung):
    narrow, wide, x, result = topk_rung
    z_n, z_w = (narrow.encode(x) > 0).double(), (wide.encode(x) > 0).double()
    for row in result.steps.itertuples():
        wide_in = torch.as_tensor((result.step_wide >= 1) & (result.step_wide <= row.step))
        narrow_in = torch.as_tensor(~((result.step_narrow >= 1) & (result.step_narrow <= row.step)))
        l0 = float(z_n[:, narrow_in].sum(1).mean() + z_w[:, wide_in].sum(1).mean())
        assert row.l0 == pytest.approx(l0, abs=1e-9)


def test_swap_groups_are_connected_components():
    # wide 0,1 share parent 0 -> one group; wide 2 (parent 1) links to narrow 2 above threshold too;
    # wide 3 is novel (left out); narrow 3 parents nothing
    reconstruction = np.array([True, True, True, False])
    parent = np.array([0, 0, 1, 3])
    edge_w, edge_n = np.array([2, 3]), np.array([2, 1])  # (3, 1) belongs to a novel latent: ignored
    wide_group, narrow_group = swap_groups(reconstruction, parent, edge_w, edge_n, 4)
    assert list(wide_group) == [0, 0, 1, -1]
    assert list(narrow_group) == [0, 1, 1, -1]


def test_proxy_auc_and_agreement_against_pairwise_counts():
    rng = np.random.default_rng(0)
    cos = np.round(rng.random(60), 1)  # ties on purpose
    novel = rng.random(60) < 0.4
    pos, neg = cos[novel], cos[~novel]
    wins = sum((p < q) + 0.5 * (p == q) for p, q in itertools.product(pos, neg))
    assert proxy_auc(cos, novel) == pytest.approx(wins / (len(pos) * len(neg)))
    assert proxy_auc(cos, np.zeros(60, dtype=bool)) is None
    for t in (0.3, 0.7):
        assert proxy_agreement(cos, novel, t) == pytest.approx(np.mean([(c < t) == n for c, n in zip(cos, novel)]))


def test_ground_truth_novelty_names_the_missed_features():
    truth = basis(12)
    narrow_dirs, wide_dirs = truth[:8], torch.cat([truth, torch.nn.functional.normalize(truth[:2] + truth[2:4], dim=1)])
    matches, missed = ground_truth_novelty(wide_dirs, narrow_dirs, truth, 0.9)
    assert list(matches) == [True] * 12 + [False, False]
    assert list(missed) == [False] * 8 + [True] * 4 + [False, False]


def test_sae_pairs_that_cannot_be_stitched_are_refused():
    narrow, wide, x = nested(4, 2)
    other = SAE(SAEConfig("standard", D, wide.d_sae, input_normalisation="layer_norm"), W_enc=wide.W_enc.clone(),
                W_dec=wide.W_dec.clone())
    with pytest.raises(TaskError) as err:
        stitch_rung(narrow, other, x)
    assert err.value.field == "normalize_activations" and "\n" not in str(err.value)
    small = SAE(SAEConfig("standard", 8, 4), W_enc=torch.zeros(8, 4), W_dec=torch.zeros(4, 8))
    with pytest.raises(TaskError, match="inputs of different size"):
        stitch_rung(small, wide, x)
