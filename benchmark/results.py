"""The results store: one tidy table, written one unit at a time; summaries beside it.

A *unit* is one (submission, task, run spec, inputs) computation (see :mod:`benchmark.spec` and
:mod:`benchmark.submission.identity`); its key is ``<spec hash>-<inputs hash>``. Layout under the root::

    units/<org>/<name>/<task>/v<version>/<unit key>.parquet          rows of one finished unit (the commit marker)
    artifacts/<org>/<name>/<task>/v<version>/<unit key>/<run id>/<artifact>.parquet   its drill-down tables
    summaries/<task>/<summary>/v<version>.parquet                    cross-submission summaries (``summarize``)
    superseded/<run id>/...                                          replaced units and summaries (kept, never deleted)
    quarantine/<stamp>/...                                           unit files that failed validation on read

Submission names are ``org/name`` with both parts restricted to ``[a-z0-9._-]`` (first character
alphanumeric), so the folder ``<org>/<name>`` maps names to folders one-to-one.

A unit counts as finished only when its rows file exists *and validates* (schema version, columns,
types, finite values, and rows that say they belong at that path). Every file is written to a
temporary name in the same folder and then linked/renamed into place, so a crash or Ctrl-C never
leaves a torn file; two runs writing one store never interleave (an exclusive ``flock`` on
``<root>/.lock``) and the first finished copy of a unit wins unless ``overwrite`` is asked for.
With ``overwrite`` the old unit is *copied* to ``superseded/`` and then atomically replaced: there is
no moment at which the unit is missing. Artifacts live in a folder per run id, named by the rows,
so a rows file never points at another run's artifacts. A unit file that fails validation is moved
to ``quarantine/`` with a warning, the rest of the store keeps serving, and the next run recomputes it.
Temporary files carry their writer's process id; those of dead writers are removed by
:meth:`ResultStore.remove_stale_temp_files`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


try:
    import fcntl
except ImportError:  # pragma: no cover - not Linux/macOS: the link-based first-writer-wins rule still holds
    fcntl = None

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: run spec, inputs fingerprint and unit key on every row; setup time apart from runtime

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
    "unit_key": pa.string(),  # "<spec_hash>-<inputs_hash>": the unit's identity in the store
    "spec_hash": pa.string(),
    "spec": pa.string(),  # canonical JSON of the run spec (benchmark.spec.RunSpec)
    "task_seed": pa.int64(),  # the run spec's seed (the task's own randomness), for quick filtering
    "capped": pa.bool_(),  # a --limit preview: never shown as the leaderboard's score when a full unit exists
    "inputs_hash": pa.string(),
    "inputs": pa.string(),  # JSON of what the numbers were computed from (benchmark.submission.identity)
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
    "seeds": pa.string(),  # JSON list of the submission's SAE (training) seeds
    "checkpoints": pa.string(),  # JSON list of provenance records (repo, revisions, path, sizes, sha256)
    "data_hash": pa.string(),
    "device": pa.string(),
    "dtype": pa.string(),
    "runtime_s": pa.float64(),  # the task's computation only
    "setup_s": pa.float64(),  # preparing its inputs: loading or training SAEs, computing activations
    "extra": pa.string(),  # JSON object with metric-specific details
}
SCHEMA = pa.schema([pa.field(name, dtype) for name, dtype in COLUMNS.items()])
#: Columns that no valid row leaves empty.
REQUIRED = ("schema_version", "run_id", "timestamp", "submission", "task", "task_version", "unit_key", "spec_hash",
            "spec", "inputs_hash", "metric", "subset", "direction", "runtime_s")
NAME_PART = r"[a-z0-9][a-z0-9._-]{0,63}"
SUBMISSION_NAME = re.compile(rf"{NAME_PART}/{NAME_PART}")
UNIT_KEY = re.compile(r"[0-9a-f]{16}-[0-9a-f]{16}")
SLUG = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # task and summary names, versions


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
    spec: dict[str, Any] = field(default_factory=dict)  # RunSpec.canonical()
    spec_hash: str = "0" * 16
    inputs: dict[str, Any] = field(default_factory=dict)
    inputs_hash: str = "0" * 16
    model: str | None = None
    model_revision: str | None = None
    hook: str | None = None
    architecture: str | None = None
    width: int | None = None
    seeds: list[int] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    data_hash: str | None = None
    setup_s: float = 0.0
    # what the task reported about HOW it computed (e.g. the matching kernels chosen at run time):
    # no column of its own, stored in every row's ``extra`` under "provenance"
    computation: dict[str, Any] = field(default_factory=dict)

    @property
    def unit_key(self) -> str:
        return f"{self.spec_hash}-{self.inputs_hash}"


def make_rows(
    metrics: Iterable[MetricValue],
    provenance: UnitProvenance,
    directions: dict[str, str],
    *,
    timestamp: str,
    runtime_s: float,
) -> pd.DataFrame:
    """Tidy rows (one per metric value) with the unit's provenance on each."""
    spec = provenance.spec or {}
    shared = {
        "schema_version": SCHEMA_VERSION,
        "run_id": provenance.run_id,
        "timestamp": timestamp,
        "submission": provenance.submission,
        "submission_kind": provenance.submission_kind,
        "local": provenance.local,
        "task": provenance.task,
        "task_version": provenance.task_version,
        "unit_key": provenance.unit_key,
        "spec_hash": provenance.spec_hash,
        "spec": json.dumps(spec, sort_keys=True),
        "task_seed": spec.get("seed"),
        "capped": spec.get("limit") is not None,
        "inputs_hash": provenance.inputs_hash,
        "inputs": json.dumps(provenance.inputs, sort_keys=True, default=_json_default),
        "benchmark_version": provenance.benchmark_version,
        "git_sha": provenance.git_sha,
        "model": provenance.model,
        "model_revision": provenance.model_revision,
        "hook": provenance.hook,
        "architecture": provenance.architecture,
        "width": provenance.width,
        "seeds": json.dumps(sorted(provenance.seeds)),
        "checkpoints": json.dumps(provenance.checkpoints, sort_keys=True, default=_json_default),
        "data_hash": provenance.data_hash,
        "device": provenance.device,
        "dtype": provenance.dtype,
        "runtime_s": float(runtime_s),
        "setup_s": float(provenance.setup_s),
    }
    rows = []
    for m in metrics:
        extra = {**m.extra, "provenance": provenance.computation} if provenance.computation else m.extra
        rows.append({
            **shared,
            "metric": m.metric, "subset": m.subset, "value": m.value, "std": m.std, "ci_low": m.ci_low,
            "ci_high": m.ci_high, "n": m.n, "direction": directions.get(m.metric, "none"), "note": m.note,
            "extra": json.dumps(extra, sort_keys=True, default=_json_default),
        })
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


