"""Task ``synthetic``: metric code against independent computations and closed forms; end to end."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import pearsonr, spearmanr

from benchmark.submission.manifest import load_manifest
from benchmark.metrics.matching import mcc
from benchmark.results import ResultStore
from benchmark.runner import run_benchmark
from benchmark.sae.model import SAE, SAEConfig
from benchmark.metrics.reconstruction import reconstruction_stats
from tasks.synthetic import SyntheticTask, evaluate_preset, proxy_validity


def scipy_mcc(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = a @ b.T
    rows, cols = linear_sum_assignment(-cos)
    return float(cos[rows, cols].mean())


def sae_from(decoder: np.ndarray, encoder: np.ndarray | None = None, arch: str = "standard") -> SAE:
    dec = torch.tensor(decoder, dtype=torch.float32)
    enc = dec.T.clone() if encoder is None else torch.tensor(encoder, dtype=torch.float32).T.contiguous()
    return SAE(SAEConfig(architecture=arch, d_in=dec.shape[1], d_sae=dec.shape[0]), W_enc=enc, W_dec=dec)


@dataclass
class _Preset:
    name: str = "stub"


@dataclass
class StubOrganism:
    """Just what evaluate_preset reads: a true dictionary and held-out data."""

    dictionary: np.ndarray
    preset: _Preset = field(default_factory=_Preset)

    @property
    def n_features(self):
        return self.dictionary.shape[0]

    @property
    def d_in(self):
        return self.dictionary.shape[1]

    @property
    def firing_probabilities(self):
        return torch.full((self.n_features,), 0.1)

    def true_dictionary(self):
        return torch.tensor(self.dictionary, dtype=torch.float32)

    def eval_data(self, n=None):
        rng = np.random.default_rng(1)
        codes = rng.exponential(size=(n or 512, self.n_features)) * (rng.random((n or 512, self.n_features)) < 0.1)
        return torch.tensor(codes @ self.dictionary, dtype=torch.float32)


def rows_by(metrics, subset="preset=stub"):
    return {m.metric: m for m in metrics if m.subset == subset}


def test_permuted_copy_scores_one():
    truth = np.linalg.qr(np.random.default_rng(0).standard_normal((16, 16)))[0][:12]
    saes = {s: sae_from(truth[np.random.default_rng(s).permutation(12)]) for s in range(3)}
    metrics, tables = evaluate_preset(saes, StubOrganism(truth), chance_trials=2)
    row = rows_by(metrics)
    for name in ("gt_mcc", "decoder_pw_mcc", "gt_mean_max_cosine", "gt_recovered_fraction", "shared_fraction"):
        assert row[name].value == pytest.approx(1.0, abs=1e-6), name
    assert row["gt_mcc"].n == 3 and row["decoder_pw_mcc"].n == 3
    assert len(tables["pairs"]) == 3 and len(tables["per_seed"]) == 3


def test_sign_flip_is_signed():
    e = np.eye(4)
    assert mcc(e[:1], -e[:1]) == pytest.approx(-1.0)  # one feature: its negation scores -1
    # orthonormal dictionary vs its negation: every diagonal pair is -1, so the optimum takes the
    # zero off-diagonal cosines instead: 0, not 1 as |cos| would say
    assert mcc(e, -e) == pytest.approx(0.0, abs=1e-12)
    metrics, _ = evaluate_preset({0: sae_from(-e[:1])}, StubOrganism(e[:1]), chance_trials=1)
    assert rows_by(metrics)["gt_mcc"].value == pytest.approx(-1.0)


def test_known_partial_recovery():
    """8 orthonormal true features in 16 dims; 4 learned exactly, 4 at cosine c with their feature."""
    c = 0.6
    truth = np.eye(16)[:8]
    learned = truth.copy()
    for i in range(4, 8):
        learned[i] = c * np.eye(16)[i] + np.sqrt(1 - c**2) * np.eye(16)[8 + i]
    metrics, tables = evaluate_preset({7: sae_from(learned)}, StubOrganism(truth), chance_trials=1)
    row = rows_by(metrics)
    assert row["gt_mcc"].value == pytest.approx((4 + 4 * c) / 8)
    assert row["gt_mean_max_cosine"].value == pytest.approx((4 + 4 * c) / 8)
    assert row["gt_recovered_fraction"].value == pytest.approx(0.5)
    assert row["decoder_pw_mcc"].value is None and "two seeds" in row["decoder_pw_mcc"].note
    per_seed = {m.subset: m.value for m in metrics if m.metric == "gt_mcc"}
    assert per_seed["preset=stub,seed=7"] == pytest.approx((4 + 4 * c) / 8)
    features = tables["features"]
    assert np.allclose(np.sort(features["matched_cosine"].to_numpy()), [c] * 4 + [1] * 4)


def test_pw_mcc_and_gt_mcc_match_scipy():
    rng = np.random.default_rng(3)
    truth = rng.standard_normal((20, 10))
    decoders = {s: truth + 0.7 * rng.standard_normal((24, 10))[:20] if s else rng.standard_normal((24, 10)) for s in range(3)}
    decoders = {s: np.vstack([d, rng.standard_normal((24 - len(d), 10))]) if len(d) < 24 else d for s, d in decoders.items()}
    metrics, _ = evaluate_preset({s: sae_from(d) for s, d in decoders.items()}, StubOrganism(truth), chance_trials=1)
    row = rows_by(metrics)
    gt = [scipy_mcc(truth, decoders[s]) for s in range(3)]
    pw = [scipy_mcc(decoders[a], decoders[b]) for a, b in itertools.combinations(range(3), 2)]
    assert row["gt_mcc"].value == pytest.approx(np.mean(gt), abs=1e-6)
    assert row["gt_mcc"].std == pytest.approx(np.std(gt, ddof=1), abs=1e-6)
    assert row["decoder_pw_mcc"].value == pytest.approx(np.mean(pw), abs=1e-6)
    best = (truth / np.linalg.norm(truth, axis=1, keepdims=True)) @ (
        decoders[1] / np.linalg.norm(decoders[1], axis=1, keepdims=True)).T
    per_seed = {m.subset: m.value for m in metrics if m.metric == "gt_mcc"}
    assert per_seed["preset=stub,seed=1"] == pytest.approx(gt[1], abs=1e-6)
    assert best.max(1).mean() >= gt[1] - 1e-9  # mean max cosine bounds MCC from above


def test_shared_fraction_needs_encoder_and_decoder():
    dec = np.eye(8)
    enc_b = np.eye(8)
    # latents 0-3 of seed 1: same decoder row, encoder row at cos 0.6 with seed 0's (rows 4-7 unchanged)
    enc_b[:4] = np.eye(8)[:4] * 0.6 + np.roll(np.eye(8), 4, axis=1)[:4] * 0.8
    saes = {0: sae_from(dec), 1: sae_from(dec, encoder=enc_b)}
    metrics, tables = evaluate_preset(saes, StubOrganism(np.eye(8)), chance_trials=1)
    assert rows_by(metrics)["decoder_pw_mcc"].value == pytest.approx(1.0)
    assert rows_by(metrics)["shared_fraction"].value == pytest.approx(0.5)


def test_chance_row_agrees_with_monte_carlo():
    truth = np.random.default_rng(0).standard_normal((24, 8))
    saes = {0: sae_from(np.random.default_rng(1).standard_normal((16, 8))), 1: sae_from(np.random.default_rng(2).standard_normal((16, 8)))}
    metrics, _ = evaluate_preset(saes, StubOrganism(truth), chance_trials=5)
    rng = np.random.default_rng(12345)
    gt_mc = [scipy_mcc(rng.standard_normal((24, 8)), rng.standard_normal((16, 8))) for _ in range(200)]
    pw_mc = [scipy_mcc(rng.standard_normal((16, 8)), rng.standard_normal((16, 8))) for _ in range(200)]
    row = rows_by(metrics)
    # 5 trials of the task vs 200 Monte Carlo draws: within 4 standard errors of the 5-trial mean
    assert abs(row["gt_mcc_chance"].value - np.mean(gt_mc)) < 4 * np.std(gt_mc) / np.sqrt(5)
    assert abs(row["chance_mcc"].value - np.mean(pw_mc)) < 4 * np.std(pw_mc) / np.sqrt(5)
    assert np.mean(pw_mc) > 0.4  # chance is far from 0 at small d


def test_reconstruction_stats_direct():
    rng = np.random.default_rng(5)
    sae = sae_from(rng.standard_normal((12, 6)))
    x = torch.tensor(rng.standard_normal((300, 6)), dtype=torch.float32)
    got = reconstruction_stats(sae, x, batch=128)
    z = torch.relu(x @ sae.W_enc + sae.b_enc)  # b_dec = 0
    x_hat = z @ sae.W_dec
    ev = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert got["l0"] == pytest.approx((z > 0).sum(1).float().mean().item())
    assert got["explained_variance"] == pytest.approx(ev.item(), abs=1e-5)
    assert got["never_fired_fraction"] == pytest.approx(1 - (z > 0).any(0).float().mean().item())


def _frame(rows):
    return pd.DataFrame(rows, columns=["task", "submission", "metric", "subset", "value", "architecture", "timestamp"])


def test_proxy_validity_matches_scipy():
    gt = [0.9, 0.5, 0.7, 0.3, 0.8]
    pw = [0.85, 0.55, 0.6, 0.35, 0.9]
    archs = ["topk", "topk", "topk", "standard", "standard"]
    rows = []
    for i, (g, p, a) in enumerate(zip(gt, pw, archs)):
        rows += [("synthetic", f"r/s{i}", "gt_mcc", "preset=toy", g, a, "2026-01-01"),
                 ("synthetic", f"r/s{i}", "decoder_pw_mcc", "preset=toy", p, a, "2026-01-01"),
                 ("synthetic", f"r/s{i}", "gt_mcc", "preset=toy,seed=1", 0.0, a, "2026-01-01"),  # ignored
                 ("cross-seed", f"r/s{i}", "decoder_pw_mcc", "preset=toy", 0.0, a, "2026-01-01")]  # other task: ignored
    rows.append(("synthetic", "r/s0", "gt_mcc", "preset=toy", 0.1, "topk", "2025-01-01"))  # older row: ignored
    out = proxy_validity(_frame(rows)).set_index("group")
    assert out.loc["all", "n"] == 5
    assert out.loc["all", "pearson"] == pytest.approx(pearsonr(pw, gt)[0])
    assert out.loc["all", "spearman"] == pytest.approx(spearmanr(pw, gt)[0])
    assert out.loc["architecture=topk", "pearson"] == pytest.approx(pearsonr(pw[:3], gt[:3])[0])
    assert np.isnan(out.loc["architecture=standard", "pearson"]) and "fewer" in out.loc["architecture=standard", "note"]
    assert proxy_validity(_frame([])).empty


MANIFEST = """kind = "recipe"
name = "test/{name}"
title = "tiny"
authors = ["t"]
license = "MIT"

