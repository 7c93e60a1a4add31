"""The cross-seed task against independent computations (scipy dense assignment, numpy)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from benchmark.errors import TaskError
from benchmark.results import ResultStore, UnitProvenance, make_rows
from benchmark.sae.model import SAE, SAEConfig
from task_fixtures import FixedActivations, task_inputs
from benchmark.metrics.stats import bootstrap_mean_of_means
from tasks.cross_seed import CrossSeedTask, compute_cross_seed


def make_sae(W_dec: np.ndarray, W_enc_T: np.ndarray | None = None, *, b_enc=None, arch="standard", k=None) -> SAE:
    """An SAE from decoder rows ``[m, d]`` and encoder directions ``[m, d]`` (W_enc = W_enc_T.T)."""
    W_dec_t = torch.as_tensor(W_dec, dtype=torch.float32)
    W_enc_t = torch.as_tensor(W_dec if W_enc_T is None else W_enc_T, dtype=torch.float32).T.contiguous()
    m, d = W_dec_t.shape
    cfg = SAEConfig(architecture=arch, d_in=d, d_sae=m, k=k)
    b = None if b_enc is None else torch.as_tensor(b_enc, dtype=torch.float32)
    return SAE(cfg, W_enc=W_enc_t, W_dec=W_dec_t, b_enc=b)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def scipy_mcc(a: np.ndarray, b: np.ndarray) -> float:
    sim = unit(a) @ unit(b).T
    r, c = linear_sum_assignment(-sim)
    return float(sim[r, c].mean())


def metric(result, name, subset="all"):
    found = [m for m in result.metrics if m.metric == name and m.subset == subset]
    assert len(found) == 1, f"{name}/{subset}: {[(m.metric, m.subset) for m in result.metrics]}"
    return found[0]


@pytest.fixture(scope="module")
def random_saes():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(24, 16))
    saes, raw = {}, {}
    for s in (0, 1, 2):
        dec = base + 0.8 * rng.normal(size=base.shape)  # related but not identical dictionaries
        dec = dec[rng.permutation(24)]
        enc = dec + 0.5 * rng.normal(size=dec.shape)
        saes[s] = make_sae(dec, enc)
        raw[s] = (dec, enc)
    return saes, raw


def test_pw_mcc_and_max_cosine_match_independent_computation(random_saes):
    saes, raw = random_saes
    result = compute_cross_seed(saes, seed=0)
    pairs = list(itertools.combinations(sorted(raw), 2))
    dec = [scipy_mcc(raw[a][0], raw[b][0]) for a, b in pairs]
    enc = [scipy_mcc(raw[a][1], raw[b][1]) for a, b in pairs]
    mm = []
    for a, b in pairs:
        sim = unit(raw[a][0]) @ unit(raw[b][0]).T
        mm.append((sim.max(1).mean() + sim.max(0).mean()) / 2)
    got = metric(result, "decoder_pw_mcc")
    assert got.value == pytest.approx(np.mean(dec), abs=1e-6)
    assert got.std == pytest.approx(np.std(dec, ddof=1), abs=1e-6)
    assert metric(result, "encoder_pw_mcc").value == pytest.approx(np.mean(enc), abs=1e-6)
    assert metric(result, "mean_max_cosine").value == pytest.approx(np.mean(mm), abs=1e-6)
    for (a, b), v in zip(pairs, dec):
        assert metric(result, "decoder_pw_mcc", f"pair={a}-{b}").value == pytest.approx(v, abs=1e-6)
    # matched cosines are bounded by the max cosines, so MCC <= mean max cosine
    assert got.value <= metric(result, "mean_max_cosine").value + 1e-9
    # histogram pools every pair's 24 matched cosines
    assert result.histogram["count"].sum() == 3 * 24
    pooled = np.concatenate([np.sort((unit(raw[a][0]) @ unit(raw[b][0]).T)[linear_sum_assignment(-(unit(raw[a][0]) @ unit(raw[b][0]).T))]) for a, b in pairs])
    expected_counts, _ = np.histogram(pooled, bins=result.histogram["bin_low"].tolist() + [1.0])
    assert result.histogram["count"].tolist() == expected_counts.tolist()


def test_chance_baseline_is_near_random_dictionaries():
    rng = np.random.default_rng(0)
    saes = {s: make_sae(rng.normal(size=(32, 8))) for s in (0, 1)}
    result = compute_cross_seed(saes, seed=1)
    chance = metric(result, "chance_mcc").value
    # independent estimate: many random pairs of the same shape
    est = np.mean([scipy_mcc(rng.normal(size=(32, 8)), rng.normal(size=(32, 8))) for _ in range(20)])
    assert chance == pytest.approx(est, abs=0.05)
    # random SAEs are at chance
    assert metric(result, "decoder_pw_mcc").value == pytest.approx(est, abs=0.1)


def planted_pair():
    """Seed 1 is a permuted copy of seed 0 in an orthonormal basis with a known answer:
    latents 0-7 keep decoder and encoder (shared), 8-11 keep only the decoder, 12-15 change both;
    the assignment can only pick the planted partners because all other cosines are 0."""
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.normal(size=(64, 64)))
    basis = q.T  # orthonormal rows
    dec0 = basis[0:16]
    enc0 = basis[0:16]
    perm = rng.permutation(16)
    dec1 = np.empty_like(dec0)
    enc1 = np.empty_like(enc0)
    for i in range(16):
        j = perm[i]
        dec1[j] = dec0[i] if i < 12 else basis[16 + i]
        enc1[j] = enc0[i] if i < 8 else basis[40 + i]
    return {0: make_sae(dec0, enc0), 1: make_sae(dec1, enc1)}, perm


def test_shared_fraction_on_planted_case():
    saes, perm = planted_pair()
    result = compute_cross_seed(saes, seed=0)
    assert metric(result, "shared_fraction").value == pytest.approx(8 / 16)
    assert metric(result, "shared_fraction_decoder").value == pytest.approx(12 / 16)
    assert metric(result, "shared_fraction_any_partner").value == pytest.approx(8 / 16)
    latents = result.latents
    side0 = latents[(latents.seed == 0) & (latents.other_seed == 1)].sort_values("latent")
    assert side0["decoder_partner"].tolist()[:12] == perm[:12].tolist()
    assert side0["shared"].tolist() == [True] * 8 + [False] * 8
    side1 = latents[(latents.seed == 1) & (latents.other_seed == 0)].sort_values("latent")
    assert side1["shared"].sum() == 8
    assert set(side1.loc[side1["shared"], "latent"]) == set(perm[:8].tolist())


def test_shared_requires_the_same_partner_in_both_assignments():
    """Near-duplicate latents whose encoders are swapped in seed 1: the decoder assignment pairs
    0-0 and 1-1, the encoder assignment 0-1 and 1-0, all cosines > 0.7. Shared only in the
    literal (any-partner) reading."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    basis = q.T
    d0 = basis[0]
    d1 = unit((basis[0] + 0.3 * basis[1])[None])[0]  # cos(d0, d1) ~ 0.96
    e0, e1 = d0, d1
    dec_a = np.stack([d0, d1, basis[2], basis[3]])
    enc_a = np.stack([e0, e1, basis[2], basis[3]])
    dec_b = np.stack([d0, d1, basis[4], basis[5]])
    enc_b = np.stack([e1, e0, basis[6], basis[7]])
    saes = {0: make_sae(dec_a, enc_a), 1: make_sae(dec_b, enc_b)}
    result = compute_cross_seed(saes, seed=0)
    assert metric(result, "shared_fraction").value == pytest.approx(0.0)
    assert metric(result, "shared_fraction_any_partner").value == pytest.approx(2 / 4)
    assert metric(result, "shared_fraction_decoder").value == pytest.approx(2 / 4)


