"""Issue #14, classes 3 and 10 (safetensors): numbers that are expensive to multiply, and weights that
are not floats.

* A safetensors header whose shape entries are thousands of digits long took quadratic time before any
  size check (81 s at 4 MB). Header size, entry count, dimension count and integer length are bounded
  before any arithmetic, and the offsets must tile the data buffer exactly.
* Integer weights passed ``validate --check-files``; the header check validate and load share refuses
  them early, with the reason.
"""

from __future__ import annotations

import time

import pytest

import checkpoint_fixtures as fx
import hostile_checkpoints as hc
from manifest_texts import manifest_text
from refusals import checkpoint_refusal as refusal
from benchmark.sae.checkpoints import inspect_checkpoint, load_sae


# ------------------------------------------------------------------- class 3: expensive numbers
def test_long_integers_in_a_header_are_refused_before_any_arithmetic(tmp_path):
    """1000 shape entries of 1000 digits (a 1 MB header): refused in milliseconds, naming the entry
    (it took about 5 s here and then raised a bare ValueError)."""
    hc.write_safetensors_long_digits(tmp_path / "s", digits=1000, dims=1000)
    start = time.perf_counter()
    for action in (lambda: inspect_checkpoint(tmp_path / "s"), lambda: load_sae(tmp_path / "s")):
        message = refusal(action, "sae_weights.safetensors", "W_enc.shape[0]")
        assert "1000 digits" in message
    assert time.perf_counter() - start < 3.0  # ~0.05 s here; generous for a loaded CI machine


@pytest.mark.parametrize("header,field,fragment", [
    ({"W_enc": {"dtype": "F32", "shape": [2] * 9, "data_offsets": [0, 2048]}}, "W_enc", "at most 8"),
    ({"W_enc": {"dtype": "F32", "shape": [2**63], "data_offsets": [0, 4]}}, "W_enc", "non-negative integers"),
    ({"W_enc": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}, "W_enc", "non-negative integers"),
    ({"W_enc": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": [[[1]]]}}, "W_enc.x[0]", "nested"),
    ({f"t{i}": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]} for i in range(1025)}, "header", "limit 1024"),
])
def test_header_shapes_and_counts_are_bounded(tmp_path, header, field, fragment):
    fx.write_saelens(tmp_path / "s", "standard")
    fx.write_fake_safetensors(tmp_path / "s" / "sae_weights.safetensors", header, data=b"\0" * 4)
    assert fragment in refusal(lambda: inspect_checkpoint(tmp_path / "s"), "sae_weights.safetensors", field)


def test_header_over_one_mebibyte_is_refused_unread(tmp_path):
    fx.write_saelens(tmp_path / "s", "standard")
    fx.write_fake_safetensors(tmp_path / "s" / "sae_weights.safetensors", {}, header_len=4 << 20, data=b" " * (4 << 20))
    assert "limit 1048576" in refusal(lambda: inspect_checkpoint(tmp_path / "s"), "sae_weights.safetensors",
                                      "header")


@pytest.mark.parametrize("offsets,extra,field,fragment", [
    ([[0, 16], [32, 48]], b"", "b", "belong to no tensor"),     # a gap between two tensors
    ([[0, 16], [8, 24]], b"", "b", "overlaps"),                 # two tensors sharing bytes
    ([[0, 16], [16, 32]], b"\0" * 64, "data", "after the last tensor"),  # data nobody declared
])
def test_offsets_must_tile_the_data_exactly(tmp_path, offsets, extra, field, fragment):
    fx.write_saelens(tmp_path / "s", "standard")
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": offsets[0]},
              "b": {"dtype": "F32", "shape": [4], "data_offsets": offsets[1]}}
    end = max(o[1] for o in offsets)
    fx.write_fake_safetensors(tmp_path / "s" / "sae_weights.safetensors", header, data=b"\0" * end + extra)
    assert fragment in refusal(lambda: inspect_checkpoint(tmp_path / "s"), "sae_weights.safetensors", field)


# ---------------------------------------------------------------- class 10: non-float weights
@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool"])
def test_integer_weights_are_refused_by_the_header_check(tmp_path, dtype):
    import torch

    hc.write_saelens_integer_weights(tmp_path / "s", getattr(torch, dtype))
    first = refusal(lambda: inspect_checkpoint(tmp_path / "s"), "sae_weights.safetensors", "W_enc")
    assert f"dtype {dtype} is not a float type" in first
    assert refusal(lambda: load_sae(tmp_path / "s"), "sae_weights.safetensors", "W_enc") == first


def test_validate_check_files_refuses_integer_weights(tmp_path):
    from benchmark.submission.validate import validate_paths

    hc.write_saelens_integer_weights(tmp_path / "s")
    (tmp_path / "m.toml").write_text(manifest_text(local="s"))
    problems, _ = validate_paths([tmp_path / "m.toml"], check_files=True)
    assert len(problems) == 1 and "W_enc" in str(problems[0]) and "not a float type" in str(problems[0])
