"""``canonbench validate`` and ``canonbench new-submission``, offline against real Hub cache layouts."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark import cli
from benchmark.errors import ManifestError, SourceError
from benchmark.submission.manifest import load_manifest
from benchmark.submission.new_submission import toml_string, write_new_submission
from benchmark.submission.validate import validate_paths

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

try:
    from tests.hub_fixtures import add_commit, saelens_checkpoint, with_prefix, write_folder
except ImportError:  # tests/ not a package
    from hub_fixtures import add_commit, saelens_checkpoint, with_prefix, write_folder

ROOT = Path(__file__).resolve().parents[2]
BROKEN = ROOT / "tests" / "fixtures" / "broken_manifests"
BROKEN_FILES = sorted(BROKEN.glob("*.toml"))
REPO = "example-org/gpt2-topk-saes"
MODEL_SHA = "607a30d783dfa663caf39e06633721c8d4cfcd7e"


pytestmark = pytest.mark.usefixtures("offline_hub")


def expectations(path: Path) -> tuple[str, str]:
    """The ``# expect-field:`` and ``# expect-message:`` header lines of a broken manifest."""
    head = path.read_text(encoding="utf-8").splitlines()[:2]
    field = head[0].removeprefix("# expect-field:").strip()
    message = head[1].removeprefix("# expect-message:").strip()
    assert head[0].startswith("# expect-field:") and message, f"{path} lacks its expectation header"
    return field, message


# ------------------------------------------------------------------------------ manifests only
def test_committed_submissions_validate():
    problems, checked = validate_paths([ROOT / "submissions"])
    assert [str(p) for p in problems] == []
    assert checked == len(list((ROOT / "submissions").rglob("*.toml"))) >= 3


def test_there_is_a_broken_manifest_for_each_error_case():
    assert len(BROKEN_FILES) >= 20


@pytest.mark.parametrize("path", BROKEN_FILES, ids=[p.stem for p in BROKEN_FILES])
def test_each_broken_manifest_names_file_and_field(path):
    field, message = expectations(path)
    problems, checked = validate_paths([path])
    assert checked == 1 and problems
    lines = [str(p) for p in problems]
    assert all(line.startswith(f"{path}: ") and "\n" not in line for line in lines)
    assert any(p.field == field and message in p.detail for p in problems), lines


def test_all_problems_are_collected_across_files():
    problems, checked = validate_paths([BROKEN])
    assert checked == len(BROKEN_FILES)
    assert {Path(p.file) for p in problems} == set(BROKEN_FILES)


def test_all_problems_are_collected_within_a_file(tmp_path):
    text = (ROOT / "docs" / "example-manifests" / "gpt2-topk-16k-seeds.toml").read_text()
    text = text.replace('revision = "9c41d2e7b05a3f86c1e2d4b7a9f0e3c5d8b6a142"\npath = "seed_1', 'revision = "main"\npath = "seed_1', 1)
    text = text.replace("width = 16384", "width = -1").replace('license = "Apache-2.0"', "")
    path = tmp_path / "three.toml"
    path.write_text(text)
    problems, _ = validate_paths([path])
    assert sorted(p.field for p in problems) == ["checkpoints[1].revision", "license", "sae.width"]


def test_duplicate_names_and_missing_paths(tmp_path):
    example = ROOT / "docs" / "example-manifests" / "gpt2-small-oai-v5-32k.toml"
    (tmp_path / "a.toml").write_text(example.read_text())
    (tmp_path / "b.toml").write_text(example.read_text())
    problems, checked = validate_paths([tmp_path, tmp_path / "absent.toml"])
    assert checked == 2
    lines = [str(p) for p in problems]
    assert any(l.startswith(f"{tmp_path / 'b.toml'}: name: duplicate submission name") for l in lines), lines
    assert any(l.startswith(f"{tmp_path / 'absent.toml'}: no such file or folder") for l in lines), lines