[recipe]
architecture = "topk"
width = 32
seeds = [1, 2]
trains_on = "synthetic"
presets = ["{preset}"]

[recipe.hyperparameters]
k = 3
lr = 1e-2
steps = 30
batch_size = 256
init = "unit"
"""


def test_end_to_end_recipe(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(MANIFEST.format(name="tiny", preset="song2025-toy"))
    bad = tmp_path / "bad.toml"
    bad.write_text(MANIFEST.format(name="bad", preset="no-such-preset"))
    manifests = [load_manifest(path), load_manifest(bad)]
    summary = run_benchmark(manifests, ["synthetic"], results_dir=tmp_path / "results", cache_dir=tmp_path / "cache", quiet=True)
    status = {o.submission: o for o in summary.outcomes}
    assert status["test/tiny"].status == "done", status["test/tiny"].detail
    assert status["test/bad"].status == "failed"
    assert "bad.toml" in status["test/bad"].detail and "recipe.presets[0]" in status["test/bad"].detail
    frame = ResultStore(tmp_path / "results").read()
    main = frame[(frame.metric == "gt_mcc") & (frame.subset == "preset=song2025-toy")]
    assert len(main) == 1 and main.iloc[0]["n"] == 2 and main.iloc[0]["model"] == "synthetic:song2025-toy"
    assert set(frame[frame.subset.str.contains("seed=")].subset) == {"preset=song2025-toy,seed=1", "preset=song2025-toy,seed=2"}
    assert frame["data_hash"].notna().all()
    # the toy preset is small enough for the dense solve: no kernel pass ran
    assert {json.dumps(json.loads(e)["provenance"]) for e in frame.extra} == {'{"matching_kernels": ["dense"]}'}
    again = run_benchmark([load_manifest(path)], ["synthetic"], results_dir=tmp_path / "results", cache_dir=tmp_path / "cache", quiet=True)
    assert again.outcomes[0].status == "cached"


def test_not_applicable_messages(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(MANIFEST.format(name="m", preset="song2025-toy").replace('trains_on = "synthetic"\npresets = ["song2025-toy"]',
                    'trains_on = "model"') + '\n[model]\nname = "x"\nhook = "h"\npackage = "p"\n')
    assert "model" in SyntheticTask.not_applicable(load_manifest(path))
    checkpoints = tmp_path / "c.toml"
    checkpoints.write_text('''kind = "checkpoints"
name = "t/c"
title = "c"
authors = ["t"]
license = "MIT"
tags = ["preset:song2025-toy"]
[model]
name = "anything"
hook = "x"
package = "canonbench"
[sae]
architecture = "topk"
width = 32
[[checkpoints]]
seed = 0
local = "seed0"
''')
    assert SyntheticTask.not_applicable(load_manifest(checkpoints)) is None
    checkpoints.write_text(checkpoints.read_text().replace('tags = ["preset:song2025-toy"]', "tags = []"))
    assert "synthetic preset" in SyntheticTask.not_applicable(load_manifest(checkpoints))


def test_trained_saes_are_cached(tmp_path):
    from benchmark.data.organisms import Organism
    from benchmark.submission.manifest import load_manifest as load
    from benchmark.training.cache import organism_data, train_or_load

    path = tmp_path / "tiny.toml"
    path.write_text(MANIFEST.format(name="tiny", preset="song2025-toy"))
    spec = load(path).submission.recipe
    organism = Organism("song2025-toy")
    first, records = train_or_load(spec, organism_data(organism), cache_dir=tmp_path, device="cpu", quiet=True)
    second, records2 = train_or_load(spec, organism_data(organism), cache_dir=tmp_path, device="cpu", quiet=True)
    assert all(r["trained_now"] for r in records) and not any(r["trained_now"] for r in records2)
    assert [r["training_key"] for r in records] == [r["training_key"] for r in records2]
    for seed in (1, 2):
        assert torch.allclose(first[seed].W_dec, second[seed].W_dec)


def test_per_pair_rows_and_chance_baselines_follow_the_task_seed():
    """v3: one row per seed pair (their mean is decoder_pw_mcc) and chance draws seeded by the task
    seed (seed 0 keeps v2's draws); every other number does not depend on the task seed."""
    from benchmark.metrics.matching import chance_mcc
    from tasks.synthetic import CHANCE_SEED

    rng = np.random.default_rng(8)
    truth = rng.standard_normal((12, 6))
    saes = {s: sae_from(truth + 0.5 * rng.standard_normal((12, 6))) for s in (3, 5, 9)}
    runs = {seed: evaluate_preset(saes, StubOrganism(truth), chance_trials=2, task_seed=seed) for seed in (0, 1)}
    metrics, tables = runs[0]
    pairs = {m.subset: m.value for m in metrics if m.metric == "decoder_pw_mcc" and ",pair=" in m.subset}
    assert set(pairs) == {"preset=stub,pair=3-5", "preset=stub,pair=3-9", "preset=stub,pair=5-9"}
    expected = {f"preset=stub,pair={r.seed_a}-{r.seed_b}": r.decoder_pw_mcc for r in tables["pairs"].itertuples()}
    assert pairs == pytest.approx(expected)
    assert rows_by(metrics)["decoder_pw_mcc"].value == pytest.approx(np.mean(list(pairs.values())))
    assert len([m for m in metrics if m.metric == "shared_fraction" and ",pair=" in m.subset]) == 3
    assert rows_by(metrics)["chance_mcc"].value == pytest.approx(chance_mcc(12, 12, 6, seed=CHANCE_SEED + 1, trials=2).mean)
    other = rows_by(runs[1][0])
    assert other["chance_mcc"].value != pytest.approx(rows_by(metrics)["chance_mcc"].value)
    for name in ("gt_mcc", "decoder_pw_mcc", "shared_fraction", "l0", "explained_variance"):
        assert other[name].value == rows_by(metrics)[name].value, name
