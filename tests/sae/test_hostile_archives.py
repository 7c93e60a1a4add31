"""Issue #14, classes 2 and 10 (npz): archive members nobody asked for, and directories that lie.

An npz with thousands of small extra members passed the per-member inflation check and the loader read
every member (3.3 GB for a 3.5 MB file). Archives are now opened with their directory's claims checked
(member count, directory size, local headers, tiling) and only the members a format needs are read.
A directory that lies about a member's sizes is refused by the header check ``validate --check-files``
and ``run`` share, with the reason.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import checkpoint_fixtures as fx
import hostile_checkpoints as hc
from manifest_texts import manifest_text
from refusals import checkpoint_refusal as refusal
from benchmark.sae.checkpoints import inspect_checkpoint, load_sae


def traced_peak_mb(action) -> float:
    """Peak memory ``action`` allocates through Python and numpy (both report to tracemalloc)."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


# ----------------------------------------------------------------------------- class 2: members
def test_extra_members_are_never_read(tmp_path):
    """1000 extra members of 60 KB each (inside every per-member and count bound; 60 MB if read, from
    a file of under 1 MB): loading reads only the five arrays the format needs."""
    folder = hc.write_npz_with_extra_members(tmp_path / "hub", members=1000, member_bytes=60_000)
    assert (folder / "params.npz").stat().st_size < 1 << 20
    peak = traced_peak_mb(lambda: load_sae(folder))
    assert peak < 16, f"loading allocated {peak:.0f} MB"
    assert traced_peak_mb(lambda: inspect_checkpoint(folder)) < 4


def test_member_count_is_bounded(tmp_path):
    folder = hc.write_npz_with_extra_members(tmp_path / "hub", members=1100, member_bytes=64)
    for action in (lambda: inspect_checkpoint(folder), lambda: load_sae(folder)):
        assert "limit 1024" in refusal(action, "params.npz", "archive")


@pytest.mark.parametrize("entries,cd_size,fragment", [(60000, None, "claims 60000 members"),
                                                      (5, 50 << 20, "limit 1048576"),
                                                      (5, 1 << 19, "ends at")])
def test_central_directory_claims_are_checked_before_it_is_read(tmp_path, entries, cd_size, fragment):
    folder, _ = fx.write_gemmascope_npz(tmp_path / "hub", d_in=8)
    hc.set_central_directory_entries(folder / "params.npz", entries, cd_size)
    assert fragment in refusal(lambda: inspect_checkpoint(folder), "params.npz", "archive")


def test_unlisted_bytes_between_members_are_refused(tmp_path):
    """Data hidden between members (where no directory entry points) breaks the tiling."""
    folder, _ = fx.write_gemmascope_npz(tmp_path / "hub", d_in=8)
    npz = folder / "params.npz"
    raw = npz.read_bytes()
    second = raw.index(b"PK\x03\x04", 4)
    npz.write_bytes(raw[:second] + b"\0" * 4096 + raw[second:])  # offsets in the directory now miss
    refusal(lambda: inspect_checkpoint(folder), "params.npz", ("archive", "W_dec.npy", "W_enc.npy", "b_enc.npy",
                                                             "b_dec.npy", "threshold.npy"))


# ------------------------------------------------------------------ class 10: lying directories
@pytest.mark.parametrize("lie,by", [("compress_size", -64), ("compress_size", 64), ("file_size", 4096),
                                    ("file_size", -4)])
def test_directory_lying_about_sizes_is_refused_by_the_shared_header_check(tmp_path, lie, by):
    folder = hc.write_npz_lying_directory(tmp_path / "hub", lie=lie, by=by)
    first = refusal(lambda: inspect_checkpoint(folder), "params.npz", ("W_enc.npy", "W_enc", "archive"))
    second = refusal(lambda: load_sae(folder), "params.npz", ("W_enc.npy", "W_enc", "archive"))
    assert first == second  # validate (inspect) and run (load) refuse for the same reason
    assert first.rsplit(": ", 1)[-1].strip(), "the reason is empty"


def test_validate_check_files_refuses_a_lying_npz(tmp_path):
    from benchmark.submission.validate import validate_paths

    folder = hc.write_npz_lying_directory(tmp_path / "hub")
    manifest = folder / "m.toml"
    manifest.write_text(manifest_text(local=".", architecture="jumprelu", width=4096))
    problems, _ = validate_paths([manifest], check_files=True)
    assert len(problems) == 1 and "W_enc.npy" in str(problems[0]) and "stored size" in str(problems[0])


def test_npy_header_must_account_for_every_byte_of_its_member(tmp_path):
    """A member holding more data than its npy header's shape says is refused (it used to be read)."""
    folder, _ = fx.write_gemmascope_npz(tmp_path / "hub", d_in=8)
    with np.load(folder / "params.npz") as data:
        arrays = {name: data[name] for name in data.files}
    import io
    import zipfile

    with zipfile.ZipFile(folder / "params.npz", "w") as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(f"{name}.npy", buffer.getvalue() + (b"\0" * 1000 if name == "b_dec" else b""))
    message = refusal(lambda: inspect_checkpoint(folder), "params.npz", "b_dec")
    assert "the shape does not" in message


def test_only_plain_numeric_arrays_are_read(tmp_path):
    folder, _ = fx.write_gemmascope_npz(tmp_path / "hub", d_in=8)
    with np.load(folder / "params.npz") as data:
        arrays = {name: data[name] for name in data.files}
    np.savez(folder / "params.npz", **dict(arrays, W_enc=arrays["W_enc"].astype("<U3")))
    refusal(lambda: inspect_checkpoint(folder), "params.npz", "W_enc")
    np.savez(folder / "params.npz", **dict(arrays, W_enc=arrays["W_enc"].astype(np.int32)))
    assert "not a float type" in refusal(lambda: inspect_checkpoint(folder), "params.npz", "W_enc")
    np.savez(folder / "params.npz", **dict(arrays, W_enc=arrays["W_enc"].astype(">f4")))  # big-endian: read
    np.testing.assert_allclose(load_sae(folder).W_enc.numpy(), arrays["W_enc"], rtol=1e-6)
