"""``canonbench run`` as a researcher meets it: a folder with one bad manifest runs the good ones, a
checkpoint that is not what its manifest declares is never scored, Ctrl-C during ``--overwrite``
never reports the old result as this run's, and edited checkpoint files are recomputed with a
warning and shown with their new hashes on the site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import checkpoint_fixtures as ckf
import fault_tasks
from benchmark import cli
from benchmark.results import ResultStore
from benchmark.runner import RunInterrupted, run_benchmark
from benchmark.submission.manifest import load_manifests

MODEL_SHA = "607a30d783dfa663caf39e06633721c8d4cfcd7e"


def recipe(folder: Path, name: str, extra: str = "") -> Path:
    path = folder / "acme" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'name = "acme/{name}"\ntitle = "t"\nauthors = ["a"]\nlicense = "MIT"\nkind = "recipe"\n{extra}'
                    '[recipe]\narchitecture = "topk"\nwidth = 8\nseeds = [0, 1]\ntrains_on = "synthetic"\npresets = ["p"]\n',
                    encoding="utf-8")
    return path


def statuses(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "×":
            out[parts[1]] = parts[0]
    return out


# --- with the misbehaving test tasks --------------------------------------------------------------------------
@pytest.fixture
def fault_registry(monkeypatch):
    fault_tasks.register(monkeypatch)


def test_a_bad_manifest_does_not_stop_the_good_ones(tmp_path, capsys, fault_registry):
    subs = tmp_path / "subs"
    recipe(subs, "a-good")
    recipe(subs, "c-good")
    recipe(subs, "b-bad", extra="colour = 'blue'\n")  # an unknown key
    (subs / "acme" / "d-twin.toml").write_text((subs / "acme" / "a-good.toml").read_text())  # a name taken twice
    code = cli.main(["run", str(subs), "--results", str(tmp_path / "r"), "--tasks", "fault-ok", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1  # something was not run
    assert statuses(captured.out) == {"acme/a-good": "done", "acme/c-good": "done"}
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert any("b-bad.toml: colour: unknown key" in line for line in errors), errors
    assert any("d-twin.toml: name: duplicate submission name" in line for line in errors), errors
    assert captured.out.count("bad manifest") == 2 and "2 manifest(s) not run" in captured.out
    assert sorted(set(ResultStore(tmp_path / "r").read()["submission"])) == ["acme/a-good", "acme/c-good"]


def test_ctrl_c_during_overwrite_never_reports_the_old_result_as_stored(tmp_path, monkeypatch, fault_registry):
    manifests = load_manifests([recipe(tmp_path / "subs", "a-stop").parent])
    store = ResultStore(tmp_path / "r")
    monkeypatch.setattr(fault_tasks.InterruptTask, "run", fault_tasks.OkTask.run)  # the first run finishes
    first = run_benchmark(manifests, ["fault-interrupt"], results_dir=tmp_path / "r", quiet=True)
    assert [o.status for o in first.outcomes] == ["done"]
    old_run = set(store.read()["run_id"])

    monkeypatch.undo()
    fault_tasks.register(monkeypatch)  # now Ctrl-C arrives while the unit is recomputed
    with pytest.raises(RunInterrupted) as info:
        run_benchmark(manifests, ["fault-interrupt"], results_dir=tmp_path / "r", quiet=True, overwrite=True)
    outcome = info.value.summary.outcomes[-1]
    assert outcome.status == "interrupted" and "nothing of this run was stored" in outcome.detail
    assert set(store.read()["run_id"]) == old_run  # the old unit stays, and is not claimed as this run's


# --- with real checkpoints and the real cross-seed task ---------------------------------------------------------
def checkpoints_manifest(folder: Path, name: str, architecture: str, *, seeds=(0, 1, 2)) -> Path:
    blocks = "".join(f'\n[[checkpoints]]\nseed = {s}\nlocal = "saes/seed{s}"\n' for s in seeds)
    path = folder / f"{name}.toml"
    path.write_text(f'name = "me/{name}"\nkind = "checkpoints"\ntitle = "t"\nauthors = ["a"]\nlicense = "MIT"\n'
                    f'[model]\nname = "gpt2"\nhook = "blocks.3.hook_resid_post"\nrevision = "{MODEL_SHA}"\n'
                    f'[sae]\narchitecture = "{architecture}"\nwidth = 32\n{blocks}', encoding="utf-8")
    return path


@pytest.fixture
def standard_saes(tmp_path) -> Path:
    folder = tmp_path / "submissions" / "me"
    for seed in (0, 1, 2):
        ckf.write_saelens(folder / "saes" / f"seed{seed}", "standard", d_in=8, d_sae=32, seed=seed)
    return folder


def test_a_standard_sae_declared_jumprelu_is_never_scored(tmp_path, capsys, standard_saes):
    path = checkpoints_manifest(standard_saes, "declared-wrong", "jumprelu")
    code = cli.main(["run", str(path), "--results", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"),
                     "--tasks", "cross-seed", "--no-activations", "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    line = next(line for line in out.splitlines() if "me/declared-wrong × cross-seed" in line)
    assert line.split()[0] == "failed" and "sae.architecture" in line and "trained as a standard" in line, line
    assert not (tmp_path / "r" / "units").exists()  # nothing stored


def test_edited_checkpoint_files_are_recomputed_and_the_site_shows_the_new_hashes(tmp_path, capsys, caplog, standard_saes):
    import hashlib

    path = checkpoints_manifest(standard_saes, "edited", "standard")
    argv = ["run", str(path), "--results", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"), "--tasks", "cross-seed",
            "--no-activations"]
    assert cli.main(argv) == 0
    assert statuses(capsys.readouterr().out) == {"me/edited": "done"}
    weights = standard_saes / "saes" / "seed1" / "sae_weights.safetensors"
    old_hash = hashlib.sha256(weights.read_bytes()).hexdigest()
    ckf.write_saelens(standard_saes / "saes" / "seed1", "standard", d_in=8, d_sae=32, seed=41)  # retrained in place
    new_hash = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert new_hash != old_hash

    caplog.clear()
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert statuses(out) == {"me/edited": "done"} and "inputs changed: recomputed" in out
    assert any("inputs changed" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    rows = ResultStore(tmp_path / "r").read()
    assert rows["run_id"].nunique() == 1  # only the new unit is shown; the stale one moved to superseded/
    records = json.loads(rows["checkpoints"].iloc[0])
    assert {r["seed"]: r["files"]["sae_weights.safetensors"]["sha256"] for r in records}[1] == new_hash

    assert cli.main(["leaderboard", "build", "--results", str(tmp_path / "r"), "--submissions", str(tmp_path / "submissions"),
                     "--out", str(tmp_path / "site")]) == 0
    page = (tmp_path / "site" / "submissions" / "me~edited.html").read_text()
    assert new_hash in page and old_hash not in page
