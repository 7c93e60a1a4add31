"""The description-length task: its rows and tables agree with the kernels run directly, planted triples
show up in its artifact, bad inputs fail with one line, and the unit stores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.data.activations import sample_token_rows
from benchmark.errors import TaskError
from benchmark.metrics.description_length import description_length
from benchmark.metrics.incoherence import two_term_representations
from benchmark.results import ResultStore, UnitProvenance, make_rows
from benchmark.sae.model import SAE, SAEConfig
from task_fixtures import FixedActivations, task_inputs
from tasks.description_length import DescriptionLengthTask


def topk_sae(W_dec: np.ndarray, k: int = 3) -> SAE:
    W = torch.tensor(W_dec, dtype=torch.float32)
    return SAE(SAEConfig("topk", W.shape[1], W.shape[0], k=k), W_enc=W.T.clone(), W_dec=W)


def planted_decoder(m: int, d: int, seed: int) -> tuple[np.ndarray, set[int]]:
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((m, d))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    U[0] = 0.8 * U[1] + 0.6 * U[2]
    U[0] /= np.linalg.norm(U[0])
    return U, {0, 1, 2}


def metric(out, name, subset="all"):
    return next(m for m in out.metrics if m.metric == name and m.subset == subset)


@pytest.fixture(scope="module")
def run():
    d, m = 16, 48
    decoders = {s: planted_decoder(m, d, s) for s in (3, 7)}
    saes = {s: topk_sae(dec) for s, (dec, _) in decoders.items()}
    acts = torch.tensor(np.random.default_rng(0).normal(size=(900, d)), dtype=torch.float32)
    options = {"n_tokens": 600, "epsilon": 0.01, "tau": 0.95, "neighbours": 8}
    inputs = task_inputs(DescriptionLengthTask, saes=saes, activations=FixedActivations(acts), options=options, seed=5,
                         batch_size=128)
    out = DescriptionLengthTask().run(inputs)
    return out, saes, decoders, acts, inputs


def test_rows_agree_with_the_kernels_run_directly(run):
    out, saes, decoders, acts, _ = run
    rows = sample_token_rows(900, 600, seed=5)
    per_seed = {}
    for s, sae in saes.items():
        dl = description_length(sae, [acts[rows[i:i + 128]] for i in range(0, 600, 128)], epsilon=0.01)
        search = two_term_representations(decoders[s][0], tau=0.95, k=8)
        per_seed[s] = (dl, search)
        assert metric(out, "description_length", f"seed={s}").value == pytest.approx(dl.description_length, abs=1e-9)
        assert metric(out, "quantisation_bins", f"seed={s}").value == dl.bins
        assert metric(out, "l0", f"seed={s}").value == pytest.approx(3.0)
        assert metric(out, "incoherent_fraction", f"seed={s}").value == pytest.approx(3 / 48)
        want = np.nan_to_num(search.pair_cosine, nan=0.0).mean()
        assert metric(out, "mean_pair_cosine", f"seed={s}").value == pytest.approx(want, abs=1e-6)  # fp32 weights
    dls = [per_seed[s][0].description_length for s in saes]
    got = metric(out, "description_length")
    assert got.value == pytest.approx(np.mean(dls), abs=1e-9) and got.std == pytest.approx(np.std(dls, ddof=1), abs=1e-9)
    assert metric(out, "description_length_per_active_latent").value == pytest.approx(np.mean(dls) / 3.0, abs=1e-9)
    assert metric(out, "incoherent_fraction").value == pytest.approx(3 / 48)
    assert metric(out, "incoherent_fraction_random").value == 0.0
    assert 0 <= metric(out, "incoherent_fraction_shuffled").value <= 1
    names = {m.metric for m in out.metrics}
    assert names == {spec.name for spec in DescriptionLengthTask.metadata.metrics}
    assert out.data_hash == FixedActivations.key


def test_artifacts_hold_the_planted_triples_and_declared_columns(run):
    out, saes, decoders, _, _ = run
    meta = DescriptionLengthTask.metadata
    for name, frame in out.artifacts.items():
        assert tuple(frame.columns) == meta.artifact(name).columns, name
    triples = out.artifacts["triples"]
    for s, (_, planted) in decoders.items():
        mine = triples[triples.seed == s]
        assert set(mine.latent) == planted
        for row in mine.itertuples():
            assert {row.partner_j, row.partner_k} == planted - {row.latent} and row.kind == "triple"
    latents = out.artifacts["latents"]
    assert len(latents) == 2 * 48 and latents.certified[latents.latent.isin([0, 1, 2])].all()
    hist = out.artifacts["best_pair_cosine_histogram"]
    assert hist["count"].sum() == hist["count_random"].sum() == hist["count_shuffled"].sum() == 2 * 48
    assert hist.loc[hist.bin_high == 1.0, "count"].item() >= 6  # the planted rows sit at cosine 1
    ladder = out.artifacts["quantisation_ladder"]
    assert (ladder.groupby("seed")["admissible"].sum() == 1).all()


def test_unit_stores_rows_and_artifacts(run, tmp_path):
    out, _, _, _, inputs = run
    task = DescriptionLengthTask()
    prov = UnitProvenance(run_id="r", submission="t/x", submission_kind="checkpoints", local=True, task=task.metadata.name,
                          task_version=task.metadata.version, benchmark_version="0", git_sha=None, device="cpu",
                          dtype="float32", spec=inputs.spec.canonical(), spec_hash=inputs.spec.hash)
    rows = make_rows(out.metrics, prov, task.metadata.directions, timestamp="2025-01-01T00:00:00", runtime_s=0.1)
    store = ResultStore(tmp_path)
    assert store.write_unit(rows, out.artifacts)
    back = store.read_artifact(rows.iloc[0], "triples")
    assert isinstance(back, pd.DataFrame) and len(back) == len(out.artifacts["triples"])


def test_limit_caps_the_token_sample():
    rng = np.random.default_rng(1)
    sae = topk_sae(planted_decoder(24, 8, 0)[0], k=2)
    acts = torch.tensor(rng.normal(size=(400, 8)), dtype=torch.float32)
    out = DescriptionLengthTask().run(task_inputs(DescriptionLengthTask, saes={0: sae}, activations=FixedActivations(acts),
                                                  limit=50))
    assert metric(out, "l0", "seed=0").n == 50 and metric(out, "l0").extra["tokens"] == 50
    assert metric(out, "description_length").std is None  # one seed: no spread


def test_bad_inputs_fail_with_one_line_naming_the_field():
    sae = topk_sae(planted_decoder(24, 8, 0)[0], k=2)
    with pytest.raises(TaskError) as err:
        DescriptionLengthTask().run(task_inputs(DescriptionLengthTask, saes={0: sae},
                                                activations=FixedActivations(torch.zeros(10, 5))))
    assert err.value.field == "model.hook" and "\n" not in str(err.value)
    with pytest.raises(TaskError) as err:
        DescriptionLengthTask().run(task_inputs(DescriptionLengthTask, saes={0: sae}))
    assert err.value.field == "model"


def test_not_applicable_without_corpus_activations():
    from types import SimpleNamespace

    def manifest(kind, model=None, trains_on="model"):
        recipe = SimpleNamespace(trains_on=trains_on)
        return SimpleNamespace(submission=SimpleNamespace(kind=kind, seeds=[0], model=model, recipe=recipe))

    assert DescriptionLengthTask.not_applicable(manifest("recipe", SimpleNamespace(name="m"), trains_on="synthetic"))
    assert DescriptionLengthTask.not_applicable(manifest("checkpoints", None))
    assert DescriptionLengthTask.not_applicable(manifest("checkpoints", SimpleNamespace(name="synthetic:zipf")))
    assert DescriptionLengthTask.not_applicable(manifest("checkpoints", SimpleNamespace(name="gpt2"))) is None