def test_name_must_match_place_under_submissions(tmp_path):
    example = (ROOT / "docs" / "example-manifests" / "gpt2-small-oai-v5-32k.toml").read_text()
    good = tmp_path / "submissions" / "examples" / "gpt2-small-oai-v5-32k.toml"
    wrong_org = tmp_path / "submissions" / "other" / "gpt2-small-oai-v5-32k.toml"
    too_deep = tmp_path / "submissions" / "examples" / "deeper" / "gpt2-small-oai-v5-32k.toml"
    for path in (good, wrong_org, too_deep):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(example)  # its name is examples/gpt2-small-oai-v5-32k
    problems, _ = validate_paths([good])
    assert problems == []
    for path in (wrong_org, too_deep):
        problems, _ = validate_paths([path])
        assert [p.field for p in problems] == ["name"] and "submissions/<org>/<name>.toml" in problems[0].detail


def test_unknown_synthetic_preset(tmp_path):
    from benchmark.data.organisms import PRESETS

    known = next(iter(PRESETS))
    text = f'''name = "org/r"
kind = "recipe"
title = "t"
authors = ["a"]
license = "MIT"
[recipe]
architecture = "standard"
width = 64
seeds = [0, 1]
trains_on = "synthetic"
presets = ["{known}", "no-such-preset"]
'''
    path = tmp_path / "r.toml"
    path.write_text(text)
    problems, _ = validate_paths([path])
    assert [p.field for p in problems] == ["recipe.presets[1]"]


