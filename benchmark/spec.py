"""The run spec: everything that changes a stored number, frozen, canonical and hashed.

A result is citable only if a stored number always means one computation. A :class:`RunSpec` holds
every setting that can change a task's numbers: the task and its version, the task's typed config
(defaults declared once, in the task's config dataclass), the task seed, the sample cap (``limit``),
the model dtype, the device class, the batch size and the benchmark version. Its canonical JSON and
hash go into every stored row; the hash, together with the hash of the submission's inputs (see
:mod:`benchmark.submission.identity`), names the unit in the results store. Two runs that differ in
any of these are two units, so a capped (``--limit``) run never satisfies a full one and two task
seeds never overwrite each other.

What is *not* in the spec: where files live (cache and results folders), verbosity, secrets such as
API keys, and the device index (``cuda:0`` and ``cuda:1`` compute the same numbers; ``cpu`` and
``cuda`` may not, so the device *class* is kept).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from benchmark.errors import CanonBenchError
from benchmark.version import BENCHMARK_VERSION

#: Bumped when the canonical form of a spec changes (it is part of the hash).
SPEC_VERSION = 1
DTYPES = ("float32", "bfloat16", "float16")
#: The task seed of a default run; the leaderboard prefers units with this seed.
DEFAULT_SEED = 0


def canonical_json(value: Any) -> str:
    """Sorted-key, compact JSON: the one text form every hash in the benchmark is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def short_hash(value: Any, length: int = 16) -> str:
    """Hex sha256 of :func:`canonical_json` of ``value``, cut to ``length`` characters."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


def device_class(device: str) -> str:
    """``cpu`` / ``cuda`` / ``mps`` ...: the part of a device name that can change numbers."""
    return str(device).split(":", 1)[0].strip().lower() or "cpu"


@dataclass(frozen=True)
class RunSpec:
    """Everything that changes a task's numbers (see the module docstring).

    ``config`` is the task config as a plain mapping (every field, defaults included), so that a
    default spelled out and a default left implicit hash the same.
    """

    task: str
    task_version: str
    config: Mapping[str, Any] = field(default_factory=dict)
    seed: int = DEFAULT_SEED
    limit: int | None = None
    dtype: str = "float32"
    device_class: str = "cpu"
    batch_size: int | None = None
    benchmark_version: str = BENCHMARK_VERSION

    @property
    def capped(self) -> bool:
        """True for a ``--limit`` run: its numbers are previews, never the leaderboard's score."""
        return self.limit is not None

    def canonical(self) -> dict[str, Any]:
        """The spec as a JSON-ready dict (what is stored and what is hashed)."""
        return {
            "spec_version": SPEC_VERSION,
            "task": self.task,
            "task_version": self.task_version,
            "config": _plain(dict(self.config)),
            "seed": self.seed,
            "limit": self.limit,
            "dtype": self.dtype,
            "device_class": self.device_class,
            "batch_size": self.batch_size,
            "benchmark_version": self.benchmark_version,
        }

    def to_json(self) -> str:
        return canonical_json(self.canonical())

    @property
    def hash(self) -> str:
        """16 hex characters of sha256 over :meth:`to_json`."""
        return short_hash(self.canonical())

    def describe(self) -> str:
        """A short human-readable form for logs and pages: only what differs from a default run."""
        parts = [f"{self.task} v{self.task_version}", f"seed {self.seed}"]
        if self.capped:
            parts.append(f"limit {self.limit}")
        if self.dtype != "float32":
            parts.append(self.dtype)
        if self.batch_size:
            parts.append(f"batch {self.batch_size}")
        return ", ".join(parts)


def _plain(value: Any) -> Any:
    """Config values as JSON-stable plain data (tuples → lists, finite floats only)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"a run spec cannot hold {value}")
    return value


def config_fields(config_class: type) -> dict[str, dataclasses.Field]:
    """The fields of a task's config dataclass by name."""
    return {f.name: f for f in dataclasses.fields(config_class)}


def parse_task_options(pairs: list[str] | None) -> dict[str, dict[str, str]]:
    """``["absorption.words_per_letter=50", ...]`` → ``{"absorption": {"words_per_letter": "50"}}``.

    Raises a one-line error for a pair that is not ``task.field=value``."""
    out: dict[str, dict[str, str]] = {}
    for pair in pairs or []:
        head, sep, value = pair.partition("=")
        task, dot, name = head.partition(".")
        if not sep or not dot or not task.strip() or not name.strip():
            raise CanonBenchError(f"expected TASK.FIELD=VALUE, got {pair!r}", field="--task-option")
        out.setdefault(task.strip(), {})[name.strip()] = value
    return out


def build_config(config_class: type, overrides: Mapping[str, Any] | None = None, *, task: str = "") -> Any:
    """An instance of ``config_class`` with ``overrides`` applied; strings are converted to the
    field's declared type (int, float, bool, str, optional of those). Unknown names are refused."""
    fields = config_fields(config_class)
    values: dict[str, Any] = {}
    for name, raw in (overrides or {}).items():
        if name not in fields:
            known = ", ".join(sorted(fields)) or "(none)"
            raise CanonBenchError(f"task {task!r} has no option {name!r}; known: {known}", field="--task-option")
        values[name] = _convert(raw, fields[name], task=task)
    try:
        return config_class(**values)
    except (TypeError, ValueError) as exc:
        raise CanonBenchError(f"task {task!r}: {exc}", field="--task-option") from None


def _convert(raw: Any, fld: dataclasses.Field, *, task: str) -> Any:
    if not isinstance(raw, str):
        return raw
    declared = str(fld.type).replace(" ", "")
    text = raw.strip()
    if "None" in declared and text.lower() in ("none", "null", ""):
        return None
    try:
        if declared.startswith("bool"):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"not a boolean: {text!r}")
            return text.lower() in ("true", "1", "yes")
        if declared.startswith("int"):
            return int(text)
        if declared.startswith("float"):
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(f"not a finite number: {text!r}")
            return value
    except ValueError as exc:
        raise CanonBenchError(f"task {task!r} option {fld.name}: {exc}", field="--task-option") from None
    return raw


def make_spec(task_cls: type, *, seed: int = DEFAULT_SEED, limit: int | None = None, dtype: str = "float32",
              device: str = "cpu", batch_size: int | None = None, overrides: Mapping[str, Any] | None = None) -> RunSpec:
    """The :class:`RunSpec` of one task for these run settings. ``task_cls`` carries ``metadata``
    and ``config_class`` (see :class:`tasks.base.Task`)."""
    meta = task_cls.metadata
    if dtype not in DTYPES:
        raise CanonBenchError(f"unknown dtype {dtype!r}; one of {', '.join(DTYPES)}", field="--dtype")
    if limit is not None and limit <= 0:
        raise CanonBenchError(f"must be a positive number, got {limit}", field="--limit")
    if batch_size is not None and batch_size <= 0:
        raise CanonBenchError(f"must be a positive number, got {batch_size}", field="--batch-size")
    config = build_config(task_cls.config_class, overrides, task=meta.name)
    return RunSpec(
        task=meta.name, task_version=meta.version, config=_plain(config), seed=int(seed), limit=limit,
        dtype=dtype, device_class=device_class(device), batch_size=batch_size,
    )


__all__ = ["DEFAULT_SEED", "DTYPES", "RunSpec", "build_config", "canonical_json", "device_class", "make_spec",
           "parse_task_options", "short_hash"]