def test_bootstrap_ci_contains_the_mean(random_saes):
    saes, _ = random_saes
    result = compute_cross_seed(saes, seed=5)
    for name in ("decoder_pw_mcc", "encoder_pw_mcc", "shared_fraction_decoder", "mean_max_cosine"):
        m = metric(result, name)
        assert m.ci_low is not None and m.ci_low <= m.value <= m.ci_high, name
    dec = metric(result, "decoder_pw_mcc")
    assert dec.ci_high - dec.ci_low > 0
    # independent check of the interval's width: the bootstrap standard error of a mean of means
    rng = np.random.default_rng(0)
    values = [rng.normal(size=400), rng.normal(loc=1.0, size=400)]
    lo, hi = bootstrap_mean_of_means(values, seed=0, reps=2000)
    se = np.sqrt(sum(v.var() / v.size for v in values)) / len(values)
    mean = np.mean([v.mean() for v in values])
    assert lo < mean < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.15)
    # same seed, same interval
    assert bootstrap_mean_of_means(values, seed=0, reps=2000) == (lo, hi)


def test_unequal_widths_are_refused_and_left_to_stitching():
    """v3: seeds of different widths are a width ladder, compared by the stitching task."""
    rng = np.random.default_rng(2)
    small = rng.normal(size=(8, 12))
    large = rng.normal(size=(16, 12))
    with pytest.raises(TaskError) as err:
        compute_cross_seed({0: make_sae(large), 1: make_sae(small)}, seed=0)
    assert err.value.field == "sae.width" and "stitching" in str(err.value)
    names = {m.name for m in CrossSeedTask.metadata.metrics}
    assert not any(n.startswith("stitch_") for n in names)