def empty_frame() -> pd.DataFrame:
    """A results table with no rows and every column."""
    return to_table_frame(pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS}))


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


def submission_folder(submission: str) -> Path:
    """``org/name`` → ``Path("org/name")``; refuses anything else (the mapping must be one-to-one
    and stay inside the store)."""
    if not isinstance(submission, str) or not SUBMISSION_NAME.fullmatch(submission):
        raise ValueError(f"not a submission name of the form org/name ([a-z0-9._-]): {submission!r}")
    return Path(submission)


def _checked(text: str, what: str) -> str:
    if not isinstance(text, str) or not SLUG.fullmatch(text):
        raise ValueError(f"not a valid {what}: {text!r}")
    return text


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


class BadUnit(Exception):
    """A unit file that must not be served (see :func:`validate_unit_table`)."""


def validate_unit_table(table: pa.Table, *, submission: str | None = None, task: str | None = None,
                        task_version: str | None = None, unit_key: str | None = None) -> pd.DataFrame:
    """The unit's rows in the results schema, or :class:`BadUnit` unless ``table`` is one whole unit
    in the current schema: every column present with its type, at least one row, required columns
    filled, one (submission, task, version, unit key) matching the place it is stored at, finite
    numbers (NaN and inf are errors, not "undefined"), and every missing value explained by a note."""
    import pyarrow.compute as pc

    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise BadUnit(f"missing column(s) {', '.join(missing[:5])}")
    try:
        table = table.select(list(COLUMNS)).cast(SCHEMA)
    except (pa.ArrowException, ValueError) as exc:
        raise BadUnit(f"columns of the wrong type ({' '.join(str(exc).split())[:120]})") from None
    if table.num_rows == 0:
        raise BadUnit("no rows")
    versions = set(table.column("schema_version").drop_null().to_pylist())
    if versions != {SCHEMA_VERSION}:
        raise BadUnit(f"schema version {sorted(versions) or 'missing'}, expected {SCHEMA_VERSION}")
    for column in REQUIRED:
        if table.column(column).null_count:
            raise BadUnit(f"empty {column}")
    for column in ("value", "std", "ci_low", "ci_high", "runtime_s", "setup_s"):
        values = table.column(column)
        if pc.any(pc.invert(pc.is_finite(values.drop_null()))).as_py():
            raise BadUnit(f"non-finite {column}")
    notes = pc.utf8_length(pc.fill_null(table.column("note"), ""))
    if pc.any(pc.and_(pc.is_null(table.column("value")), pc.equal(notes, 0))).as_py():
        raise BadUnit("a missing value without a note saying why")
    frame = table.to_pandas(types_mapper=_nullable_types)
    keys = frame[["submission", "task", "task_version", "unit_key"]].drop_duplicates()
    if len(keys) != 1:
        raise BadUnit("rows of more than one unit")
    expected = {"submission": submission, "task": task, "task_version": task_version, "unit_key": unit_key}
    for column, want in expected.items():
        if want is not None and str(keys.iloc[0][column]) != want:
            raise BadUnit(f"rows say {column}={keys.iloc[0][column]!r} but the file is stored as {want!r}")
    return frame


