"""Content hashes of model files and folders (what activation caches and conversions are keyed by).

Kept apart from :mod:`benchmark.data.models` so that the modules that produce model folders
(:mod:`benchmark.data.gguf_models`) and the ones that locate them share one definition without
importing each other.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

_fingerprints: dict[tuple, str] = {}
_lock = threading.Lock()


def folder_fingerprint(folder: Path) -> str:
    """sha256 over (relative name, content sha256) of every model file in ``folder`` (recursive).

    Memoised per process on (path, size, mtime) so repeated providers cost nothing."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    stat_key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    with _lock:
        if stat_key in _fingerprints:
            return _fingerprints[stat_key]
    digest = hashlib.sha256()
    for p in files:
        digest.update(str(p.relative_to(folder).as_posix()).encode() + b"\0")
        digest.update(file_sha256(p).encode() + b"\n")
    value = digest.hexdigest()
    with _lock:
        _fingerprints[stat_key] = value
    return value


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 (hex) of a file's content, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["file_sha256", "folder_fingerprint"]
