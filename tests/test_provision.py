"""Preparing width ladders before a unit is timed (benchmark/provision.py)."""

from __future__ import annotations

import pytest
import torch

from benchmark.errors import CanonBenchError
from benchmark.provision import SubmissionInputs
from benchmark.sae.checkpoints.native import save_native
from benchmark.sae.model import SAE, SAEConfig
from benchmark.submission.manifest import load_manifest
from tasks import get_task


def sae(width: int, seed: int, d_in: int = 16) -> SAE:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(width, d_in, generator=g)
    return SAE(SAEConfig("standard", d_in, width), W_enc=rows.T.clone(), W_dec=rows)


def ladder_manifest(root, entries: list[tuple[int, int | None, int]]):
    """``entries``: (seed, declared width or None for the primary 32, actual width of the file)."""
    lines = ['kind = "checkpoints"', 'name = "t/ladder"', 'title = "t"', 'authors = ["t"]', 'license = "MIT"',
             'tags = ["preset:song2025-toy"]', "[model]", 'name = "song-data"', 'hook = "x"', 'package = "canonbench"',
             "[sae]", 'architecture = "standard"', "width = 32", 'format = "native"']
    for seed, declared, actual in entries:
        folder = f"w{actual}-s{seed}-{declared}"
        save_native(sae(actual, seed), root / folder)
        lines += ["[[checkpoints]]", f"seed = {seed}", f'local = "{folder}"'] + ([f"width = {declared}"] if declared else [])
    (root / "m.toml").write_text("\n".join(lines) + "\n")
    return load_manifest(root / "m.toml")


def test_a_checkpoints_ladder_loads_every_width_and_shares_the_primary_saes(tmp_path):
    manifest = ladder_manifest(tmp_path, [(0, None, 32), (1, None, 32), (0, 8, 8), (0, 16, 16)])
    inputs = SubmissionInputs(manifest, cache_dir=tmp_path / "c", quiet=True)
    primary, _ = inputs.saes()
    assert sorted(primary) == [0, 1] and all(s.d_sae == 32 for s in primary.values())
    ladder, records = inputs.ladder()
    assert {w: sorted(s) for w, s in ladder.items()} == {8: [0], 16: [0], 32: [0, 1]}
    assert ladder[32] is primary  # loaded once
    assert sorted((r["seed"], r["width"]) for r in records) == [(0, 8), (0, 16), (0, 32), (1, 32)]
    organisms = inputs.organisms(ladder=True)
    assert organisms["song2025-toy"].ladder is not None and sorted(organisms["song2025-toy"].ladder) == [8, 16, 32]
    prepared, records, _ = inputs.prepare(get_task("stitching").metadata)
    assert "organisms" in prepared and len(records) == 4
    prepared, _, _ = inputs.prepare(get_task("cross-seed").metadata, skip_activations=True)
    assert sorted(prepared["saes"]) == [0, 1] and "ladder" not in prepared


def test_a_ladder_checkpoint_of_the_wrong_width_is_named(tmp_path):
    manifest = ladder_manifest(tmp_path, [(0, None, 32), (0, 8, 16)])
    with pytest.raises(CanonBenchError) as err:
        SubmissionInputs(manifest, cache_dir=tmp_path / "c", quiet=True).ladder()
    # refused on the header, before any weight is read (the size bound of the rung's own width)
    assert err.value.field == "d_sae" and "d_sae=16" in str(err.value) and "checkpoints[1].width=8" in str(err.value)
    assert "refused before reading any weights" in str(err.value)


def test_validate_compares_each_checkpoint_with_its_own_width(tmp_path):
    from benchmark.submission.validate import validate_paths

    ladder_manifest(tmp_path, [(0, None, 32), (0, 8, 8)])
    problems, checked = validate_paths([tmp_path / "m.toml"], check_files=True, cache_dir=tmp_path / "c")
    assert checked == 1 and not [p for p in problems if "d_sae" in str(p)]
    (tmp_path / "m.toml").write_text((tmp_path / "m.toml").read_text().replace("width = 8", "width = 12"))
    problems, _ = validate_paths([tmp_path / "m.toml"], check_files=True, cache_dir=tmp_path / "c")
    assert any("d_sae=8" in str(p) and p.field == "checkpoints[1].width" for p in problems)
