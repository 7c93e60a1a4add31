"""The results store: one tidy table, written one (submission, task) unit at a time.

Layout under the results root::

    units/<submission>/<task>/v<version>.parquet        rows of one finished unit (the commit marker)
    artifacts/<submission>/<task>/v<version>/<name>.parquet   drill-down tables of that unit
    superseded/<run_id>/...                             units replaced by ``--overwrite`` (kept, never deleted)

A unit counts as finished only when its rows file exists. Every file is written to a temporary name
in the same folder and then linked/renamed into place, so a crash or Ctrl-C never leaves a torn file
and two runs writing to one store never interleave: the first finished copy of a unit wins unless
``overwrite`` is asked for. Writers also hold an exclusive lock on ``<root>/.lock`` while they store a
unit, so a losing writer never replaces the winner's artifacts. Temporary files carry their writer's
process id; those of dead writers (a killed run) are removed by :meth:`ResultStore.remove_stale_temp_files`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from benchmark.errors import CanonBenchError

try:
    import fcntl
except ImportError:  # pragma: no cover - not Linux/macOS: the link-based first-writer-wins rule still holds
    fcntl = None

SCHEMA_VERSION = 1

#: Column name → pyarrow type. The order here is the column order of every results table.
COLUMNS: dict[str, pa.DataType] = {
    "schema_version": pa.int32(),
    "run_id": pa.string(),
    "timestamp": pa.string(),  # ISO 8601, UTC
    "submission": pa.string(),
    "submission_kind": pa.string(),
    "local": pa.bool_(),  # checkpoints from local folders / trained here, not pinned Hub commits
    "task": pa.string(),
    "task_version": pa.string(),
    "metric": pa.string(),
    "subset": pa.string(),  # "all", or a slice such as "letter=a", "preset=zipf-hierarchy", "pair=0-1"
    "value": pa.float64(),  # null only when the metric is undefined; `note` then says why
    "std": pa.float64(),
    "ci_low": pa.float64(),
    "ci_high": pa.float64(),
    "n": pa.int64(),
    "direction": pa.string(),  # higher | lower | none
    "note": pa.string(),
    "benchmark_version": pa.string(),
    "git_sha": pa.string(),
    "model": pa.string(),
    "model_revision": pa.string(),
    "hook": pa.string(),
    "architecture": pa.string(),
    "width": pa.int64(),
    "seeds": pa.string(),  # JSON list
    "checkpoints": pa.string(),  # JSON list of provenance records (repo, revisions, path, sizes, sha256)
    "data_hash": pa.string(),
    "device": pa.string(),
    "dtype": pa.string(),
    "runtime_s": pa.float64(),
    "extra": pa.string(),  # JSON object with metric-specific details
}
SCHEMA = pa.schema([pa.field(name, dtype) for name, dtype in COLUMNS.items()])


@dataclass
class MetricValue:
    """One metric a task computed. ``value`` is None only when undefined, with ``note`` saying why."""

    metric: str
    value: float | None
    std: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    subset: str = "all"
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("value", "std", "ci_low", "ci_high"):
            v = getattr(self, name)
            if v is None:
                continue
            v = float(v)
            if not math.isfinite(v):
                raise ValueError(f"metric {self.metric!r} {name} is {v}: NaN/inf never stand for missing, use None")
            setattr(self, name, v)
        if self.value is None and not self.note:
            raise ValueError(f"metric {self.metric!r} has no value and no note saying why")
        if self.n is not None:
            self.n = int(self.n)


@dataclass
class UnitProvenance:
    """Everything a result row must carry to be traced back to its inputs."""

    run_id: str
    submission: str
    submission_kind: str
    local: bool
    task: str
    task_version: str
    benchmark_version: str
    git_sha: str | None
    device: str
    dtype: str
    model: str | None = None
    model_revision: str | None = None
    hook: str | None = None
    architecture: str | None = None
    width: int | None = None
    seeds: list[int] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    data_hash: str | None = None


def make_rows(
    metrics: Iterable[MetricValue],
    provenance: UnitProvenance,
    directions: dict[str, str],
    *,
    timestamp: str,
    runtime_s: float,
) -> pd.DataFrame:
    """Tidy rows (one per metric value) with the unit's provenance on each."""
    rows = []
    for m in metrics:
        rows.append(
            {
                "schema_version": SCHEMA_VERSION,
                "run_id": provenance.run_id,
                "timestamp": timestamp,
                "submission": provenance.submission,
                "submission_kind": provenance.submission_kind,
                "local": provenance.local,
                "task": provenance.task,
                "task_version": provenance.task_version,
                "metric": m.metric,
                "subset": m.subset,
                "value": m.value,
                "std": m.std,
                "ci_low": m.ci_low,
                "ci_high": m.ci_high,
                "n": m.n,
                "direction": directions.get(m.metric, "none"),
                "note": m.note,
                "benchmark_version": provenance.benchmark_version,
                "git_sha": provenance.git_sha,
                "model": provenance.model,
                "model_revision": provenance.model_revision,
                "hook": provenance.hook,
                "architecture": provenance.architecture,
                "width": provenance.width,
                "seeds": json.dumps(sorted(provenance.seeds)),
                "checkpoints": json.dumps(provenance.checkpoints, sort_keys=True),
                "data_hash": provenance.data_hash,
                "device": provenance.device,
                "dtype": provenance.dtype,
                "runtime_s": float(runtime_s),
                "extra": json.dumps(m.extra, sort_keys=True, default=_json_default),
            }
        )
    return to_table_frame(pd.DataFrame(rows, columns=list(COLUMNS)))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_table_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Coerce a frame to the results schema (column order, nullable dtypes)."""
    table = pa.Table.from_pandas(frame[list(COLUMNS)], schema=SCHEMA, preserve_index=False)
    return table.to_pandas(types_mapper=_nullable_types)


def _nullable_types(dtype: pa.DataType):
    if pa.types.is_integer(dtype):
        return pd.Int64Dtype()
    if pa.types.is_floating(dtype):
        return pd.Float64Dtype()
    if pa.types.is_boolean(dtype):
        return pd.BooleanDtype()
    if pa.types.is_string(dtype):
        return pd.StringDtype()
    return None


def _safe_name(text: str) -> str:
    """A path component for a submission or task name (``org/name`` → ``org__name``)."""
    return text.replace("/", "__")


def atomic_write_parquet(frame: pd.DataFrame, path: Path, *, replace: bool = True, schema: pa.Schema | None = None) -> bool:
    """Write ``frame`` to ``path`` atomically. With ``replace=False`` an existing file wins and
    False is returned; otherwise True. The temporary file lives beside the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid in the name lets a later run tell a dead writer's leftovers from a live one's
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
            _fsync_dir(path.parent)
            return True
        try:
            os.link(tmp, path)  # atomic and never clobbers: the first finished writer wins
        except FileExistsError:
            return False
        _fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Persist a rename/link in ``folder`` (so a power cut cannot undo a finished unit)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def _writer_pid(temp_name: str) -> int | None:
    """The process id in a temporary file name ``.<target>.<pid>.<random>.tmp``, if any."""
    parts = temp_name.split(".")
    return int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultStore:
    """Append-only results under ``root`` (see the module docstring for the layout)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def unit_path(self, submission: str, task: str, task_version: str) -> Path:
        return self.root / "units" / _safe_name(submission) / task / f"v{task_version}.parquet"

    def artifact_dir(self, submission: str, task: str, task_version: str) -> Path:
        return self.root / "artifacts" / _safe_name(submission) / task / f"v{task_version}"

    def has_unit(self, submission: str, task: str, task_version: str) -> bool:
        return self.unit_path(submission, task, task_version).exists()

    @contextmanager
    def _writer_lock(self):
        """Exclusive across processes (``flock`` on ``<root>/.lock``) while one unit is stored; readers
        need none because every file appears atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as handle:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def remove_stale_temp_files(self) -> int:
        """Delete temporary files whose writer process is gone (left by a killed run); returns how many.
        Files of live writers, and of writers this host cannot see, are left alone."""
        removed = 0
        for folder in (self.root / "units", self.root / "artifacts"):
            if not folder.exists():
                continue
            for temp in folder.rglob(".*.tmp"):
                pid = _writer_pid(temp.name)
                if pid is not None and not _pid_alive(pid):
                    temp.unlink(missing_ok=True)
                    removed += 1
        return removed

    def write_unit(
        self,
        rows: pd.DataFrame,
        artifacts: dict[str, pd.DataFrame] | None = None,
        *,
        overwrite: bool = False,
    ) -> bool:
        """Store one finished unit. Artifacts go first and the rows file last, so the unit only
        counts as finished once everything is on disk. Returns False when another writer already
        stored this unit (and ``overwrite`` is off)."""
        keys = rows[["submission", "task", "task_version"]].drop_duplicates()
        if len(keys) != 1:
            raise ValueError("write_unit takes the rows of exactly one (submission, task, task_version)")
        submission, task, version = (str(v) for v in keys.iloc[0])
        target = self.unit_path(submission, task, version)
        if target.exists() and not overwrite:
            return False
        for name in artifacts or {}:
            if "/" in name or name.startswith("."):
                raise ValueError(f"artifact name {name!r} must be a plain file stem")
        run_id = str(rows["run_id"].iloc[0])
        art_dir = self.artifact_dir(submission, task, version)
        table = to_table_frame(rows)
        with self._writer_lock():  # the check, the artifacts and the rows file as one step
            if target.exists() and not overwrite:
                return False
            if overwrite and target.exists():
                self._supersede(target, art_dir, run_id)
            for name, frame in (artifacts or {}).items():
                atomic_write_parquet(frame.reset_index(drop=True), art_dir / f"{name}.parquet")
            return atomic_write_parquet(table, target, replace=overwrite, schema=SCHEMA)

    def _supersede(self, unit: Path, art_dir: Path, run_id: str) -> None:
        dest = self.root / "superseded" / run_id / unit.relative_to(self.root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(unit, dest)
        if art_dir.exists():
            art_dest = self.root / "superseded" / run_id / art_dir.relative_to(self.root)
            art_dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(art_dir, art_dest)

    def unit_files(self) -> list[Path]:
        return sorted((self.root / "units").rglob("v*.parquet")) if (self.root / "units").exists() else []

    def read(self) -> pd.DataFrame:
        """Every finished unit's rows as one table (empty, with the schema's columns, if none)."""
        files = self.unit_files()
        if not files:
            return to_table_frame(pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS}))
        tables = []
        for path in files:
            try:
                tables.append(pq.read_table(path, schema=SCHEMA))
            except (OSError, pa.ArrowException) as exc:  # disk fault or a file not written by this store
                reason = " ".join(str(exc).split())[:200]
                raise CanonBenchError(
                    f"unreadable results file ({type(exc).__name__}: {reason}); move it aside and rerun to recompute its unit",
                    file=path,
                ) from None
        frame = pa.concat_tables(tables).to_pandas(types_mapper=_nullable_types)
        return frame.sort_values(["submission", "task", "metric", "subset"], kind="stable").reset_index(drop=True)

    def read_artifact(self, submission: str, task: str, task_version: str, name: str) -> pd.DataFrame | None:
        path = self.artifact_dir(submission, task, task_version) / f"{name}.parquet"
        return pd.read_parquet(path) if path.exists() else None

    def artifact_names(self, submission: str, task: str, task_version: str) -> list[str]:
        d = self.artifact_dir(submission, task, task_version)
        return sorted(p.stem for p in d.glob("*.parquet")) if d.exists() else []
