"""Header-only reads of ``.npz`` archives (zip files of ``.npy`` arrays), and guarded loading.

Each member's npy header (magic, version, dtype, shape) is read from the zip stream without
reading the array data. Object arrays (which need pickle) are refused.
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

# A deflated float array shrinks by a few percent; a member claiming to inflate far beyond that is a
# zip bomb or a corrupt directory, and is refused before anything is inflated.
MAX_INFLATION = 50
SLACK_BYTES = 1 << 20


@dataclass(frozen=True)
class ArrayHeader:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise CheckpointError(f"not a readable .npz (zip) archive, truncated or corrupt: {exc}", file=path,
                              field="archive") from exc


def read_npz_headers(path: Path | str) -> dict[str, ArrayHeader]:
    """Shapes and dtypes of every array in an ``.npz`` without loading the arrays."""
    path = Path(path)
    headers: dict[str, ArrayHeader] = {}
    with _open_zip(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[: -len(".npy")]
            inflation_limit = MAX_INFLATION * info.compress_size + SLACK_BYTES
            if info.compress_type != zipfile.ZIP_STORED and info.file_size > inflation_limit:
                raise CheckpointError(
                    f"member claims to inflate {info.compress_size} bytes to {info.file_size}; refusing",
                    file=path, field=name)
            try:
                with archive.open(info) as member:
                    version = npy_format.read_magic(member)
                    if version == (1, 0):
                        shape, fortran, dtype = npy_format.read_array_header_1_0(member)
                    elif version == (2, 0):
                        shape, fortran, dtype = npy_format.read_array_header_2_0(member)
                    else:
                        raise CheckpointError(f"unsupported npy version {version}", file=path, field=name)
            except CheckpointError:
                raise
            except (ValueError, EOFError, zipfile.BadZipFile, zlib.error, OSError) as exc:
                raise CheckpointError(f"unreadable npy header: {exc}", file=path, field=name) from exc
            header = ArrayHeader(name=name, dtype=np.dtype(dtype), shape=tuple(int(d) for d in shape),
                                 fortran_order=bool(fortran))
            if header.dtype.hasobject:
                raise CheckpointError("array holds Python objects (needs pickle to load); refused", file=path,
                                      field=name)
            if header.nbytes > info.file_size:
                raise CheckpointError(
                    f"shape {header.shape} of {header.dtype} needs {header.nbytes} bytes but the member holds "
                    f"{info.file_size} (truncated or enormous shape)", file=path, field=name)
            headers[name] = header
    return headers


def load_npz(path: Path | str) -> tuple[dict[str, np.ndarray], dict[str, ArrayHeader]]:
    """Validate every member header, then load the arrays (``allow_pickle=False``)."""
    path = Path(path)
    headers = read_npz_headers(path)
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for name in headers:
                arrays[name] = np.asarray(data[name])
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error, OSError) as exc:
        raise CheckpointError(f"cannot read arrays (truncated or corrupt?): {exc}", file=path, field="data") from exc
    return arrays, headers