class ResultStore:
    """Append-only results under ``root`` (see the module docstring for the layout)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    # --- paths ---------------------------------------------------------------------------------
    def unit_dir(self, submission: str, task: str, task_version: str) -> Path:
        return self.root / "units" / submission_folder(submission) / _checked(task, "task name") / f"v{_checked(task_version, 'task version')}"

    def unit_path(self, submission: str, task: str, task_version: str, unit_key: str) -> Path:
        if not UNIT_KEY.fullmatch(unit_key or ""):
            raise ValueError(f"not a unit key: {unit_key!r}")
        return self.unit_dir(submission, task, task_version) / f"{unit_key}.parquet"

    def artifact_dir(self, submission: str, task: str, task_version: str, unit_key: str, run_id: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,80}", run_id or "") or run_id.startswith("."):
            raise ValueError(f"not a run id: {run_id!r}")
        return (self.root / "artifacts" / submission_folder(submission) / _checked(task, "task name")
                / f"v{_checked(task_version, 'task version')}" / unit_key / run_id)

    def summary_path(self, task: str, name: str, version: str) -> Path:
        return self.root / "summaries" / _checked(task, "task name") / _checked(name, "summary name") / f"v{_checked(version, 'summary version')}.parquet"

    # --- reading --------------------------------------------------------------------------------
    def read_unit(self, path: Path) -> pd.DataFrame | None:
        """The rows of one unit file, validated; a bad file is quarantined (None is returned)."""
        rel = path.relative_to(self.root / "units")
        parts = rel.parts
        expect = {}
        if len(parts) == 5:
            expect = {"submission": f"{parts[0]}/{parts[1]}", "task": parts[2], "task_version": parts[3][1:],
                      "unit_key": path.stem}
        try:
            if not path.is_file():
                raise BadUnit("not a regular file")
            if len(parts) != 5 or not parts[3].startswith("v"):
                raise BadUnit("not at a unit's place in the store")
            return validate_unit_table(pq.read_table(path), **expect)
        except (BadUnit, OSError, pa.ArrowException, ValueError, TypeError, KeyError) as exc:
            self.quarantine(path, f"{type(exc).__name__}: {exc}")
            return None

    def quarantine(self, path: Path, reason: str) -> Path | None:
        """Move a bad unit file (or folder) out of the way, with a warning naming it and why."""
        reason = " ".join(str(reason).split())[:200]
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        dest = self.root / "quarantine" / stamp / path.relative_to(self.root)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            (dest.parent / f"{dest.name}.reason.txt").write_text(reason + "\n", encoding="utf-8")
        except OSError as exc:  # read-only store: still never serve it
            log.warning("%s is not a valid unit (%s) and could not be moved aside (%s); it is ignored", path, reason, exc)
            return None
        log.warning("%s is not a valid unit (%s); moved to %s, and the next run recomputes it", path, reason, dest)
        return dest

    def unit_files(self) -> list[Path]:
        units = self.root / "units"
        if not units.exists():
            return []
        return sorted(p for p in units.rglob("*") if p.name.endswith(".parquet") and not p.name.startswith("."))

    def has_unit(self, submission: str, task: str, task_version: str, unit_key: str) -> bool:
        """True when the unit is stored and valid (an invalid file is quarantined: not cached)."""
        path = self.unit_path(submission, task, task_version, unit_key)
        if not path.exists() and not path.is_symlink():
            return False
        return self.read_unit(path) is not None

    def units_of(self, submission: str, task: str, task_version: str) -> dict[str, pd.DataFrame]:
        """unit key → rows, for every valid unit of one (submission, task, version)."""
        folder = self.unit_dir(submission, task, task_version)
        out = {}
        if folder.is_dir():
            for path in sorted(folder.glob("*.parquet")):
                frame = self.read_unit(path)
                if frame is not None:
                    out[path.stem] = frame
        return out

    def read(self) -> pd.DataFrame:
        """Every valid unit's rows as one table (empty, with the schema's columns, if none).
        Invalid unit files are quarantined with a warning and left out."""
        frames = [f for f in (self.read_unit(p) for p in self.unit_files()) if f is not None]
        if not frames:
            return empty_frame()
        frame = to_table_frame(pd.concat(frames, ignore_index=True))
        return frame.sort_values(["submission", "task", "metric", "subset"], kind="stable").reset_index(drop=True)

    def read_artifact(self, row: Any, name: str) -> pd.DataFrame | None:
        """The artifact ``name`` of the unit a stored row belongs to (None when absent)."""
        path = self.artifact_dir(row.submission, row.task, row.task_version, row.unit_key, row.run_id) / f"{name}.parquet"
        return pd.read_parquet(path) if path.is_file() else None

    def artifact_names(self, row: Any) -> list[str]:
        d = self.artifact_dir(row.submission, row.task, row.task_version, row.unit_key, row.run_id)
        return sorted(p.stem for p in d.glob("*.parquet")) if d.exists() else []

    # --- writing --------------------------------------------------------------------------------
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
        for folder in (self.root / "units", self.root / "artifacts", self.root / "summaries"):
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
        """Store one finished unit: artifacts first, the rows file last (the commit marker).

        Returns False when a valid copy of this unit is already stored and ``overwrite`` is off.
        With ``overwrite`` the old rows are copied to ``superseded/<run id>/`` *before* the new
        rows replace them atomically, and the old artifacts move there *after*: a failure at any
        point leaves either the old or the new unit readable, never neither."""
        keys = rows[["submission", "task", "task_version", "unit_key"]].drop_duplicates()
        if len(keys) != 1:
            raise ValueError("write_unit takes the rows of exactly one (submission, task, task_version, unit_key)")
        submission, task, version, unit_key = (str(v) for v in keys.iloc[0])
        target = self.unit_path(submission, task, version, unit_key)
        for name in artifacts or {}:
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,80}", name):
                raise ValueError(f"artifact name {name!r} must be a plain file stem")
        run_id = str(rows["run_id"].iloc[0])
        table = to_table_frame(rows)
        validate_unit_table(pa.Table.from_pandas(table, schema=SCHEMA, preserve_index=False),
                            submission=submission, task=task, task_version=version, unit_key=unit_key)
        with self._writer_lock():  # the check, the artifacts and the rows file as one step
            old = self.read_unit(target) if target.exists() or target.is_symlink() else None
            if old is not None and not overwrite:
                return False
            art_dir = self.artifact_dir(submission, task, version, unit_key, run_id)
            for name, frame in (artifacts or {}).items():
                atomic_write_parquet(frame.reset_index(drop=True), art_dir / f"{name}.parquet")
            if old is not None:
                self._copy_superseded(target, run_id)
            written = atomic_write_parquet(table, target, replace=old is not None, schema=SCHEMA)
            if written and old is not None:
                for old_run in sorted(set(old["run_id"].astype(str)) - {run_id}):
                    self._move_superseded(self.artifact_dir(submission, task, version, unit_key, old_run), run_id)
            return written

    def supersede_units(self, submission: str, task: str, task_version: str, keep: str, *, spec_hash: str,
                        run_id: str) -> list[str]:
        """Move the units of the same spec but other inputs (stale after a checkpoint changed) to
        ``superseded/<run id>/``; the unit ``keep`` stays. Returns the moved unit keys."""
        moved = []
        with self._writer_lock():
            folder = self.unit_dir(submission, task, task_version)
            for path in sorted(folder.glob(f"{spec_hash}-*.parquet")) if folder.is_dir() else []:
                if path.stem == keep:
                    continue
                frame = self.read_unit(path)
                self._move_superseded(path, run_id)
                if frame is not None:
                    for old_run in set(frame["run_id"].astype(str)):
                        self._move_superseded(self.artifact_dir(submission, task, task_version, path.stem, old_run), run_id)
                moved.append(path.stem)
        return moved

    def _copy_superseded(self, path: Path, run_id: str) -> None:
        dest = self.root / "superseded" / run_id / path.relative_to(self.root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
        with open(dest, "rb") as fh:
            os.fsync(fh.fileno())

    def _move_superseded(self, path: Path, run_id: str) -> None:
        if not path.exists():
            return
        dest = self.root / "superseded" / run_id / path.relative_to(self.root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            return  # already kept there (copied before the replacement)
        os.replace(path, dest)

    # --- summaries -------------------------------------------------------------------------------
    def write_summary(self, task: str, name: str, version: str, frame: pd.DataFrame, *, run_id: str) -> Path:
        """Store a cross-submission summary table (replacing the previous one of this version,
        which is kept under ``superseded/<run id>/``)."""
        path = self.summary_path(task, name, version)
        with self._writer_lock():
            if path.exists():
                self._copy_superseded(path, run_id)
            atomic_write_parquet(frame.reset_index(drop=True), path)
        return path

    def read_summary(self, task: str, name: str, version: str) -> pd.DataFrame | None:
        path = self.summary_path(task, name, version)
        if not path.is_file():
            return None
        try:
            return pd.read_parquet(path)
        except (OSError, pa.ArrowException, ValueError) as exc:
            log.warning("summary %s is unreadable (%s); run `canonbench summarize` to recompute it", path, exc)
            return None


def choose_shown_units(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows the leaderboard shows: for each (submission, task, task version) one unit, chosen by
    a fixed rule: full runs before capped (``--limit``) previews, then the default task seed, then the
    newest. The other units stay in the store and the downloads."""
    from benchmark.spec import DEFAULT_SEED

    if len(frame) == 0:
        return frame
    units = frame.drop_duplicates("unit_key")[["submission", "task", "task_version", "unit_key", "capped", "task_seed", "timestamp"]].copy()
    units["_capped"] = units["capped"].fillna(False).astype(bool)
    units["_not_default_seed"] = units["task_seed"] != DEFAULT_SEED
    units = units.sort_values(["_capped", "_not_default_seed", "timestamp"], ascending=[True, True, False], kind="stable")
    chosen = units.drop_duplicates(["submission", "task", "task_version"])["unit_key"]
    return frame[frame["unit_key"].isin(set(chosen))].reset_index(drop=True)


