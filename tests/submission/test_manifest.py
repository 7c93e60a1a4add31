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


LADDER_RECIPE = """kind = "recipe"
name = "t/ladder"
title = "t"
authors = ["t"]
license = "MIT"
[recipe]
architecture = "topk"
width = 32
widths = [32, 8, 16]
seeds = [0, 1]
trains_on = "synthetic"
presets = ["song2025-toy"]
[recipe.hyperparameters]
k = 4
"""


def test_a_recipe_ladder_trains_each_width_as_its_own_recipe():
    from benchmark.training.cache import TrainingData, training_key

    recipe = parse_manifest(LADDER_RECIPE, "x.toml").submission.recipe
    assert recipe.ladder_widths == [8, 16, 32]
    rung = recipe.at_width(16)
    assert rung.width == 16 and rung.widths is None and rung.ladder_widths == [16]
    alone = parse_manifest(LADDER_RECIPE.replace("width = 32\nwidths = [32, 8, 16]", "width = 16"), "x.toml").submission.recipe
    data = TrainingData(identity={"d": 1}, d_in=16, batches=lambda *a: None)
    assert training_key(rung, data)[0] == training_key(alone, data)[0]  # a rung reuses the plain recipe's SAEs
    assert training_key(recipe, data)[0] == training_key(recipe.at_width(32), data)[0]
    with pytest.raises(ValueError, match="not in the ladder"):
        recipe.at_width(64)
    for bad, message in (("widths = [32, 8, 8]", "distinct"), ("widths = [8, 16]", "primary width"), ("widths = [32]", "at least 2")):
        with pytest.raises(ManifestError) as err:
            parse_manifest(LADDER_RECIPE.replace("widths = [32, 8, 16]", bad), "x.toml")
        assert err.value.field == "recipe.widths" and message in str(err.value)


def test_with_hyperparameters_replaces_and_validates():
    from pydantic import ValidationError

    recipe = parse_manifest(LADDER_RECIPE, "x.toml").submission.recipe
    changed = recipe.with_hyperparameters(lr=3e-3, steps=7, lr_decay="cosine")
    hp = changed.hyperparameters
    assert (hp.lr, hp.steps, hp.lr_decay) == (3e-3, 7, "cosine")
    assert hp.model_dump(exclude={"lr", "steps", "lr_decay"}) == recipe.hyperparameters.model_dump(exclude={"lr", "steps", "lr_decay"})
    assert recipe.hyperparameters.steps != 7 and changed.width == recipe.width  # the original is untouched
    for bad in ({"lr": -1.0}, {"lr_decay": "sometimes"}, {"no_such_field": 1}):
        with pytest.raises(ValidationError):
            recipe.with_hyperparameters(**bad)


def test_a_checkpoints_ladder_keeps_the_primary_width_for_other_tasks():
    text = (ROOT / "docs" / "example-manifests" / "gpt2-topk-16k-seeds.toml").read_text()
    text += '\n[[checkpoints]]\nseed = 0\nwidth = 8192\nrepo = "example-org/gpt2-small-topk-16k-seeds"\n' \
            'revision = "9c41d2e7b05a3f86c1e2d4b7a9f0e3c5d8b6a142"\npath = "8k/seed_0"\n'
    sub = parse_manifest(text, "x.toml").submission
    assert sub.ladder_widths == [8192, 16384] and sub.seeds == [0, 1, 2]
    assert [c.seed for c in sub.checkpoints_at(8192)] == [0] and len(sub.checkpoints_at(16384)) == 3
    plain = parse_manifest((ROOT / "docs" / "example-manifests" / "gpt2-topk-16k-seeds.toml").read_text(), "x.toml").submission
    assert plain.ladder_widths == [16384]


def test_ladder_fingerprints_name_the_widths_and_plain_ones_do_not_change():
    from benchmark.submission.identity import inputs_record

    path = ROOT / "docs" / "example-manifests" / "gpt2-topk-16k-seeds.toml"
    plain = inputs_record(load_manifest(path))
    assert all("width" not in c for c in plain["checkpoints"])
    ladder = parse_manifest(path.read_text() + '\n[[checkpoints]]\nseed = 0\nwidth = 8192\n'
                            'repo = "example-org/gpt2-small-topk-16k-seeds"\n'
                            'revision = "9c41d2e7b05a3f86c1e2d4b7a9f0e3c5d8b6a142"\npath = "8k/seed_0"\n', path)
    records = inputs_record(ladder)["checkpoints"]
    assert [(c["seed"], c.get("width")) for c in records] == [(0, 8192), (0, None), (1, None), (2, None)]  # by (seed, width)
    recipe = parse_manifest(LADDER_RECIPE, "x.toml")
    assert inputs_record(recipe)["recipe"]["widths"] == [32, 8, 16]
    single = parse_manifest(LADDER_RECIPE.replace("widths = [32, 8, 16]\n", ""), "x.toml")
    assert "widths" not in inputs_record(single)["recipe"]  # the fingerprint a recipe had before ladders existed