def test_cli_exit_codes(capsys):
    assert cli.main(["validate", str(BROKEN)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= len(BROKEN_FILES) and all(line.startswith("error: ") for line in err)
    assert cli.main(["validate", str(ROOT / "submissions")]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


# ------------------------------------------------------------------------------- --check-files
def manifest_text(name: str, checkpoints: list[dict], *, width=32, d_in=8, architecture="topk", k=4,
                  model_pin=f'revision = "{MODEL_SHA}"') -> str:
    lines = [
        f'name = "{name}"', 'kind = "checkpoints"', 'title = "t"', 'authors = ["a"]', 'license = "MIT"',
        "[model]", 'name = "gpt2"', 'hook = "blocks.6.hook_resid_pre"', model_pin,
        "[sae]", f'architecture = "{architecture}"', f"width = {width}", f"d_in = {d_in}",
    ]
    if k is not None:
        lines.append(f"k = {k}")
    for entry in checkpoints:
        lines.append("[[checkpoints]]")
        lines += [f"{key} = {toml_string(v) if isinstance(v, str) else v}" for key, v in entry.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def seeded_repo(tmp_path):
    hub = tmp_path / "hub"
    files = {}
    for seed in range(3):
        files.update(with_prefix(f"seed{seed}", saelens_checkpoint(8, 32, architecture="topk", k=4, seed=seed)))
    files.update(with_prefix("copy-of-seed0", saelens_checkpoint(8, 32, architecture="topk", k=4, seed=0)))
    sha = add_commit(hub, REPO, files)
    return hub, sha


def hub_entries(sha, paths):
    return [{"seed": i, "repo": REPO, "revision": sha, "path": p} for i, p in enumerate(paths)]


def write(tmp_path: Path, text: str, name: str = "m.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_check_files_accepts_agreeing_checkpoints(tmp_path, seeded_repo):
    hub, sha = seeded_repo
    path = write(tmp_path, manifest_text("org/ok", hub_entries(sha, ["seed0", "seed1", "seed2"])))
    problems, checked = validate_paths([path], check_files=True, cache_dir=tmp_path / "cb", hub_cache=hub)
    assert [str(p) for p in problems] == [] and checked == 1


@pytest.mark.parametrize(
    "change, field, fragment",
    [
        (dict(width=64), "sae.width", "d_sae=32 but the manifest says 64"),
        (dict(d_in=16), "sae.d_in", "d_in=8 but the manifest says 16"),
        (dict(architecture="gated", k=None), "sae.architecture", "is a topk SAE but the manifest says gated"),
        (dict(k=8), "sae.k", "k=4 but the manifest says 8"),
    ],
)
def test_check_files_reports_shape_mismatches(tmp_path, seeded_repo, change, field, fragment):
    hub, sha = seeded_repo
    path = write(tmp_path, manifest_text("org/bad", hub_entries(sha, ["seed0", "seed1"]), **change))
    problems, _ = validate_paths([path], check_files=True, hub_cache=hub)
    assert problems and all(p.field == field and fragment in p.detail for p in problems), [str(p) for p in problems]
    assert len(problems) == 2  # one per checkpoint: it does not stop at the first


def test_check_files_reports_missing_and_identical_checkpoints_but_checks_the_rest(tmp_path, seeded_repo):
    hub, sha = seeded_repo
    path = write(tmp_path, manifest_text("org/bad", hub_entries(sha, ["seed0", "seed9", "copy-of-seed0", "seed2"]),
                                         width=64))
    problems, _ = validate_paths([path], check_files=True, hub_cache=hub)
    by_field = {}
    for p in problems:
        by_field.setdefault(p.field, []).append(p.detail)
    assert "seed9" in by_field["checkpoints[1]"][0]
    assert "same files as checkpoints[0]" in by_field["checkpoints[2]"][0]
    assert len(by_field["sae.width"]) == 3  # seed0, copy-of-seed0 and seed2 were still inspected


def test_check_files_local_model_and_checkpoint(tmp_path):
    write_folder(tmp_path / "ck0", saelens_checkpoint(8, 32, architecture="topk", k=4, seed=0))
    write_folder(tmp_path / "ck1", saelens_checkpoint(8, 32, architecture="topk", k=4, seed=1))
    entries = [{"seed": 0, "local": "ck0"}, {"seed": 1, "local": "ck1"}]
    path = write(tmp_path, manifest_text("org/local", entries, model_pin='local = "model-folder"'))
    problems, _ = validate_paths([path], check_files=True)
    assert [(p.field, "does not exist" in p.detail) for p in problems] == [("model.local", True)]
    (tmp_path / "model-folder").mkdir()
    assert validate_paths([path], check_files=True)[0] == []
    # without --check-files nothing on disk is read
    (tmp_path / "model-folder").rmdir()
    assert validate_paths([path])[0] == []


# ------------------------------------------------------------------------------- new-submission
def fill_todos(text: str) -> str:
    """What a user does after new-submission: replace each TODO value."""
    filled = {
        "title": '"Three seeds of a TopK SAE"', "authors": '["A. Author"]', "license": '"MIT"',
        "revision": f'"{MODEL_SHA}"', "name": '"gpt2"', "hook": '"blocks.6.hook_resid_pre"',
        "architecture": '"topk"',
    }
    out = []
    for line in text.splitlines():
        match = re.match(r"^(\w+) = .*TODO", line)
        out.append(f"{match.group(1)} = {filled[match.group(1)]}" if match else line)
    return "\n".join(out) + "\n"


def test_new_submission_from_hub_branch(tmp_path, seeded_repo):
    hub, sha = seeded_repo
    out = tmp_path / "submissions" / "org" / "topk-seeds.toml"
    written = write_new_submission(
        [f"hf://{REPO}@main/seed0", f"hf://{REPO}@main/seed1", f"hf://{REPO}@{sha}/seed2"],
        name="org/topk-seeds", seeds=[10, 11, 12], out=out, hub_cache=hub,
    )
    assert written == out
    text = out.read_text()
    # TODO fields block validation, each named
    problems, _ = validate_paths([out])
    assert sorted(p.field for p in problems) == ["authors[0]", "license", "model.revision", "title"]
    out.write_text(fill_todos(text))
    problems, _ = validate_paths([out], check_files=True, hub_cache=hub)
    assert [str(p) for p in problems] == []
    sub = load_manifest(out).submission
    assert [(c.seed, c.repo, c.revision, c.path) for c in sub.checkpoints] == [
        (10, REPO, sha, "seed0"), (11, REPO, sha, "seed1"), (12, REPO, sha, "seed2")
    ]
    assert (sub.sae.architecture, sub.sae.width, sub.sae.d_in, sub.sae.k, sub.sae.format) == ("topk", 32, 8, 4, "saelens")
    assert (sub.model.name, sub.model.hook) == ("gpt2", "blocks.0.hook_resid_pre")
    assert "main" in text  # the requested branch is kept as a comment next to the pinned sha


def test_new_submission_pins_the_base_model_when_it_is_known(tmp_path, seeded_repo):
    hub, sha = seeded_repo
    model_sha = add_commit(hub, "gpt2", {"config.json": b"{}", "model.safetensors": b"weights"})
    out = write_new_submission([f"hf://{REPO}@{sha}/seed0"], name="org/one", out=tmp_path / "one.toml", hub_cache=hub)
    problems, _ = validate_paths([out])
    assert sorted(p.field for p in problems) == ["authors[0]", "license", "title"]
    out.write_text(fill_todos(out.read_text()))
    assert load_manifest(out).submission.model.revision == model_sha


def test_new_submission_from_local_folders(tmp_path):
    base = tmp_path / "submissions" / "org"
    for seed in range(2):
        write_folder(base / "ckpts" / f"s{seed}", saelens_checkpoint(8, 32, seed=seed))
    out = write_new_submission([str(base / "ckpts" / "s0"), str(base / "ckpts" / "s1")], name="org/local-seeds",
                               out=base / "local-seeds.toml")
    out.write_text(fill_todos(out.read_text()))
    assert [str(p) for p in validate_paths([out], check_files=True)[0]] == []
    assert [c.local for c in load_manifest(out).submission.checkpoints] == ["ckpts/s0", "ckpts/s1"]


def test_new_submission_from_saelens_registry(tmp_path, seeded_repo):
    hub, sha = seeded_repo
    registry = tmp_path / "pretrained_saes.yaml"
    registry.write_text(f"rel:\n  repo_id: {REPO}\n  model: gpt2-small\n  saes:\n"
                        "  - id: a\n    path: seed0\n  - id: b\n    path: seed1\n")
    out = write_new_submission(["saelens://rel/a", "saelens://rel/b"], name="org/from-registry",
                               out=tmp_path / "x.toml", hub_cache=hub, saelens_registry=registry)
    out.write_text(fill_todos(out.read_text()))
    sub = load_manifest(out).submission
    assert [(c.repo, c.revision, c.path) for c in sub.checkpoints] == [(REPO, sha, "seed0"), (REPO, sha, "seed1")]


def test_new_submission_refusals(tmp_path, seeded_repo):
    hub, sha = seeded_repo
    other = add_commit(hub, "example-org/wider", with_prefix("s", saelens_checkpoint(8, 64, architecture="topk", k=4)))
    with pytest.raises(SourceError, match="disagree on d_sae"):
        write_new_submission([f"hf://{REPO}@{sha}/seed0", f"hf://example-org/wider@{other}/s"], name="org/x",
                             out=tmp_path / "x.toml", hub_cache=hub)
    with pytest.raises(ManifestError, match="one seed per source"):
        write_new_submission([f"hf://{REPO}@{sha}/seed0"], name="org/x", seeds=[0, 1], out=tmp_path / "x.toml")
    with pytest.raises(ManifestError, match="org/name"):
        write_new_submission([f"hf://{REPO}@{sha}/seed0"], name="Org Name", out=tmp_path / "x.toml")
    with pytest.raises(SourceError, match="no such file or folder"):
        write_new_submission([str(tmp_path / "elsewhere")], name="org/x", out=tmp_path / "sub" / "x.toml")
    existing = write(tmp_path, "keep me")
    with pytest.raises(ManifestError, match="already exists"):
        write_new_submission([f"hf://{REPO}@{sha}/seed0"], name="org/x", out=existing, hub_cache=hub)
    assert existing.read_text() == "keep me"


def test_new_submission_cli(tmp_path, seeded_repo, monkeypatch, capsys):
    hub, sha = seeded_repo
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["new-submission", f"hf://{REPO}@main/seed0", f"hf://{REPO}@main/seed1", "--name", "org/cli",
                     "--cache-dir", str(tmp_path / "cb")]) == 0
    assert (tmp_path / "submissions" / "org" / "cli.toml").is_file()
    assert "TODO" in capsys.readouterr().out
    assert cli.main(["new-submission", f"hf://{REPO}@main/nope", "--name", "org/cli2"]) == 2
    assert f"{REPO}@{sha}/nope" in capsys.readouterr().err


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",))))
def test_toml_string_round_trips(value):
    assert tomllib.loads(f"x = {toml_string(value)}")["x"] == value
