"""Issue #14, class 1 on the ``run`` path: memory bounded by the sizes the manifest declares.

``run`` resolves each checkpoint with ``resolve_checkpoint`` and then loads it. Resolving now runs the
same header check as ``validate --check-files`` with the manifest's ``sae.width`` / ``sae.d_in``
(``expected_size``), so a checkpoint declaring more than its manifest is refused before a single
weight is read, and the resolved checkpoint carries that bound for ``load_sae``.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

import checkpoint_fixtures as fx
from benchmark.errors import CheckpointError
from benchmark.sae.checkpoints import load_sae
from benchmark.submission import sources
from benchmark.submission.manifest import load_manifest

SHA = "607a30d783dfa663caf39e06633721c8d4cfcd7e"


def write_manifest(folder: Path, *, width: int, d_in: int | None, fmt: str = "auto") -> Path:
    d_in_line = f"d_in = {d_in}\n" if d_in is not None else ""
    path = folder / "m.toml"
    path.write_text(f'''name = "org/m"
kind = "checkpoints"
title = "t"
authors = ["a"]
license = "MIT"
[model]
name = "gpt2"
hook = "blocks.3.hook_resid_post"
revision = "{SHA}"
[sae]
architecture = "standard"
width = {width}
{d_in_line}format = "{fmt}"
[[checkpoints]]
seed = 0
local = "ck"
''')
    return path


def resolve(path: Path):
    manifest = load_manifest(path)
    return sources.resolve_checkpoint(manifest, manifest.submission.checkpoints[0])


def test_a_checkpoint_larger_than_its_manifest_is_refused_before_reading_weights(tmp_path):
    """A 48 MB checkpoint under a manifest declaring width 16: refused on its header while resolving,
    without reading its weights (the run path used to load all of it, then compare)."""
    fx.write_saelens(tmp_path / "ck", "standard", d_in=2000, d_sae=3000)
    path = write_manifest(tmp_path, width=16, d_in=2000)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as info:
            resolve(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.field == "d_sae" and "sae.width=16" in str(info.value) and "cfg.json" in str(info.value)
    # what is allocated is the file hash's two 8 MiB read buffers, never the 48 MB of weights
    assert peak < 20 << 20, f"{peak / 2**20:.1f} MB allocated"


@pytest.mark.parametrize("width,d_in,field", [(32, 4, "d_in"), (64, None, "d_sae")])
def test_every_declared_size_is_enforced(tmp_path, width, d_in, field):
    fx.write_saelens(tmp_path / "ck", "standard", d_in=8, d_sae=32)
    with pytest.raises(CheckpointError) as info:
        resolve(write_manifest(tmp_path, width=width, d_in=d_in))
    assert info.value.field == field


def test_the_resolved_checkpoint_carries_the_bound_into_load_sae(tmp_path):
    fx.write_saelens(tmp_path / "ck", "standard", d_in=8, d_sae=32)
    resolved = resolve(write_manifest(tmp_path, width=32, d_in=8))
    assert (resolved.expect.d_sae, resolved.expect.d_in) == (32, 8)
    assert (resolved.info.d_sae, resolved.info.d_in) == (32, 8)
    assert load_sae(resolved).d_sae == 32
    assert "expect" not in resolved.record() and "info" not in resolved.record()
    # the bound travels with the resolved checkpoint: a file swapped for a larger one is refused
    fx.write_saelens(tmp_path / "ck", "standard", d_in=8, d_sae=64)
    with pytest.raises(CheckpointError) as info:
        load_sae(resolved)
    assert info.value.field == "d_sae"


def test_a_ladder_rung_is_bounded_by_its_own_width(tmp_path):
    """A checkpoint that declares a ladder ``width`` is checked against that width (not ``sae.width``),
    and a file larger than its rung is refused naming the rung's field."""
    fx.write_saelens(tmp_path / "ck", "standard", d_in=8, d_sae=32)
    fx.write_saelens(tmp_path / "wide", "standard", d_in=8, d_sae=64)
    path = write_manifest(tmp_path, width=32, d_in=8)
    path.write_text(path.read_text() + '[[checkpoints]]\nseed = 0\nlocal = "wide"\nwidth = 64\n')
    manifest = load_manifest(path)
    rung = sources.resolve_checkpoint(manifest, manifest.submission.checkpoints[1])
    assert rung.expect.d_sae == 64 and load_sae(rung).d_sae == 64
    path.write_text(path.read_text().replace("width = 64", "width = 48"))
    manifest = load_manifest(path)
    with pytest.raises(CheckpointError) as info:
        sources.resolve_checkpoint(manifest, manifest.submission.checkpoints[1])
    assert info.value.field == "d_sae" and "checkpoints[1].width=48" in str(info.value)
