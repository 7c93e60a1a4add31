"""Benchmark version and the git commit of the code that produced a result."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

BENCHMARK_VERSION = "0.1.0"


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The commit of this checkout (with ``-dirty`` when it has uncommitted changes), or None."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
