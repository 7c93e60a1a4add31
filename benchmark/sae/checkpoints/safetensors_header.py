"""Header-only reads of ``.safetensors`` files, validated before any tensor memory is allocated.

Layout: 8-byte little-endian header length ``N``, ``N`` bytes of JSON
(``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}``), then the data
buffer. Offsets are relative to the start of the data buffer.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.errors import CheckpointError

# The safetensors library itself refuses headers over 100 MB; a real SAE header is a few hundred bytes.
MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class TensorHeader:
    """One tensor's entry in a safetensors header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: tensors by name, the free-form ``__metadata__`` block, sizes in bytes."""

    path: Path
    tensors: dict[str, TensorHeader]
    metadata: dict[str, str]
    header_bytes: int
    data_bytes: int

    def shape(self, name: str) -> tuple[int, ...] | None:
        entry = self.tensors.get(name)
        return entry.shape if entry is not None else None


def read_safetensors_header(path: Path | str) -> SafetensorsHeader:
    """Parse and validate the header of ``path`` without reading tensor data.

    Raises CheckpointError (naming the file and the offending tensor or field) for absurd header
    lengths, malformed JSON, unknown dtypes, shapes whose byte size does not match their offsets
    (e.g. enormous declared shapes), overlapping offsets, and truncated files.
    """
    path = Path(path)
    try:
        file_bytes = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"file is {file_bytes} bytes, too short for a safetensors header (truncated?)",
                                      file=path, field="header")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"declares a {header_len}-byte header (limit {MAX_HEADER_BYTES}); not a valid file",
                    file=path, field="header")
            if header_len > file_bytes - 8:
                raise CheckpointError(
                    f"declares a {header_len}-byte header but the file has only {file_bytes - 8} bytes "
                    "after the length prefix (truncated?)", file=path, field="header")
            raw = handle.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"cannot read: {exc.strerror or exc}", file=path, field="header") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"header is not valid JSON ({exc})", file=path, field="header") from exc
    if not isinstance(header, dict):
        raise CheckpointError("header is not a JSON object", file=path, field="header")

    data_bytes = file_bytes - 8 - header_len
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError("__metadata__ is not an object", file=path, field="__metadata__")
    tensors: dict[str, TensorHeader] = {}
    for name, entry in header.items():
        tensors[name] = _validate_entry(path, name, entry, data_bytes)
    _check_no_overlap(path, tensors)
    return SafetensorsHeader(path=path, tensors=tensors, metadata={str(k): str(v) for k, v in metadata.items()},
                             header_bytes=header_len, data_bytes=data_bytes)


def _validate_entry(path: Path, name: str, entry: object, data_bytes: int) -> TensorHeader:
    if not isinstance(entry, dict):
        raise CheckpointError("header entry is not an object", file=path, field=name)
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise CheckpointError(f"unknown dtype {dtype!r}", file=path, field=name)
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise CheckpointError(f"shape {shape!r} is not a list of non-negative integers", file=path, field=name)
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise CheckpointError(f"data_offsets {offsets!r} is not a pair of integers", file=path, field=name)
    begin, end = offsets
    # Python ints do not overflow, so an enormous declared shape shows up here as a byte count that
    # cannot match the offsets, long before anything is allocated.
    declared = math.prod(shape) * DTYPE_BYTES[dtype]
    if begin < 0 or end < begin:
        raise CheckpointError(f"data_offsets {offsets} are not increasing", file=path, field=name)
    if declared != end - begin:
        raise CheckpointError(
            f"shape {tuple(shape)} of {dtype} needs {declared} bytes but data_offsets span {end - begin}",
            file=path, field=name)
    if end > data_bytes:
        raise CheckpointError(
            f"data ends at byte {end} of the data buffer but the file holds only {data_bytes} (truncated?)",
            file=path, field=name)
    return TensorHeader(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _check_no_overlap(path: Path, tensors: dict[str, TensorHeader]) -> None:
    spans = sorted((t.begin, t.end, t.name) for t in tensors.values() if t.end > t.begin)
    for (_, prev_end, prev_name), (begin, _, name) in zip(spans, spans[1:]):
        if begin < prev_end:
            raise CheckpointError(f"data overlaps tensor {prev_name!r}", file=path, field=name)


def load_safetensors(path: Path | str,
                     names: list[str] | None = None) -> tuple[dict[str, torch.Tensor], SafetensorsHeader]:
    """Validate the header, then load tensors (all, or ``names``) on the CPU in their stored dtype."""
    from safetensors import SafetensorError, safe_open

    header = read_safetensors_header(path)
    wanted = list(header.tensors) if names is None else [n for n in names if n in header.tensors]
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in wanted:
                out[name] = handle.get_tensor(name)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"cannot read tensors: {exc}", file=path, field="data") from exc
    return out, header
