"""Header-only reads of ``.npz`` archives (zip files of ``.npy`` arrays), and bounded loading.

The archive is opened with :class:`~benchmark.sae.checkpoints.archive.BoundedZip` (directory claims
checked, member count bounded). Only the members a format asks for are read: their npy header (magic,
version, dtype, shape) first, and then their data, which must be exactly the bytes the header
declares, so a member's size can neither hide extra data nor promise data it does not have. Object
arrays (which need pickle) are refused.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from benchmark.errors import CheckpointError

from .archive import BoundedZip, describe

MAX_NDIM = 8
MAX_DIM = 1 << 40
NUMERIC_KINDS = "biuf"  # bool, int, unsigned, float: what an npz of weights may hold


@dataclass(frozen=True)
class ArrayHeader:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    header_bytes: int = 0  # bytes before the data inside the member

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _open(path: Path) -> BoundedZip:
    return BoundedZip(path, field="archive")


def array_names(archive: BoundedZip) -> list[str]:
    """The array names in an npz (members ``<name>.npy``), without reading them."""
    return [n[: -len(".npy")] for n in archive.names() if n.endswith(".npy")]


def _read_header(archive: BoundedZip, name: str) -> ArrayHeader:
    member = archive.members[f"{name}.npy"]
    path = archive.path
    try:
        with archive.open(member.name) as stream:
            version = npy_format.read_magic(stream)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(stream)
            else:
                raise CheckpointError(f"unsupported npy version {version}", file=path, field=name)
            header_bytes = stream.tell()
    except CheckpointError:
        raise
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error, OSError, SyntaxError, TypeError) as exc:
        raise CheckpointError(f"unreadable npy header: {describe(exc)}", file=path, field=name) from None
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise CheckpointError("array holds Python objects (needs pickle to load); refused", file=path, field=name)
    if dtype.kind not in NUMERIC_KINDS or dtype.subdtype is not None or dtype.names is not None:
        raise CheckpointError(f"dtype {dtype.str} is not a plain numeric type", file=path, field=name)
    if len(shape) > MAX_NDIM or not all(isinstance(d, int) and 0 <= d <= MAX_DIM for d in shape):
        raise CheckpointError(f"shape {_clip(shape)} is not up to {MAX_NDIM} sizes of at most {MAX_DIM}", file=path,
                              field=name)
    header = ArrayHeader(name=name, dtype=dtype, shape=tuple(shape), fortran_order=bool(fortran),
                         header_bytes=header_bytes)
    stored = member.size - header_bytes
    if header.nbytes != stored:
        problem = ("truncated or enormous shape" if header.nbytes > stored
                   else "the member holds data the shape does not")
        raise CheckpointError(
            f"shape {header.shape} of {dtype} needs {header.nbytes} bytes but the member holds {stored} ({problem})",
            file=path, field=name)
    return header


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


def read_npz_headers(path: Path | str, names: list[str] | None = None) -> dict[str, ArrayHeader]:
    """Shapes and dtypes of the arrays ``names`` (default: every array) without reading their data.

    Names that are not in the archive are left out (the caller reports what is missing).
    """
    path = Path(path)
    with _open(path) as archive:
        wanted = array_names(archive) if names is None else [n for n in names if f"{n}.npy" in archive.members]
        return {name: _read_header(archive, name) for name in wanted}


def load_npz(path: Path | str, names: list[str]) -> tuple[dict[str, np.ndarray], dict[str, ArrayHeader]]:
    """Check the headers of the arrays ``names``, then read exactly those arrays (nothing else)."""
    path = Path(path)
    with _open(path) as archive:
        wanted = [n for n in names if f"{n}.npy" in archive.members]
        headers = {name: _read_header(archive, name) for name in wanted}
        arrays: dict[str, np.ndarray] = {}
        for name, header in headers.items():
            raw = archive.read(f"{name}.npy", field=name)
            data = np.frombuffer(raw, dtype=header.dtype, offset=header.header_bytes,
                                 count=math.prod(header.shape))
            data = data.reshape(header.shape, order="F" if header.fortran_order else "C")
            if not header.dtype.isnative:
                data = data.astype(header.dtype.newbyteorder("="))
            arrays[name] = data
    return arrays, headers