def test_task_runs_with_activations_and_stores_its_unit(tmp_path):
    rng = np.random.default_rng(11)
    d, m = 10, 12
    base = rng.normal(size=(m, d))
    saes, raw = {}, {}
    for s in (0, 1, 2):
        dec = unit(base + 0.3 * rng.normal(size=base.shape))[rng.permutation(m)]
        saes[s] = make_sae(dec, dec, b_enc=np.full(m, -0.2))
        raw[s] = dec
    acts = torch.as_tensor(rng.normal(size=(500, d)), dtype=torch.float32)
    inputs = task_inputs(CrossSeedTask, saes=saes, activations=FixedActivations(acts), options={"n_tokens": 300},
                         batch_size=64)
    task = CrossSeedTask()
    out = task.run(inputs)
    names = {m.metric for m in out.metrics}
    assert {"decoder_pw_mcc", "l0", "activation_correlation", "matched_cosine_by_frequency"} <= names
    # independent recomputation on the same token sample
    rows = np.sort(np.random.default_rng(0).choice(500, size=300, replace=False))
    x = acts[rows]
    z = {s: torch.relu((x - 0) @ torch.as_tensor(raw[s].T, dtype=torch.float32) - 0.2).numpy() for s in saes}
    l0 = np.mean([(z[s] > 0).sum(1).mean() for s in saes])
    assert next(m for m in out.metrics if m.metric == "l0").value == pytest.approx(l0, rel=1e-6)
    corrs = []
    for a, b in itertools.combinations(sorted(saes), 2):
        sim = raw[a] @ raw[b].T
        r, c = linear_sum_assignment(-sim)
        pair = []
        for i, j in zip(r, c):
            if z[a][:, i].std() > 0 and z[b][:, j].std() > 0:
                pair.append(np.corrcoef(z[a][:, i], z[b][:, j])[0, 1])
        corrs.append(np.mean(pair))
    got = next(m for m in out.metrics if m.metric == "activation_correlation" and m.subset == "all")
    assert got.value == pytest.approx(np.mean(corrs), abs=1e-5)
    latents = out.artifacts["latents"]
    assert len(latents) == 3 * 2 * m
    freq0 = latents[(latents.seed == 0) & (latents.other_seed == 1)].sort_values("latent")["firing_frequency"]
    assert np.allclose(freq0.to_numpy(), (z[0] > 0).mean(0))
    assert set(out.artifacts["matched_cosine_histogram"].columns) == {"bin_low", "bin_high", "count"}
    # the unit writes to a results store (tidy rows + parquet artifacts)
    prov = UnitProvenance(run_id="r", submission="t/x", submission_kind="checkpoints", local=True, task="cross-seed",
                          task_version="2", benchmark_version="0", git_sha=None, device="cpu", dtype="float32",
                          spec=inputs.spec.canonical(), spec_hash=inputs.spec.hash)
    rows_df = make_rows(out.metrics, prov, task.metadata.directions, timestamp="2025-01-01T00:00:00", runtime_s=0.1)
    store = ResultStore(tmp_path)
    assert store.write_unit(rows_df, out.artifacts)
    back = store.read_artifact(rows_df.iloc[0], "latents")
    assert isinstance(back, pd.DataFrame) and len(back) == len(latents)


