"""A researcher's SAEs as the libraries write them, kept where they are: sparsify's multi-seed run
layout, a dictionary_learning Matryoshka run, folders outside the submissions tree (declared with
``local_outside = true``), and a submissions tree that also holds a virtualenv and other TOML files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants

import checkpoint_fixtures as ckf
from benchmark.errors import CheckpointError, ManifestError, SourceError
from benchmark.sae.checkpoints import checkpoint_subfolders, detect_format, inspect_checkpoint, load_sae
from benchmark.submission.manifest import discover_manifests, load_manifest, load_manifests, parse_manifest
from benchmark.submission.new_submission import write_new_submission
from benchmark.submission.validate import validate_paths

MODEL_SHA = "607a30d783dfa663caf39e06633721c8d4cfcd7e"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))


def fill_todos(text: str, **values: str) -> str:
    """What a researcher does after new-submission: replace each TODO value."""
    filled = {"title": '"My SAEs"', "authors": '["A. Researcher"]', "license": '"MIT"', "revision": f'"{MODEL_SHA}"',
              **{k: f'"{v}"' for k, v in values.items()}}
    return "\n".join(f"{m.group(1)} = {filled[m.group(1)]}" if (m := re.match(r"^(\w+) = .*TODO", line)) else line
                     for line in text.splitlines()) + "\n"


def manifest_text(name: str, checkpoints: str, *, architecture: str = "topk", width: int = 32, extra: str = "") -> str:
    return (f'name = "{name}"\nkind = "checkpoints"\ntitle = "t"\nauthors = ["a"]\nlicense = "MIT"\n{extra}'
            f'[model]\nname = "EleutherAI/pythia-70m"\nhook = "blocks.3.hook_resid_post"\nrevision = "{MODEL_SHA}"\n'
            f'[sae]\narchitecture = "{architecture}"\nwidth = {width}\n{checkpoints}')


# --- sparsify: <run>/<hookpoint>/seed<K> ---------------------------------------------------------------
def test_sparsify_multi_seed_folders_name_their_hookpoint_and_seed(tmp_path):
    run = tmp_path / "runs" / "pythia-topk"
    ckf.write_sparsify_seeds(run, "layers.3", seeds=(0, 1, 2))
    info = inspect_checkpoint(run / "layers.3" / "seed1")
    assert (info.hook_name, info.metadata["init_seed"], info.model_name) == ("blocks.3.hook_resid_post", 1, "EleutherAI/pythia-70m")
    sae = load_sae(run / "layers.3" / "seed2")
    assert sae.config.hook_name == "blocks.3.hook_resid_post" and sae.config.metadata["hf_hookpoint"] == "layers.3"
    assert [p.name for p in checkpoint_subfolders(run / "layers.3")] == ["seed0", "seed1", "seed2"]
    with pytest.raises(CheckpointError, match="holds several checkpoints.*seed0, seed1, seed2"):
        detect_format(run / "layers.3")


def test_new_submission_from_a_folder_holding_every_seed(tmp_path):
    run = tmp_path / "submissions" / "me" / "runs" / "pythia-topk"
    ckf.write_sparsify_seeds(run, "layers.3", seeds=(0, 4, 7))
    out = write_new_submission([str(run / "layers.3")], name="me/pythia-topk", out=tmp_path / "submissions" / "me" / "pythia-topk.toml")
    text = out.read_text()
    assert 'hook = "blocks.3.hook_resid_post"' in text and 'architecture = "topk"' in text and 'format = "sparsify"' in text
    out.write_text(fill_todos(text))
    manifest = load_manifest(out)
    assert [(c.seed, c.local) for c in manifest.submission.checkpoints] == [
        (0, "runs/pythia-topk/layers.3/seed0"), (4, "runs/pythia-topk/layers.3/seed4"), (7, "runs/pythia-topk/layers.3/seed7")]
    problems, _ = validate_paths([out], check_files=True)
    assert [str(p) for p in problems] == []


def test_dictionary_learning_matryoshka_is_proposed_as_matryoshka_and_checked_as_such(tmp_path):
    run = tmp_path / "submissions" / "me" / "dl-run"
    for trainer, seed in enumerate((11, 12, 13)):
        ckf.write_dictionary_learning(run, "MatryoshkaBatchTopKSAE", trainer=trainer, seed=seed)
    out = tmp_path / "submissions" / "me" / "matryoshka.toml"
    write_new_submission([str(run)], name="me/matryoshka", out=out)
    text = out.read_text()
    assert 'architecture = "matryoshka"' in text
    out.write_text(fill_todos(text))
    assert [c.seed for c in load_manifest(out).submission.checkpoints] == [11, 12, 13]  # from trainer.seed
    assert validate_paths([out], check_files=True)[0] == []

    out.write_text(out.read_text().replace('architecture = "matryoshka"', 'architecture = "batchtopk"'))
    problems, _ = validate_paths([out], check_files=True)
    assert {p.field for p in problems} == {"sae.architecture"}
    assert all("trained as a matryoshka" in p.detail and 'declare architecture = "matryoshka"' in p.detail for p in problems)


# --- folders outside the submissions tree ------------------------------------------------------------------
def test_local_folders_outside_the_manifest_need_local_outside(tmp_path):
    saes = tmp_path / "elsewhere" / "saes"
    for seed in (0, 1):
        ckf.write_saelens(saes / f"seed{seed}", "topk", d_in=8, d_sae=32, seed=seed, model_name="EleutherAI/pythia-70m",
                          hook_name="blocks.3.hook_resid_post")
    folder = tmp_path / "submissions" / "me"
    folder.mkdir(parents=True)
    path = folder / "outside.toml"
    blocks = "".join(f'\n[[checkpoints]]\nseed = {s}\nlocal = "{saes / f"seed{s}"}"\n' for s in (0, 1))
    path.write_text(manifest_text("me/outside", blocks))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.field == "checkpoints[0].local" and "local_outside = true" in info.value.detail

    declared = blocks.replace("\n[[checkpoints]]\n", "\n[[checkpoints]]\nlocal_outside = true\n")
    path.write_text(manifest_text("me/outside", declared))
    manifest = load_manifest(path)
    assert manifest.submission.is_local and [c.local_outside for c in manifest.submission.checkpoints] == [True, True]
    assert validate_paths([path], check_files=True)[0] == []

    relative = declared.replace(str(saes), "../../elsewhere/saes")  # '..' is fine once declared
    path.write_text(manifest_text("me/outside", relative))
    assert validate_paths([path], check_files=True)[0] == []


def test_hub_bound_submissions_keep_the_containment_rule():
    hub = f'\n[[checkpoints]]\nseed = 0\nrepo = "org/saes"\nrevision = "{MODEL_SHA}"\npath = "s0"\n'
    outside = '\n[[checkpoints]]\nseed = 1\nlocal = "/data/saes/seed1"\nlocal_outside = true\n'
    with pytest.raises(ManifestError) as info:
        parse_manifest(manifest_text("me/mixed", hub + outside), "m.toml")
    assert info.value.field == "checkpoints[1].local_outside" and "Hub checkpoints" in info.value.detail
    with pytest.raises(ManifestError) as info:
        parse_manifest(manifest_text("me/stray", hub.replace('path = "s0"\n', 'path = "s0"\nlocal_outside = true\n')), "m.toml")
    assert info.value.field == "checkpoints[0].local_outside"


def test_new_submission_keeps_an_outside_folder_where_it_is(tmp_path):
    saes = tmp_path / "scratch" / "run"
    ckf.write_sparsify_seeds(saes, "layers.3", seeds=(0, 1))
    out = tmp_path / "repo" / "submissions" / "me" / "kept.toml"
    write_new_submission([str(saes / "layers.3")], name="me/kept", out=out)
    out.write_text(fill_todos(out.read_text()))
    manifest = load_manifest(out)
    assert [(c.local, c.local_outside) for c in manifest.submission.checkpoints] == [
        (str(saes / "layers.3" / "seed0"), True), (str(saes / "layers.3" / "seed1"), True)]
    assert validate_paths([out], check_files=True)[0] == []


def test_new_submission_refuses_hub_and_outside_folders_together(tmp_path):
    from hub_fixtures import add_commit, saelens_checkpoint, with_prefix

    sha = add_commit(tmp_path / "hub", "org/repo", with_prefix("s1", saelens_checkpoint(8, 32, architecture="topk", k=4)))
    saes = tmp_path / "scratch"
    ckf.write_saelens(saes / "s0", "topk", d_in=8, d_sae=32)
    with pytest.raises(SourceError, match="Hub-bound"):
        write_new_submission([str(saes / "s0"), f"hf://org/repo@{sha}/s1"], name="me/x", out=tmp_path / "sub" / "x.toml",
                             hub_cache=tmp_path / "hub")


# --- what a folder sweep counts as a manifest ---------------------------------------------------------------
def test_a_sweep_skips_virtualenvs_hidden_folders_and_other_toml(tmp_path):
    tree = tmp_path / "work"
    good = tree / "me" / "a.toml"
    good.parent.mkdir(parents=True)
    good.write_text(manifest_text("me/a", '\n[[checkpoints]]\nseed = 0\nlocal = "s0"\n'))
    (tree / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1"\n')
    (tree / "ruff.toml").write_text("line-length = 100\n")
    venv = tree / "venv"
    (venv / "lib" / "site" / "pkg").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "lib" / "site" / "pkg" / "pyproject.toml").write_text("not toml at all [[[")
    hidden = tree / ".venv" / "lib"
    hidden.mkdir(parents=True)
    (hidden / "conf.toml").write_text("not toml [[[")
    broken = tree / "me" / "broken.toml"
    broken.write_text('name = "me/broken"\nkind = "checkpoints"\n[[[')  # meant as a manifest: reported
    found, problems = discover_manifests([tree])
    assert sorted(found) == [good, broken] and problems == []
    problems, checked = validate_paths([tree])
    assert checked == 2 and {Path(p.file) for p in problems} == {broken}
    with pytest.raises(ManifestError, match="not valid TOML"):
        load_manifests([tree])
    broken.unlink()
    assert [m.name for m in load_manifests([tree])] == ["me/a"]