def spec_without_seed(spec_text: Any) -> str:
    """The canonical JSON of a stored run spec with its task seed removed (what task-seed reruns share)."""
    try:
        spec = json.loads(spec_text)
    except (TypeError, ValueError):
        return str(spec_text)
    if isinstance(spec, dict):
        spec.pop("seed", None)
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def task_seed_family(frame: pd.DataFrame, shown: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rows of every stored unit that differs from a shown unit only in its task seed: same
    submission, task, task version and inputs hash, and a run spec equal apart from ``seed``
    (the reruns of a task's own randomness on the same SAEs). The shown units are included.
    ``shown`` defaults to :func:`choose_shown_units` of ``frame``."""
    if len(frame) == 0:
        return frame
    shown = choose_shown_units(frame) if shown is None else shown
    key_columns = ["submission", "task", "task_version", "inputs_hash"]
    units = frame.drop_duplicates("unit_key")[key_columns + ["unit_key", "spec"]].copy()
    units["_family"] = units["spec"].map(spec_without_seed)
    wanted = units[units["unit_key"].isin(set(shown["unit_key"]))][key_columns + ["_family"]].drop_duplicates()
    members = units.merge(wanted, on=key_columns + ["_family"], how="inner")["unit_key"]
    return frame[frame["unit_key"].isin(set(members))].reset_index(drop=True)
