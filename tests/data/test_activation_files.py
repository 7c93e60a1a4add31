"""Activations a researcher supplies (a manifest's ``[activations]`` table) and optional activations
that never download a model: what the cross-seed task computes from a file equals what it computes
from the same tensor in memory, the file's hash is part of the unit's identity, and bad files are
refused in one line without running anything."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import checkpoint_fixtures as ckf
from benchmark import cli
from benchmark.data.activation_files import FileActivations
from benchmark.errors import CanonBenchError, ManifestError
from benchmark.results import ResultStore
from benchmark.sae.checkpoints import load_sae
from benchmark.submission.manifest import load_manifest
from tasks.cross_seed import compute_cross_seed

MODEL_SHA = "607a30d783dfa663caf39e06633721c8d4cfcd7e"
CORPUS_SHA = "c" * 64
D_IN, WIDTH, N_TOKENS = 8, 32, 600


def activations(seed: int = 0) -> np.ndarray:
    """Inputs spread like an SAE's (a mix of a few directions plus noise), float32 [N_TOKENS, D_IN]."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(N_TOKENS, 4)) @ rng.normal(size=(4, D_IN)) + 0.3 * rng.normal(size=(N_TOKENS, D_IN))).astype(np.float32)


def submission(folder: Path, *, acts_file: str | None = "acts.npy", hook: str = "blocks.3.hook_resid_post",
               extra: str = "") -> Path:
    for seed in (0, 1, 2):
        ckf.write_saelens(folder / "saes" / f"seed{seed}", "topk", d_in=D_IN, d_sae=WIDTH, k=4, seed=seed)
    table = (f'[activations]\nfile = "{acts_file}"\nmodel = "gpt2"\nhook = "{hook}"\ncorpus_sha256 = "{CORPUS_SHA}"\n'
             f'corpus = "my tokens"\n{extra}' if acts_file else "")
    blocks = "".join(f'\n[[checkpoints]]\nseed = {s}\nlocal = "saes/seed{s}"\n' for s in (0, 1, 2))
    path = folder / "file-acts.toml"
    path.write_text(f'name = "me/file-acts"\nkind = "checkpoints"\ntitle = "t"\nauthors = ["a"]\nlicense = "MIT"\n'
                    f'[model]\nname = "gpt2"\nhook = "blocks.3.hook_resid_post"\nrevision = "{MODEL_SHA}"\n'
                    f'[sae]\narchitecture = "topk"\nwidth = {WIDTH}\nk = 4\n{table}{blocks}', encoding="utf-8")
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to locate or boot the base model fails the test: these runs must not need it."""
    import benchmark.data.activations as acts

    monkeypatch.setattr(acts, "provider_for_manifest", lambda *a, **k: pytest.fail("the base model was asked for"))


def run(path: Path, tmp_path: Path, *extra: str) -> int:
    return cli.main(["run", str(path), "--results", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"),
                     "--tasks", "cross-seed", "--quiet", *extra])


def stored(tmp_path: Path, metric: str, subset: str = "all") -> float:
    rows = ResultStore(tmp_path / "r").read()
    return float(rows[(rows["metric"] == metric) & (rows["subset"] == subset)]["value"].iloc[0])


def test_cross_seed_from_a_file_equals_the_same_tensor_in_memory(tmp_path, no_model):
    folder = tmp_path / "submissions" / "me"
    path = submission(folder)
    acts = activations()
    np.save(folder / "acts.npy", acts)
    assert run(path, tmp_path) == 0

    saes = {s: load_sae(folder / "saes" / f"seed{s}") for s in (0, 1, 2)}
    expected = compute_cross_seed(saes, seed=0, activations=torch.from_numpy(acts), n_tokens=16_384)
    by_name = {(m.metric, m.subset): m.value for m in expected.metrics}
    for metric in ("l0", "activation_correlation", "never_fired_fraction", "decoder_pw_mcc"):
        assert stored(tmp_path, metric) == pytest.approx(by_name[(metric, "all")], abs=1e-12), metric
    rows = ResultStore(tmp_path / "r").read()
    inputs = json.loads(rows["inputs"].iloc[0])
    assert inputs["activations"]["corpus_sha256"] == CORPUS_SHA and len(inputs["activations"]["sha256"]) == 64
    data_hash = rows["data_hash"].iloc[0]
    assert data_hash == FileActivations(folder / "acts.npy", sha256=inputs["activations"]["sha256"],
                                        size=inputs["activations"]["bytes"], model="gpt2",
                                        hook="blocks.3.hook_resid_post", corpus_sha256=CORPUS_SHA).key


def test_another_activations_file_is_another_unit(tmp_path, no_model, caplog):
    folder = tmp_path / "submissions" / "me"
    path = submission(folder)
    np.save(folder / "acts.npy", activations(0))
    assert run(path, tmp_path) == 0
    first = stored(tmp_path, "activation_correlation")  # (L0 is k for TopK whatever the inputs)
    np.save(folder / "acts.npy", activations(1) * 3.0)
    assert run(path, tmp_path) == 0
    assert any("inputs changed" in r.getMessage() for r in caplog.records)
    assert stored(tmp_path, "activation_correlation") != first and ResultStore(tmp_path / "r").read()["run_id"].nunique() == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_safetensors_files_are_read_exactly(tmp_path, dtype):
    acts = torch.from_numpy(activations()).to(dtype)
    save_file({"activations": acts, "token_ids": torch.arange(N_TOKENS)}, str(tmp_path / "a.safetensors"))
    provider = FileActivations(tmp_path / "a.safetensors", sha256="0" * 64, size=1, model="gpt2", hook="h",
                               corpus_sha256=CORPUS_SHA)
    read = provider.activations()
    assert read.dtype == dtype and torch.equal(read, acts)
    provider.ensure(["h"])
    with pytest.raises(CanonBenchError, match="holds hook 'h', not 'other'"):
        provider.ensure(["other"])
    with pytest.raises(CanonBenchError, match="without tokens"):
        provider.tokens()


def test_a_pickled_npy_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    payload = np.array([ckf._RunsCommand(marker)], dtype=object)
    np.save(tmp_path / "evil.npy", payload, allow_pickle=True)
    provider = FileActivations(tmp_path / "evil.npy", sha256="0" * 64, size=1, model="gpt2", hook="h", corpus_sha256=CORPUS_SHA,
                               manifest_path=tmp_path / "m.toml")
    with pytest.raises(CanonBenchError) as info:
        provider.activations()
    assert info.value.field == "activations.file" and "\n" not in str(info.value)
    assert not marker.exists()


def test_a_file_of_the_wrong_width_fails_its_unit_naming_the_field(tmp_path, capsys, no_model):
    folder = tmp_path / "submissions" / "me"
    path = submission(folder)
    np.save(folder / "acts.npy", np.ones((50, D_IN + 1), dtype=np.float32))
    assert run(path, tmp_path) == 1
    line = next(line for line in capsys.readouterr().out.splitlines() if "me/file-acts × cross-seed" in line)
    assert line.split()[0] == "failed" and "activations.file" in line and "d_in=8" in line


def test_declared_model_and_hook_must_be_the_manifests(tmp_path):
    folder = tmp_path / "submissions" / "me"
    with pytest.raises(ManifestError) as info:
        load_manifest(submission(folder, hook="blocks.4.hook_resid_post"))
    assert info.value.field == "activations.hook"
    with pytest.raises(ManifestError) as info:
        load_manifest(submission(folder, acts_file="/data/acts.npy"))
    assert info.value.field == "activations.file" and "local_outside" in info.value.detail
    assert load_manifest(submission(folder, acts_file="/data/acts.npy", extra="local_outside = true\n")).submission.is_local


def test_optional_activations_never_download_a_model(tmp_path, caplog, no_model):
    """No [activations] table and a Hub model that is not on this machine: cross-seed runs on weights
    alone at once (no model is located or fetched), and says how to get the activations."""
    import logging

    folder = tmp_path / "submissions" / "me"
    path = submission(folder, acts_file=None)
    with caplog.at_level(logging.INFO):
        assert run(path, tmp_path) == 0
    rows = ResultStore(tmp_path / "r").read()
    assert "decoder_pw_mcc" in set(rows["metric"]) and "l0" not in set(rows["metric"])
    assert any("running on weights alone" in r.getMessage() and "--download-models" in r.getMessage()
               for r in caplog.records)


def test_no_activations_skips_a_declared_file_too(tmp_path, no_model):
    folder = tmp_path / "submissions" / "me"
    path = submission(folder)
    np.save(folder / "acts.npy", activations())
    assert run(path, tmp_path, "--no-activations") == 0
    assert "l0" not in set(ResultStore(tmp_path / "r").read()["metric"])


def test_validate_checks_a_declared_activations_file(tmp_path):
    from benchmark.submission.validate import validate_paths

    folder = tmp_path / "submissions" / "me"
    path = submission(folder)
    problems, _ = validate_paths([path], check_files=True)
    assert [p.field for p in problems] == ["activations.file"] and "does not exist" in problems[0].detail
    np.save(folder / "acts.npy", activations())
    assert validate_paths([path], check_files=True)[0] == []
    path.write_text(path.read_text().replace("k = 4\n", "k = 4\nd_in = 9\n"))
    problems, _ = validate_paths([path], check_files=True)
    assert "activations.file" in {p.field for p in problems}


@pytest.mark.parametrize("array", [np.arange(80, dtype=np.int64).reshape(10, 8), np.ones((10, 8), dtype=np.longdouble),
                                   np.ones(8, dtype=np.float32), np.zeros((0, 8), dtype=np.float32)],
                         ids=["integers", "long double", "one-dimensional", "empty"])
def test_an_activations_array_that_is_not_n_by_d_floats_is_refused(tmp_path, array):
    np.save(tmp_path / "a.npy", array)
    provider = FileActivations(tmp_path / "a.npy", sha256="0" * 64, size=1, model="gpt2", hook="h", corpus_sha256=CORPUS_SHA,
                               manifest_path=tmp_path / "m.toml")
    with pytest.raises(CanonBenchError) as info:
        provider.activations()
    assert info.value.field == "activations.file" and ("expected" in info.value.detail)
