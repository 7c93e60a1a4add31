"""The runner-owned cache a task may use for expensive intermediates (never for results).

Tasks do not write files. When one has an intermediate worth keeping between runs (the absorption
task's letter probe, the explanation task's per-latent explanations), it asks the
:class:`TaskCache` the runner hands it. Two kinds of entries, both keyed by a name the task derives
from everything that determines the content:

* tensors (:meth:`TaskCache.load_tensors` / :meth:`TaskCache.save_tensors`): one safetensors file
  per key, written to a temporary name and renamed, so a reader never sees a torn file and nothing
  is ever unpickled;
* journals (:meth:`TaskCache.journal`): append-only JSON lines, one record per finished item, so an
  interrupted run keeps everything it finished; a torn last line is ignored on reading.

``TaskCache(None)`` keeps nothing (every load misses), for callers without a cache folder.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,120}")


def _checked(text: str, what: str) -> str:
    if not _NAME.fullmatch(text or ""):
        raise ValueError(f"cache {what} must be a plain name ([A-Za-z0-9._-]), got {text!r}")
    return text


class Journal:
    """Append-only JSON lines under one key; :meth:`records` reads them back (torn lines skipped)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()

    def records(self) -> list[dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return []
        out = []
        with open(self.path, "r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the torn last line of an interrupted write
                if isinstance(record, dict):
                    out.append(record)
        return out

    def append(self, record: dict[str, Any]) -> None:
        """Add one record and flush it to disk before returning."""
        if self.path is None:
            return
        line = json.dumps(record, sort_keys=True, ensure_ascii=False)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
                handle.flush()
                os.fsync(handle.fileno())


class TaskCache:
    """Tensors and journals under ``<root>/<task>/<namespace>/`` (see the module docstring)."""

    def __init__(self, root: Path | str | None, task: str = "task"):
        self.root = None if root is None else Path(root) / _checked(task, "task")

    def _path(self, namespace: str, key: str, suffix: str) -> Path | None:
        if self.root is None:
            return None
        return self.root / _checked(namespace, "namespace") / f"{_checked(key, 'key')}{suffix}"

    def load_tensors(self, namespace: str, key: str) -> dict[str, torch.Tensor] | None:
        """The tensors saved under ``key``, or None when there are none (or they are unreadable)."""
        path = self._path(namespace, key, ".safetensors")
        if path is None or not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception:  # a damaged cache entry only costs recomputing it
            return None

    def save_tensors(self, namespace: str, key: str, tensors: dict[str, torch.Tensor],
                     metadata: dict[str, str] | None = None) -> None:
        """Save ``tensors`` under ``key`` atomically (the first complete writer's file stays)."""
        path = self._path(namespace, key, ".safetensors")
        if path is None:
            return
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def journal(self, namespace: str, key: str) -> Journal:
        return Journal(self._path(namespace, key, ".jsonl"))


__all__ = ["Journal", "TaskCache"]