def test_task_without_activations_and_with_one_seed():
    rng = np.random.default_rng(4)
    saes = {s: make_sae(rng.normal(size=(6, 5))) for s in (3, 9)}
    out = CrossSeedTask().run(task_inputs(CrossSeedTask, saes=saes))
    names = {m.metric for m in out.metrics}
    assert "l0" not in names and "activation_correlation" not in names
    assert next(m for m in out.metrics if m.metric == "decoder_pw_mcc").std is None  # one pair: no spread
    from benchmark.errors import TaskError

    with pytest.raises(TaskError, match="at least 2 seeds"):
        compute_cross_seed({0: saes[3]})


def _two_seed_submission(tmp_path, base, rng):
    """A checkpoints manifest of two native standard SAEs (seeds 0, 1) near ``base`` [width, 6]."""
    from benchmark.sae.checkpoints.native import save_native
    from benchmark.submission.manifest import load_manifest

    lines = []
    for s in (0, 1):
        save_native(make_sae(base + 0.1 * rng.normal(size=base.shape)), tmp_path / f"seed{s}")
        lines.append(f'[[checkpoints]]\nseed = {s}\nlocal = "seed{s}"\n')
    manifest_path = tmp_path / "sub.toml"
    manifest_path.write_text(
        'name = "test/xs"\nkind = "checkpoints"\ntitle = "t"\nauthors = ["a"]\nlicense = "MIT"\n'
        '[model]\nname = "m"\nhook = "blocks.0.hook_resid_post"\nlocal = "model"\n'
        f'[sae]\narchitecture = "standard"\nwidth = {base.shape[0]}\nd_in = 6\nformat = "native"\n' + "\n".join(lines)
    )
    return load_manifest(manifest_path)


def test_runner_passes_optional_activations_and_survives_their_failure(tmp_path):
    """``uses_activations``: the runner hands cross-seed a provider when it can build one and
    runs it on weights alone (with a warning) when building the provider fails."""
    from benchmark.runner import run_benchmark

    rng = np.random.default_rng(8)
    base = rng.normal(size=(8, 6))
    manifest = _two_seed_submission(tmp_path, base, rng)

    def broken(manifest, **kw):
        raise RuntimeError("no model here")

    summary = run_benchmark([manifest], ["cross-seed"], results_dir=tmp_path / "r1", cache_dir=tmp_path / "c",
                            quiet=True, activations_factory=broken)
    assert [o.status for o in summary.outcomes] == ["done"], summary.render()
    rows = ResultStore(tmp_path / "r1").read()
    assert "decoder_pw_mcc" in set(rows.metric) and "l0" not in set(rows.metric)

    acts = torch.as_tensor(rng.normal(size=(200, 6)), dtype=torch.float32)
    summary = run_benchmark([manifest], ["cross-seed"], results_dir=tmp_path / "r2", cache_dir=tmp_path / "c",
                            quiet=True, activations_factory=lambda manifest, **kw: FixedActivations(acts))
    assert [o.status for o in summary.outcomes] == ["done"], summary.render()
    rows = ResultStore(tmp_path / "r2").read()
    l0 = rows[rows.metric == "l0"]
    assert len(l0) == 1 and rows[rows.metric == "l0"]["data_hash"].iloc[0] == FixedActivations.key


def test_matching_kernel_is_recorded_in_the_stored_rows(tmp_path, monkeypatch):
    """The kernel the exact matcher used reaches every stored row (extra["provenance"]): "dense"
    for a small pair, the forced kernel when the sparse matcher runs."""
    import json

    from benchmark.metrics import matching
    from benchmark.metrics.matching import _kernels
    from benchmark.runner import run_benchmark

    rng = np.random.default_rng(9)
    base = rng.normal(size=(40, 6))
    manifest = _two_seed_submission(tmp_path, base, rng)

    def kernels_stored(results):
        summary = run_benchmark([manifest], ["cross-seed"], results_dir=tmp_path / results, cache_dir=tmp_path / "c",
                                quiet=True, skip_activations=True)
        assert [o.status for o in summary.outcomes] == ["done"], summary.render()
        rows = ResultStore(tmp_path / results).read()
        return {json.dumps(json.loads(extra)["provenance"], sort_keys=True) for extra in rows.extra}

    assert kernels_stored("dense") == {json.dumps({"matching_kernels": ["dense"]})}
    monkeypatch.setattr(matching, "DENSE_MAX_ENTRIES", 0)  # every pair through the sparse matcher
    monkeypatch.setenv(_kernels.ENV_VAR, "fp32")
    assert kernels_stored("sparse") == {json.dumps({"matching_kernels": ["fp32"]})}
