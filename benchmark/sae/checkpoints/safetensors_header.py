"""Header-only reads of ``.safetensors`` files, validated before any tensor memory is allocated.

Layout: 8-byte little-endian header length ``N``, ``N`` bytes of JSON
(``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}``), then the data
buffer. Offsets are relative to the start of the data buffer.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.errors import CheckpointError

from .common import open_regular_file, parse_json_bytes

# A real SAE header is a few hundred bytes (a handful of tensors); the safetensors library itself
# allows 100 MB, which lets a header hold numbers that are slow to parse and multiply.
MAX_HEADER_BYTES = 1 << 20
MAX_TENSORS = 1024
MAX_NDIM = 8
MAX_HEADER_DEPTH = 3  # {name: {"shape": [...]}}
MAX_INT = 1 << 62  # sizes and offsets: fit an i64 (the header parser also refuses > 30-digit numbers)

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

    Raises CheckpointError (naming the file and the offending tensor or field) for header lengths over
    ``MAX_HEADER_BYTES``, malformed JSON (and long integers, NaN, duplicate keys, deep nesting: see
    :func:`~benchmark.sae.checkpoints.common.parse_json_bytes`), more than ``MAX_TENSORS`` entries,
    unknown dtypes, shapes of more than ``MAX_NDIM`` sizes, shapes whose byte size does not match
    their offsets, and offsets that do not tile the data buffer exactly (gaps, overlaps, data past the
    end or after the last tensor). Every number is bounded before any arithmetic on it.
    """
    path = Path(path)
    with open_regular_file(path, field="header") as handle:
        try:
            file_bytes = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"file is {file_bytes} bytes, too short for a safetensors header (truncated?)",
                                      file=path, field="header")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"declares a {header_len}-byte header (limit {MAX_HEADER_BYTES}); not an SAE checkpoint",
                    file=path, field="header")
            if header_len > file_bytes - 8:
                raise CheckpointError(
                    f"declares a {header_len}-byte header but the file has only {file_bytes - 8} bytes "
                    "after the length prefix (truncated?)", file=path, field="header")
            raw = handle.read(header_len)
        except OSError as exc:
            raise CheckpointError(f"cannot read: {exc.strerror or exc}", file=path, field="header") from None
    header = parse_json_bytes(raw, path, field="header", max_depth=MAX_HEADER_DEPTH)
    if not isinstance(header, dict):
        raise CheckpointError("header is not a JSON object", file=path, field="header")

    data_bytes = file_bytes - 8 - header_len
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError("__metadata__ is not an object of strings", file=path, field="__metadata__")
    if len(header) > MAX_TENSORS:
        raise CheckpointError(f"declares {len(header)} tensors (limit {MAX_TENSORS})", file=path, field="header")
    tensors: dict[str, TensorHeader] = {}
    for name, entry in header.items():
        tensors[name] = _validate_entry(path, name, entry, data_bytes)
    _check_tiling(path, tensors, data_bytes)
    return SafetensorsHeader(path=path, tensors=tensors, metadata=dict(metadata),
                             header_bytes=header_len, data_bytes=data_bytes)


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT


def _validate_entry(path: Path, name: str, entry: object, data_bytes: int) -> TensorHeader:
    if not isinstance(entry, dict):
        raise CheckpointError("header entry is not an object", file=path, field=name)
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise CheckpointError(f"unknown dtype {_clip(dtype)}", file=path, field=name)
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_is_size(d) for d in shape):
        raise CheckpointError(f"shape {_clip(shape)} is not a list of at most {MAX_NDIM} non-negative integers",
                              file=path, field=name)
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_size(o) for o in offsets):
        raise CheckpointError(f"data_offsets {_clip(offsets)} is not a pair of non-negative integers", file=path,
                              field=name)
    begin, end = offsets
    # at most MAX_NDIM factors below 2**62: a product of a few hundred bits, computed in microseconds
    declared = math.prod(shape) * DTYPE_BYTES[dtype]
    if end < begin:
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


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


def _check_tiling(path: Path, tensors: dict[str, TensorHeader], data_bytes: int) -> None:
    """The tensors' byte ranges cover the data buffer exactly: no gap, no overlap, nothing after."""
    cursor, previous = 0, None
    for begin, end, name in sorted((t.begin, t.end, t.name) for t in tensors.values()):
        if begin < cursor:
            raise CheckpointError(f"data overlaps tensor {previous!r}", file=path, field=name)
        if begin > cursor:
            raise CheckpointError(f"{begin - cursor} bytes before this tensor's data belong to no tensor", file=path,
                                  field=name)
        cursor, previous = end, name
    if cursor != data_bytes:
        raise CheckpointError(f"{data_bytes - cursor} bytes after the last tensor belong to no tensor", file=path,
                              field="data")


def load_safetensors(path: Path | str,
                     names: list[str] | None = None) -> tuple[dict[str, torch.Tensor], SafetensorsHeader]:
    """Validate the header, then load tensors (all, or only ``names``: what a format needs) on the CPU
    in their stored dtype."""
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
