"""The manifest schema as the runner sees it (``load_manifest``): committed examples load, each broken
manifest is refused naming its field, and ``schema_problems`` lists every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.errors import ManifestError
from benchmark.submission.manifest import CheckpointsSubmission, load_manifest, load_manifests, parse_manifest, schema_problems

ROOT = Path(__file__).resolve().parents[2]
BROKEN = sorted((ROOT / "tests" / "fixtures" / "broken_manifests").glob("*.toml"))
EXAMPLES = sorted((ROOT / "docs" / "example-manifests").glob("*.toml"))
# Checks that need more than one manifest's schema live in ``canonbench validate`` only.
VALIDATE_ONLY = {"todo_left", "same_checkpoint_twice"}


def expected_field(path: Path) -> str:
    return path.read_text(encoding="utf-8").splitlines()[0].removeprefix("# expect-field:").strip()


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_load(path):
    manifest = load_manifest(path)
    sub = manifest.submission
    assert isinstance(sub, CheckpointsSubmission)
    assert manifest.name == f"examples/{path.stem}"
    assert sub.seeds == sorted(set(sub.seeds)) and not sub.is_local
    assert all(c.revision and len(c.revision) == 40 for c in sub.checkpoints)


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_manifests_are_refused_by_the_loader(path):
    if path.stem in VALIDATE_ONLY:
        load_manifest(path)  # the schema alone accepts it; `canonbench validate` refuses it
        return
    field = expected_field(path)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    error = info.value
    assert error.file == str(path)
    if "(line" in field:  # TOML syntax errors: `validate` adds the key written on the line
        assert error.field is None and "line 5" in error.detail
    else:  # the loader reports the first problem; the expected one is among all of them
        fields = {p.field for p in schema_problems(path.read_text(encoding="utf-8"), path)}
        assert error.field in fields and field in fields


def test_schema_problems_lists_every_field():
    text = (ROOT / "docs" / "example-manifests" / "gpt2-topk-16k-seeds.toml").read_text()
    assert schema_problems(text, "x.toml") == []
    broken = (
        text.replace("width = 16384", "width = 0")
        .replace('hook = "blocks.8.hook_resid_pre"', 'hook = "blocks 8"')
        .replace('title = "', 'titel = "')
    )
    fields = sorted(p.field for p in schema_problems(broken, "x.toml"))
    assert fields == ["model.hook", "sae.width", "titel", "title"]
    with pytest.raises(ManifestError):  # the loader still stops at the first
        parse_manifest(broken, "x.toml")
    assert [p.field for p in schema_problems("kind = [", "x.toml")] == [None]


def test_local_paths_resolve_against_the_manifest_folder(tmp_path):
    text = (ROOT / "docs" / "example-manifests" / "gpt2-small-oai-v5-32k.toml").read_text()
    start = text.index("[[checkpoints]]")
    text = text[:start] + '[[checkpoints]]\nseed = 0\nlocal = "ckpt/seed0"\n'
    path = tmp_path / "org" / "m.toml"
    path.parent.mkdir()
    path.write_text(text)
    manifest = load_manifest(path)
    assert manifest.submission.is_local
    assert manifest.resolve_local("ckpt/seed0") == (tmp_path / "org" / "ckpt" / "seed0").resolve()


def test_load_manifests_refuses_duplicate_names(tmp_path):
    text = EXAMPLES[0].read_text()
    (tmp_path / "a.toml").write_text(text)
    (tmp_path / "b.toml").write_text(text)
    with pytest.raises(ManifestError) as info:
        load_manifests([tmp_path])
    assert info.value.field == "name" and info.value.file == str(tmp_path / "b.toml")
