"""Build and cache small C++ helpers at run time (the fused training kernel, the matcher's searches and
block scans).

A helper is one C++ source file with a C interface, compiled for this machine (``-march=native``) into a
shared library and loaded with :mod:`ctypes`: no Python or torch headers, so a build takes a second or
two. Builds are cached on disk under :func:`kernel_cache_dir`, keyed by a hash of the source, the flags,
the compiler's version and this CPU's feature flags, so a cache shared between different machines never
hands one a binary built for another. Every failure (no compiler, a failed build) returns ``None`` with
one log line: callers keep their pure-Python path.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

#: IEEE float semantics are kept (no -ffast-math): only errno and trap side effects are dropped.
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math")


def kernel_cache_dir() -> Path:
    """Where compiled helpers are kept: ``$CANONBENCH_KERNEL_CACHE``, else ``$XDG_CACHE_HOME`` (or
    ``~/.cache``) ``/canonbench/kernels``."""
    explicit = os.environ.get("CANONBENCH_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "canonbench" / "kernels"


def compiler() -> str | None:
    """The C++ compiler to build with (``$CXX``, else c++ / g++ / clang++ on PATH)."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@functools.lru_cache(maxsize=None)
def _compiler_version(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0] if out.stdout else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def build_library(source: Path, stem: str, defines: Sequence[str] = (), *, what: str, fallback: str) -> Path | None:
    """The shared library built from ``source`` with ``defines`` (e.g. ``-DWIDTH=32``), from the cache
    when an identical build exists: ``<cache>/<stem>_<hash>.so``. None when no compiler is found or the
    build fails; ``what`` (e.g. "fused kernel") and ``fallback`` (what the caller does instead) make the
    one log line."""
    cxx = compiler()
    if cxx is None:
        log.info("%s: no C++ compiler on PATH; %s", what, fallback)
        return None
    from benchmark.training.cpu_features import cpu_flags  # not at import: benchmark.training builds with this module

    code = Path(source).read_bytes()
    key = hashlib.sha256(b"\0".join([code, " ".join(FLAGS + tuple(defines)).encode(), _compiler_version(cxx).encode(),
                                     " ".join(sorted(cpu_flags())).encode()])).hexdigest()[:24]
    folder = kernel_cache_dir()
    target = folder / f"{stem}_{key}.so"
    if target.exists():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            out = Path(tmp) / target.name
            proc = subprocess.run([cxx, *FLAGS, *defines, str(source), "-o", str(out)],
                                  capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                log.warning("%s build failed (%s); %s: %s", what, cxx, fallback,
                            (proc.stderr.strip().splitlines() or ["?"])[-1])
                return None
            os.replace(out, target)  # atomic: a concurrent builder's identical file may win
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("%s build failed: %s; %s", what, exc, fallback)
        return None
    return target


def load_library(source: Path, stem: str, signatures: dict[str, list], defines: Sequence[str] = (), *, what: str,
                 fallback: str):
    """The :class:`ctypes.CDLL` built from ``source`` (see :func:`build_library`) with each function in
    ``signatures`` (name → argtypes; every one returns a C int) declared, or None when it cannot be built
    or loaded (one log line naming ``what`` and the ``fallback``)."""
    import ctypes

    target = build_library(source, stem, defines, what=what, fallback=fallback)
    if target is None:
        return None
    try:
        lib = ctypes.CDLL(str(target))
        for name, argtypes in signatures.items():
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = argtypes
    except (OSError, AttributeError) as exc:
        log.warning("%s %s cannot be loaded: %s; %s", what, target, exc, fallback)
        return None
    return lib


class LazyLibrary:
    """A helper library built and loaded on first use (once per process, thread-safe), for modules that
    keep a pure-Python path: :meth:`function` is None when this machine cannot build it. The arguments
    are those of :func:`load_library`."""

    def __init__(self, source: Path, stem: str, signatures: dict[str, list], defines: Sequence[str] = (), *,
                 what: str, fallback: str):
        self._args = (source, stem, signatures, tuple(defines))
        self._names = {"what": what, "fallback": fallback}
        self._lock = threading.Lock()
        self._tried = False
        self._lib = None

    def function(self, name: str):
        """The C function ``name`` of the loaded library, or None where it cannot be built or loaded."""
        with self._lock:
            if not self._tried:
                self._tried = True
                self._lib = load_library(*self._args, **self._names)
        return None if self._lib is None else getattr(self._lib, name)
