"""Render the static leaderboard: a pure function of the results store, the manifests and the tasks'
metadata.

The site is plain HTML (jinja2, autoescaped), one CSS file, one small script for sorting and
filtering, and inline SVG plots, so it works offline and from ``file://``. Nothing here computes a
metric: cells show stored rows (value, std or CI, n, note) and plots draw stored values and
artifacts. Statistics across submissions come from the task module (``proxy_validity``).

The output is deterministic: the same inputs give byte-identical files except the build date, which
appears once per page inside ``<span class="build-date">`` and can be fixed with ``build_date=`` or
``SOURCE_DATE_EPOCH``.

Layout of the built site::

    index.html                       overview: one row per submission, one column per task
    tasks/<task>.html                one page per registered task
    submissions/<org>__<name>.html   one page per submission
    downloads/results.{csv,parquet}  the whole results table, as stored
    downloads/<page>/<table>.{csv,parquet}   the data behind every table and plot
    static/style.css, static/table.js
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

import jinja2
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from markupsafe import Markup

from benchmark.errors import CanonBenchError
from benchmark.submission.manifest import COMMIT_SHA, HUB_REPO, LoadedManifest, load_manifests
from benchmark.results import SCHEMA, ResultStore
from benchmark.version import BENCHMARK_VERSION, git_sha
from leaderboard import plots
from leaderboard.plots import format_number

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"
#: A file in every built site; a non-empty ``out_dir`` without it is never replaced.
SITE_MARKER = ".canonbench-site"
ARTIFACT_ROWS_SHOWN = 200
NOT_RUN = "not run"

BENCHMARK_BIBTEX = f"""@misc{{canonbench,
  title  = {{{{CanonBench}}: a benchmark for the feature consistency of sparse autoencoders}},
  author = {{{{CanonBench contributors}}}},
  year   = {{2026}},
  note   = {{Version {BENCHMARK_VERSION}}}
}}"""

AGGREGATION_RULE = (
    "There is no overall score: CanonBench never averages across tasks. Each task column shows that "
    "task's main metric for the subset \u201call\u201d, exactly as stored by the task at its current "
    "version; \u00b1 is the stored standard deviation (across seeds or seed pairs, as the task defines), "
    "or [low, high] the stored confidence interval when no std is stored. A cell reads \u201cnot run\u201d "
    "when no result is stored, \u201cn/a\u201d when the task cannot evaluate that kind of submission, and "
    "\u201cundefined\u201d when the task stored no value (hover for the reason). When a task stores only "
    "per-slice values (e.g. per preset), the cell lists them instead of averaging them. Rows are sorted "
    "by submission name; click a column header to rank by it."
)


# ---------------------------------------------------------------------------------------------
# Page model
# ---------------------------------------------------------------------------------------------


@dataclass
class Cell:
    text: str = ""
    sort: str = ""  # data-sort key: a float's repr for numbers; "" sorts last either way
    href: str | None = None  # relative to the site root
    external: bool = False  # href is an absolute URL
    title: str | None = None
    spread: str = ""  # "± 0.010" or "[0.80, 0.83]", shown beside the value
    sub: str = ""  # a muted second line
    badges: tuple[str, ...] = ()
    cls: str = ""
    code: bool = False


@dataclass
class Column:
    label: str
    numeric: bool = False
    title: str = ""
    sub: str = ""
    href: str | None = None


@dataclass
class Table:
    id: str
    caption: str
    columns: list[Column]
    rows: list[list[Cell]]
    frame: pd.DataFrame  # the raw data offered as CSV/parquet beside the table
    stem: str  # download path without suffix, relative to the site root
    note: str = ""
    schema: pa.Schema | None = None


@dataclass
class SubmissionInfo:
    name: str
    slug: str
    manifest: LoadedManifest | None
    title: str
    kind: str
    local: bool
    model: str
    hook: str
    architecture: str
    width: int | None
    seeds: list[int]


@dataclass
class TaskInfo:
    name: str
    slug: str
    cls: type
    meta: Any  # TaskMetadata
    rows: pd.DataFrame  # current-version rows
    all_rows: pd.DataFrame  # every version


@dataclass
class Site:
    results: pd.DataFrame
    tasks: dict[str, TaskInfo]
    submissions: dict[str, SubmissionInfo]
    l0: dict[str, tuple[float, float | None, str]]
    unregistered_tasks: list[str]
    store: ResultStore
    #: (submission, task) → stored rows as plain tuples, so cell look-ups need no frame filtering
    index: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    applicable: dict[tuple[str, str], str | None] = field(default_factory=dict)
    pages: dict[str, str] = field(default_factory=dict)  # relative path → HTML
    downloads: list[Table] = field(default_factory=list)
    figure_data: list[tuple[str, pd.DataFrame]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def build_site(
    *,
    results_dir: Path | str,
    submissions_dir: Path | str | None,
    out_dir: Path | str,
    build_date: dt.datetime | str | None = None,
    tasks: Mapping[str, type] | None = None,
) -> Path:
    """Build the static site into ``out_dir`` and return the path of its ``index.html``.

    ``results_dir``: a results store (:class:`benchmark.results.ResultStore`). ``submissions_dir``:
    folder of manifests (missing or None: submissions are described from their result rows only).
    ``build_date``: shown on every page (default: ``SOURCE_DATE_EPOCH`` if set, else now, UTC).
    ``tasks``: name → Task class (default: :func:`tasks.all_tasks`; tests pass fixture tasks).
    ``out_dir`` is replaced as a whole, but only if it is empty, absent, or a site built before.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    if tasks is None:
        from tasks import all_tasks

        tasks = all_tasks()
    store = ResultStore(results_dir)
    results = store.read()
    manifests = _load_manifests(submissions_dir)
    site = _collect(store, results, manifests, tasks)
    date_text = _build_date_text(build_date)

    env = _environment()
    common = {
        "benchmark_version": BENCHMARK_VERSION,
        "git_sha": git_sha() or "unknown (not a git checkout)",
        "build_date": date_text,
        "nav_tasks": [{"label": t.meta.title or t.name, "href": f"tasks/{t.slug}.html"} for t in site.tasks.values()],
    }
    site.pages["index.html"] = _render_overview(env, site, common)
    for task in site.tasks.values():
        site.pages[f"tasks/{task.slug}.html"] = _render_task(env, site, task, common)
    for info in site.submissions.values():
        site.pages[f"submissions/{info.slug}.html"] = _render_submission(env, site, info, common)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        _write_site(site, staging)
        _swap_in(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir / "index.html"


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise CanonBenchError("exists and is not a folder", file=out_dir, field="--out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / SITE_MARKER).exists():
        raise CanonBenchError(
            "is not empty and holds no CanonBench site; refusing to replace it (choose an empty or new folder)",
            file=out_dir, field="--out",
        )


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by the finished ``staging`` folder, keeping the old site until then."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old)


def _build_date_text(build_date: dt.datetime | str | None) -> str:
    if isinstance(build_date, str):
        return build_date
    if build_date is None:
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        if epoch and epoch.strip().isdigit():
            build_date = dt.datetime.fromtimestamp(int(epoch), tz=dt.timezone.utc)
        else:
            build_date = dt.datetime.now(dt.timezone.utc)
    if build_date.tzinfo is not None:
        build_date = build_date.astimezone(dt.timezone.utc)
    return build_date.strftime("%Y-%m-%d %H:%M UTC")


def _load_manifests(submissions_dir: Path | str | None) -> dict[str, LoadedManifest]:
    if submissions_dir is None:
        return {}
    folder = Path(submissions_dir)
    if not folder.exists():
        log.warning("submissions folder %s not found: submissions are described from their result rows only", folder)
        return {}
    return {m.name: m for m in load_manifests([folder])}


# ---------------------------------------------------------------------------------------------
# Collecting what the pages show (no metric is computed here)
# ---------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    """A file-name-safe form of a submission or task name; ``org/name`` → ``org__name``."""
    base = text.replace("/", "__")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip(".") or "_"
    if safe != base:  # keep distinct names distinct after replacement
        safe += "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return safe


def _collect(store: ResultStore, results: pd.DataFrame, manifests: dict[str, LoadedManifest], registry: Mapping[str, type]) -> Site:
    task_infos: dict[str, TaskInfo] = {}
    for name, cls in registry.items():
        meta = cls.metadata
        all_rows = results[results["task"] == name].reset_index(drop=True)
        rows = all_rows[all_rows["task_version"] == meta.version].reset_index(drop=True)
        task_infos[name] = TaskInfo(name, _slug(name), cls, meta, rows, all_rows)
    unregistered = sorted(set(results["task"].dropna()) - set(task_infos))
    names = sorted(set(manifests) | set(results["submission"].dropna()))
    submissions = {n: _submission_info(n, manifests.get(n), results[results["submission"] == n]) for n in names}
    site = Site(results, task_infos, submissions, _l0_by_submission(task_infos, results, unregistered), unregistered, store)
    for row in results.itertuples(index=False):
        site.index.setdefault((row.submission, row.task), []).append(row)
    return site


def _submission_info(name: str, manifest: LoadedManifest | None, rows: pd.DataFrame) -> SubmissionInfo:
    if manifest is not None:
        sub = manifest.submission
        model = getattr(sub, "model", None)
        if sub.kind == "checkpoints":
            arch, width = sub.sae.architecture, sub.sae.width
        else:
            arch, width = sub.recipe.architecture, sub.recipe.width
        return SubmissionInfo(
            name=name, slug=_slug(name), manifest=manifest, title=sub.title, kind=sub.kind, local=bool(sub.is_local),
            model=model.name if model else "synthetic data", hook=model.hook if model else "",
            architecture=arch, width=width, seeds=sorted(sub.seeds),
        )
    first = rows.iloc[0] if len(rows) else None

    def get(column: str, default: Any = "") -> Any:
        if first is None or pd.isna(first[column]):
            return default
        return first[column]

    try:
        seeds = sorted(int(s) for s in json.loads(get("seeds", "[]")))
    except (TypeError, ValueError):
        seeds = []
    return SubmissionInfo(
        name=name, slug=_slug(name), manifest=None, title="", kind=str(get("submission_kind")), local=bool(get("local", False)),
        model=str(get("model")), hook=str(get("hook")), architecture=str(get("architecture")),
        width=int(get("width")) if get("width", None) is not None else None, seeds=seeds,
    )


def _l0_by_submission(tasks: dict[str, TaskInfo], results: pd.DataFrame, unregistered: list[str]) -> dict[str, tuple[float, float | None, str]]:
    """submission → (L0, std, task): the stored metric ``l0`` (subset "all") from the first task in
    registry order (then unregistered tasks by name) that reports it."""
    sources = [(t.name, t.rows) for t in tasks.values()]
    sources += [(name, results[results["task"] == name]) for name in unregistered]
    found: dict[str, tuple[float, float | None, str]] = {}
    for task_name, rows in sources:
        picked = rows[(rows["metric"] == plots.L0_METRIC) & (rows["subset"] == "all")]
        for row in picked.itertuples(index=False):
            if row.submission in found or pd.isna(row.value):
                continue
            found[row.submission] = (float(row.value), None if pd.isna(row.std) else float(row.std), task_name)
    return found


def _num_or_none(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _spread_text(row: Any) -> str:
    std, lo, hi = _num_or_none(row.std), _num_or_none(row.ci_low), _num_or_none(row.ci_high)
    if std is not None:
        return f"\u00b1 {format_number(std)}"
    if lo is not None and hi is not None:
        return f"[{format_number(lo)}, {format_number(hi)}]"
    return ""


def _row_details(row: Any) -> str:
    parts = []
    if not pd.isna(row.n):
        parts.append(f"n = {int(row.n)}")
    lo, hi = _num_or_none(row.ci_low), _num_or_none(row.ci_high)
    if lo is not None and hi is not None:
        parts.append(f"CI [{format_number(lo)}, {format_number(hi)}]")
    if isinstance(row.note, str) and row.note:
        parts.append(row.note)
    parts.append(f"{row.task} v{row.task_version}, run {row.run_id}")
    return "; ".join(parts)


def _metric_cell(row: Any) -> Cell:
    """A stored row as a table cell: the value with its spread, details on hover."""
    if pd.isna(row.value):
        return Cell("undefined", "", title=_row_details(row), cls="undefined")
    value = float(row.value)
    return Cell(format_number(value), repr(value), title=_row_details(row), spread=_spread_text(row))


def _subset_cell(rows: list[Any]) -> Cell:
    """Per-slice values listed (never averaged) when a task stores no "all" row."""
    lines = []
    for row in sorted(rows, key=lambda r: r.subset):
        value = "undefined" if pd.isna(row.value) else format_number(float(row.value))
        spread = _spread_text(row)
        lines.append(f"{row.subset}: {value}{' ' + spread if spread else ''}")
    return Cell(lines[0] if len(lines) == 1 else f"{len(lines)} slices", "", sub="; ".join(lines),
                title="no overall ('all') value is stored; per-slice values are listed, not averaged", cls="slices")


def _not_applicable(site: Site, task: TaskInfo, info: SubmissionInfo) -> str | None:
    if info.manifest is None:
        return None
    key = (info.name, task.name)
    if key not in site.applicable:
        try:
            site.applicable[key] = task.cls().not_applicable(info.manifest)
        except Exception as exc:  # a task that cannot say is treated as "not run", never hidden
            log.warning("task %s could not tell whether it applies to %s: %s", task.name, info.name, exc)
            site.applicable[key] = None
    return site.applicable[key]


def _task_status(site: Site, task: TaskInfo, info: SubmissionInfo, metric: str) -> tuple[str, Cell, Any]:
    """(status, cell, stored row or None) of ``metric`` of ``task`` for one submission."""
    stored = site.index.get((info.name, task.name), [])
    rows = [r for r in stored if r.task_version == task.meta.version and r.metric == metric]
    overall = [r for r in rows if r.subset == "all"]
    if overall:
        row = overall[0]
        return ("ok" if not pd.isna(row.value) else "undefined"), _metric_cell(row), row
    if rows:
        return "slices only", _subset_cell(rows), None
    older = [r for r in stored if r.task_version != task.meta.version]
    if older:
        versions = ", ".join(f"v{v}" for v in sorted({r.task_version for r in older}))
        return NOT_RUN, Cell(NOT_RUN, "", title=f"not run at v{task.meta.version}; stored results are for {versions}", cls="missing"), None
    reason = _not_applicable(site, task, info)
    if reason:
        return "not applicable", Cell("n/a", "", title=reason, cls="missing"), None
    return NOT_RUN, Cell(NOT_RUN, "", title="no result stored for this submission and task", cls="missing"), None


def _seeds_text(seeds: list[int]) -> str:
    if not seeds:
        return ""
    shown = ", ".join(str(s) for s in seeds[:5]) + (", …" if len(seeds) > 5 else "")
    return f"{len(seeds)} ({shown})"


def _submission_cells(info: SubmissionInfo, l0: tuple[float, float | None, str] | None, *, root_link: bool = True) -> list[Cell]:
    badges = ("local",) if info.local else ()
    name_cell = Cell(info.name, info.name, href=f"submissions/{info.slug}.html", sub=info.title, badges=badges,
                     title="checkpoints from local folders or trained here, not pinned Hub commits" if info.local else None)
    if l0 is None:
        l0_cell = Cell("", "", title="no 'l0' metric stored")
    else:
        l0_cell = Cell(format_number(l0[0]), repr(l0[0]), spread=f"\u00b1 {format_number(l0[1])}" if l0[1] is not None else "",
                       title=f"metric '{plots.L0_METRIC}' (subset all) from task {l0[2]}")
    return [
        name_cell,
        Cell(info.model, info.model, sub=info.hook, cls="nowrap-sub"),
        Cell(info.architecture, info.architecture),
        Cell(str(info.width) if info.width is not None else "", repr(float(info.width)) if info.width is not None else ""),
        l0_cell,
        Cell(_seeds_text(info.seeds), repr(float(len(info.seeds))) if info.seeds else "", title=", ".join(map(str, info.seeds)) or None),
    ]


SUBMISSION_COLUMNS = [
    Column("Submission"), Column("Model", sub="hook"), Column("Architecture"),
    Column("Width", numeric=True, title="number of latents (d_sae)"),
    Column("L0", numeric=True, title=f"stored metric '{plots.L0_METRIC}' (subset all): mean active latents per token"),
    Column("Seeds", numeric=True, title="number of seeds (sorted by count)"),
]


def _submission_record(info: SubmissionInfo, l0: tuple[float, float | None, str] | None) -> dict[str, Any]:
    return {
        "submission": info.name, "title": info.title, "kind": info.kind, "local": info.local, "model": info.model,
        "hook": info.hook, "architecture": info.architecture, "width": info.width,
        "l0": l0[0] if l0 else None, "l0_std": l0[1] if l0 else None, "l0_task": l0[2] if l0 else None,
        "seeds": json.dumps(info.seeds),
    }


def _direction_arrow(direction: str) -> str:
    return {"higher": "\u2191 higher is better", "lower": "\u2193 lower is better"}.get(direction, "no direction")


def _range_text(metric_range: tuple[float | None, float | None]) -> str:
    lo, hi = metric_range
    return f"[{'−∞' if lo is None else f'{lo:g}'}, {'∞' if hi is None else f'{hi:g}'}]"


def _typed_frame(records: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """A download frame with stable dtypes (nullable numbers, strings), whatever the rows hold."""
    frame = pd.DataFrame(records, columns=columns)
    for column in frame.columns:
        values = [v for v in frame[column] if v is not None and not (isinstance(v, float) and pd.isna(v))]
        if values and all(isinstance(v, bool) for v in values):
            frame[column] = frame[column].astype("boolean")
        elif values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            frame[column] = frame[column].astype("Int64")
        elif values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            frame[column] = frame[column].astype("Float64")
        else:
            frame[column] = frame[column].astype("string")
    return frame


# ---------------------------------------------------------------------------------------------
# Tables built from frames
# ---------------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays, lists and dicts held in a cell are values
        return False


def frame_table(frame: pd.DataFrame, *, table_id: str, caption: str, stem: str, max_rows: int | None = None, note: str = "") -> Table:
    """Show any stored frame (an artifact, a task's statistic) as a table; the download holds all rows."""
    columns = [Column(str(c), numeric=pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])) for c in frame.columns]
    shown = frame if max_rows is None else frame.head(max_rows)
    rows = []
    for record in shown.itertuples(index=False):
        cells = []
        for column, value in zip(columns, record):
            if _is_missing(value):
                cells.append(Cell("", ""))
            elif column.numeric:
                cells.append(Cell(str(int(value)) if float(value).is_integer() and abs(float(value)) < 1e15 else format_number(float(value)), repr(float(value))))
            else:
                cells.append(Cell(str(value), str(value)))
        rows.append(cells)
    if max_rows is not None and len(frame) > max_rows:
        note = (note + " " if note else "") + f"Showing the first {max_rows} of {len(frame)} rows; the downloads hold all of them."
    return Table(table_id, caption, columns, rows, frame.reset_index(drop=True), stem, note=note)


def _tidy_rows_table(rows: pd.DataFrame, *, table_id: str, caption: str, stem: str, with_task: bool, with_submission: bool) -> Table:
    """Stored rows, one per line, with the spread beside each value. The download is the rows in the
    results schema."""
    columns = []
    if with_submission:
        columns.append(Column("Submission"))
    if with_task:
        columns += [Column("Task"), Column("Version")]
    columns += [Column("Metric"), Column("Subset"), Column("Value", numeric=True, title="stored value, ± std or [CI]"),
                Column("n", numeric=True), Column("Note"), Column("Run")]
    table_rows = []
    for row in rows.itertuples(index=False):
        cells = []
        if with_submission:
            cells.append(Cell(row.submission, row.submission, href=f"submissions/{_slug(row.submission)}.html"))
        if with_task:
            cells += [Cell(row.task, row.task), Cell(str(row.task_version), str(row.task_version))]
        n = None if pd.isna(row.n) else int(row.n)
        cells += [
            Cell(row.metric, row.metric, code=True), Cell(row.subset, row.subset), _metric_cell(row),
            Cell("" if n is None else str(n), "" if n is None else repr(float(n))),
            Cell(row.note if isinstance(row.note, str) else "", row.note if isinstance(row.note, str) else ""),
            Cell(row.run_id, row.run_id, code=True),
        ]
        table_rows.append(cells)
    return Table(table_id, caption, columns, table_rows, rows.reset_index(drop=True), stem, schema=SCHEMA)


# ---------------------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------------------


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = format_number
    return env


def _render_overview(env: jinja2.Environment, site: Site, common: dict[str, Any]) -> str:
    columns = list(SUBMISSION_COLUMNS)
    for task in site.tasks.values():
        main = task.meta.main_metric
        columns.append(Column(task.meta.title or task.name, numeric=True, href=f"tasks/{task.slug}.html",
                              sub=f"{main.name} {'↑' if main.direction == 'higher' else '↓' if main.direction == 'lower' else ''}".strip(),
                              title=f"{task.name} v{task.meta.version}: {main.name}, {_direction_arrow(main.direction)}, range {_range_text(main.range)}"))
    rows, records = [], []
    for info in site.submissions.values():
        l0 = site.l0.get(info.name)
        cells = _submission_cells(info, l0)
        record = _submission_record(info, l0)
        for task in site.tasks.values():
            main = task.meta.main_metric.name
            status, cell, row = _task_status(site, task, info, main)
            cells.append(cell)
            key = f"{task.name}.{main}"
            record[key] = None if row is None or pd.isna(row.value) else float(row.value)
            for stat in ("std", "ci_low", "ci_high"):
                record[f"{key}.{stat}"] = None if row is None else _num_or_none(getattr(row, stat))
            record[f"{key}.n"] = None if row is None or pd.isna(row.n) else int(row.n)
            record[f"{task.name}.version"] = task.meta.version
            record[f"{task.name}.status"] = status
            record[f"{task.name}.run_id"] = None if row is None else row.run_id
        rows.append(cells)
        records.append(record)
    record_columns = list(_submission_record(SubmissionInfo("", "", None, "", "", False, "", "", "", None, []), None))
    for task in site.tasks.values():
        key = f"{task.name}.{task.meta.main_metric.name}"
        record_columns += [key, f"{key}.std", f"{key}.ci_low", f"{key}.ci_high", f"{key}.n",
                           f"{task.name}.version", f"{task.name}.status", f"{task.name}.run_id"]
    overview = Table("overview", "Submissions × tasks (main metric of each task)", columns, rows,
                     _typed_frame(records, record_columns), "downloads/overview/overview")

    task_cards = []
    for task in site.tasks.values():
        main = task.meta.main_metric
        stored = task.rows["submission"].nunique()
        task_cards.append({"name": task.name, "title": task.meta.title, "version": task.meta.version,
                           "href": f"tasks/{task.slug}.html", "main": main.name, "direction": _direction_arrow(main.direction),
                           "range": _range_text(main.range), "description": _first_paragraph(task.meta.description),
                           "stored": stored})
    provenance = _results_provenance(site.results)
    site.downloads += [overview, provenance]
    results_download = {"csv": "downloads/results.csv", "parquet": "downloads/results.parquet", "rows": len(site.results)}
    return env.get_template("index.html").render(
        root="", page_title="Leaderboard", overview=overview, aggregation_rule=AGGREGATION_RULE, task_cards=task_cards,
        provenance=provenance, results_download=results_download, unregistered=site.unregistered_tasks,
        n_submissions=len(site.submissions), l0_metric=plots.L0_METRIC, **common,
    )


def _first_paragraph(text: str) -> str:
    return (text or "").strip().split("\n\n")[0].strip()


def _results_provenance(results: pd.DataFrame) -> Table:
    """Which benchmark versions and code commits produced the stored rows (counts only)."""
    if len(results):
        counts = (results.groupby(["benchmark_version", "git_sha", "task", "task_version"], dropna=False)
                  .size().reset_index(name="rows").sort_values(["benchmark_version", "git_sha", "task", "task_version"], kind="stable"))
        records = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in counts.to_dict("records")]
        for r in records:
            r["rows"] = int(r["rows"])
    else:
        records = []
    frame = _typed_frame(records, ["benchmark_version", "git_sha", "task", "task_version", "rows"])
    return frame_table(frame, table_id="results-provenance", caption="Code that produced the stored results",
                       stem="downloads/overview/results-provenance")


def _render_task(env: jinja2.Environment, site: Site, task: TaskInfo, common: dict[str, Any]) -> str:
    meta = task.meta
    stem = f"downloads/task-{task.slug}"
    metric_records = [
        {"metric": m.name, "main": m.main, "direction": m.direction, "range_low": m.range[0], "range_high": m.range[1],
         "unit": m.unit, "description": m.description}
        for m in meta.metrics
    ]
    metric_defs = Table(
        "metrics", "Metric definitions",
        [Column("Metric"), Column("Main"), Column("Direction"), Column("Range"), Column("Unit"), Column("Definition")],
        [[Cell(m.name, m.name, code=True), Cell("main" if m.main else "", "main" if m.main else ""),
          Cell(_direction_arrow(m.direction), m.direction), Cell(_range_text(m.range), ""), Cell(m.unit, m.unit),
          Cell(m.description, m.description)] for m in meta.metrics],
        _typed_frame(metric_records, ["metric", "main", "direction", "range_low", "range_high", "unit", "description"]),
        f"{stem}/metrics",
    )

    # Scores: one row per submission, one column per declared metric (subset "all"), then any
    # metric stored but not declared, so nothing stored is hidden.
    # Declared metrics with no stored row get no column (they stay listed in the definitions).
    stored_metrics = set(task.rows["metric"])
    shown = [m for m in meta.metrics if m.main or m.name in stored_metrics]
    declared = [m.name for m in shown]
    extra_metrics = sorted(stored_metrics - {m.name for m in meta.metrics})
    columns = list(SUBMISSION_COLUMNS)
    for m in shown:
        columns.append(Column(m.name, numeric=True, sub=("main " if m.main else "") + ("↑" if m.direction == "higher" else "↓" if m.direction == "lower" else ""),
                              title=f"{m.description} ({_direction_arrow(m.direction)}, range {_range_text(m.range)})"))
    columns += [Column(name, numeric=True, sub="undeclared", title="stored but not declared in the task metadata") for name in extra_metrics]
    rows, records = [], []
    for info in site.submissions.values():
        l0 = site.l0.get(info.name)
        cells = _submission_cells(info, l0)
        record = _submission_record(info, l0)
        for name in declared + extra_metrics:
            status, cell, row = _task_status(site, task, info, name)
            cells.append(cell)
            key = f"{task.name}.{name}"
            record[key] = None if row is None or pd.isna(row.value) else float(row.value)
            for stat in ("std", "ci_low", "ci_high"):
                record[f"{key}.{stat}"] = None if row is None else _num_or_none(getattr(row, stat))
            record[f"{key}.status"] = status
        rows.append(cells)
        records.append(record)
    record_columns = list(_submission_record(SubmissionInfo("", "", None, "", "", False, "", "", "", None, []), None))
    for name in declared + extra_metrics:
        key = f"{task.name}.{name}"
        record_columns += [key, f"{key}.std", f"{key}.ci_low", f"{key}.ci_high", f"{key}.status"]
    scores = Table("scores", f"Scores at v{meta.version} (subset \u201call\u201d)", columns, rows,
                   _typed_frame(records, record_columns), f"{stem}/scores")

    all_rows = _tidy_rows_table(task.all_rows, table_id="rows", caption="Every stored row of this task (all versions and subsets)",
                                stem=f"{stem}/rows", with_task=True, with_submission=True)
    figures = _task_figures(site, task)
    for figure in figures:
        if figure.data is not None:
            site.figure_data.append((f"{stem}/plot-{figure.id}", figure.data))
    proxy = _proxy_validity(task, stem)
    tables = [metric_defs, scores, all_rows] + ([proxy["table"]] if proxy and proxy.get("table") else [])
    site.downloads += tables
    return env.get_template("task.html").render(
        root="../", page_title=meta.title or task.name, task=task, meta=meta, metric_defs=metric_defs, scores=scores,
        all_rows=all_rows, figures=figures, proxy=proxy, paragraphs=_paragraphs(meta.description),
        references=[_link_or_text(r) for r in meta.references], figure_stem=stem, **common,
    )


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in (text or "").strip().split("\n\n") if p.strip()]


def _link_or_text(text: str) -> dict[str, Any]:
    return {"text": text, "href": text if _is_web_url(text) else None}


def _is_web_url(text: str | None) -> bool:
    return bool(text) and re.match(r"^https?://[^\s<>\"']+$", text.strip()) is not None


def _task_figures(site: Site, task: TaskInfo) -> list[plots.Figure]:
    figures = []
    meta = task.meta
    architectures = {n: i.architecture for n, i in site.submissions.items()}
    declared = {m.name: m for m in meta.metrics}
    vs_l0 = [meta.main_metric.name] + ([plots.PW_MCC_METRIC] if plots.PW_MCC_METRIC in declared and meta.main_metric.name != plots.PW_MCC_METRIC else [])
    for name in vs_l0:
        if name == plots.L0_METRIC:
            continue
        figures.append(plots.metric_vs_l0(task.rows, metric=name, metric_range=declared[name].range, l0=site.l0,
                                          architectures=architectures, figure_id=f"{_slug(name)}-vs-l0"))
    has_gt_pw = plots.GT_MCC_METRIC in declared and plots.PW_MCC_METRIC in declared
    stored = set(task.rows["metric"])
    if has_gt_pw or {plots.GT_MCC_METRIC, plots.PW_MCC_METRIC} <= stored:
        value_range = declared[plots.GT_MCC_METRIC].range if plots.GT_MCC_METRIC in declared else (None, None)
        figures.append(plots.gt_vs_pw_by_preset(task.rows, figure_id="gt-vs-pw", value_range=value_range))
    expected = set(plots.EXPECTED_ARTIFACT_PLOTS.get(task.name, ()))
    store_artifacts = _task_artifacts(site, task)
    for artifact_name, builder in plots.ARTIFACT_FIGURES.items():
        found = store_artifacts.get(artifact_name, {})
        if found or artifact_name in expected:
            figures.append(builder(found, figure_id=_slug(artifact_name)))
    return figures


def _task_artifacts(site: Site, task: TaskInfo) -> dict[str, dict[str, pd.DataFrame]]:
    """artifact name → {submission: frame} for the task's current version (plotted names only)."""
    store = site.store
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for submission in sorted(set(task.rows["submission"])):
        for artifact_name in plots.ARTIFACT_FIGURES:
            frame = store.read_artifact(submission, task.name, task.meta.version, artifact_name)
            if frame is not None:
                out.setdefault(artifact_name, {})[submission] = frame
    return out


def _proxy_validity(task: TaskInfo, stem: str) -> dict[str, Any] | None:
    """The task module's own cross-submission statistic, shown as returned (never recomputed)."""
    if task.name != plots.PROXY_VALIDITY_TASK:
        return None
    module_names = [task.cls.__module__]
    if plots.PROXY_VALIDITY_MODULE not in module_names:
        module_names.append(plots.PROXY_VALIDITY_MODULE)
    function = None
    for module_name in module_names:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        function = getattr(module, plots.PROXY_VALIDITY_FUNCTION, None)
        if callable(function):
            break
        function = None
    if function is None:
        return None
    source = f"{function.__module__}.{function.__name__}"
    try:
        value = function(task.rows.copy())
    except Exception as exc:  # shown on the page: a broken statistic must not vanish silently
        log.warning("%s failed: %s", source, exc)
        return {"source": source, "error": f"{type(exc).__name__}: {exc}", "table": None, "text": None}
    table, text = None, None
    if isinstance(value, pd.DataFrame):
        table = frame_table(value.reset_index(drop=True), table_id="proxy-validity", caption="As returned", stem=f"{stem}/proxy-validity")
    elif isinstance(value, Mapping):
        frame = _typed_frame([{"statistic": str(k), "value": (v if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v))} for k, v in value.items()], ["statistic", "value"])
        table = frame_table(frame, table_id="proxy-validity", caption="As returned", stem=f"{stem}/proxy-validity")
    else:
        text = format_number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
    return {"source": source, "error": None, "table": table, "text": text}


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    elif value is None or value == []:
        return
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for index, inner in enumerate(value):
            _flatten(f"{prefix}[{index}]", inner, out)
    elif isinstance(value, list):
        out.append((prefix, ", ".join(str(v) for v in value)))
    else:
        out.append((prefix, value))


def hub_tree_url(repo: str | None, revision: str | None, path: str | None = "") -> str | None:
    """``https://huggingface.co/<repo>/tree/<sha>/<path>`` for a valid repo id and full commit sha."""
    if not repo or not revision or not HUB_REPO.match(str(repo)) or not COMMIT_SHA.match(str(revision)):
        return None
    url = f"https://huggingface.co/{repo}/tree/{revision}"
    path = (path or "").strip("/")
    if path:
        url += "/" + quote(path, safe="/")
    return url


def _render_submission(env: jinja2.Environment, site: Site, info: SubmissionInfo, common: dict[str, Any]) -> str:
    stem = f"downloads/submission-{info.slug}"
    rows = site.results[site.results["submission"] == info.name]
    tables: list[Table] = []

    manifest_table = None
    checkpoint_table = None
    if info.manifest is not None:
        dumped = info.manifest.submission.model_dump(mode="json")
        checkpoints = dumped.pop("checkpoints", None) or []
        pairs: list[tuple[str, Any]] = []
        _flatten("", dumped, pairs)
        pairs.append(("manifest file", info.manifest.path.name))
        frame = _typed_frame([{"field": k, "value": str(v)} for k, v in pairs], ["field", "value"])
        manifest_table = Table(
            "manifest", "Manifest", [Column("Field"), Column("Value")],
            [[Cell(k, k, code=True), Cell(str(v), str(v), href=str(v).strip() if _is_web_url(str(v)) else None, external=True)] for k, v in pairs],
            frame, f"{stem}/manifest",
        )
        if checkpoints:
            ck_records, ck_rows = [], []
            for ck in checkpoints:
                url = hub_tree_url(ck.get("repo"), ck.get("revision"), ck.get("path"))
                ck_records.append({"seed": ck.get("seed"), "repo": ck.get("repo"), "revision": ck.get("revision"),
                                   "path": ck.get("path"), "local": ck.get("local"), "hub_url": url})
                ck_rows.append([
                    Cell(str(ck.get("seed")), repr(float(ck.get("seed", 0)))),
                    Cell(ck.get("repo") or "", ck.get("repo") or ""),
                    Cell(ck.get("revision") or "", ck.get("revision") or "", code=True),
                    Cell(ck.get("path") or "", ck.get("path") or "", code=True),
                    Cell(ck.get("local") or "", ck.get("local") or "", code=True),
                    Cell("Hub" if url else ("local folder" if ck.get("local") else ""), "", href=url, external=True),
                ])
            checkpoint_table = Table("checkpoints", "Checkpoints (as pinned by the manifest)",
                                     [Column("Seed", numeric=True), Column("Repo"), Column("Revision"), Column("Path"), Column("Local"), Column("Link")],
                                     ck_rows, _typed_frame(ck_records, ["seed", "repo", "revision", "path", "local", "hub_url"]), f"{stem}/checkpoints")
    provenance_table = _provenance_table(rows, stem)

    overall = rows[rows["subset"] == "all"]
    metrics_table = _tidy_rows_table(overall, table_id="metrics", caption="Every metric (subset \u201call\u201d), with its spread",
                                     stem=f"{stem}/metrics", with_task=True, with_submission=False)
    slices = rows[rows["subset"] != "all"]
    slices_table = _tidy_rows_table(slices, table_id="per-seed", caption="Per-seed, per-pair and per-slice values",
                                    stem=f"{stem}/per-seed", with_task=True, with_submission=False)

    citations, task_status, artifacts = [], [], []
    store = site.store
    for task in site.tasks.values():
        main = task.meta.main_metric.name
        status, cell, row = _task_status(site, task, info, main)
        task_status.append({"task": task, "status": status, "cell": cell})
        if row is not None and not pd.isna(row.value):
            citations.append(_score_citation(info, task, row))
        for name in store.artifact_names(info.name, task.name, task.meta.version):
            frame = store.read_artifact(info.name, task.name, task.meta.version, name)
            table = frame_table(frame.reset_index(drop=True), table_id=f"artifact-{task.slug}-{_slug(name)}",
                                caption=f"{task.name} v{task.meta.version}: {name}", stem=f"{stem}/artifact-{task.slug}-{_slug(name)}",
                                max_rows=ARTIFACT_ROWS_SHOWN)
            figure = None
            if name in plots.ARTIFACT_FIGURES:
                figure = plots.ARTIFACT_FIGURES[name]({info.name: frame}, figure_id=f"{task.slug}-{_slug(name)}")
                if figure.svg is None:
                    figure = None
                elif figure.data is not None:
                    site.figure_data.append((f"{stem}/plot-{figure.id}", figure.data))
            artifacts.append({"table": table, "figure": figure})
            tables.append(table)
    tables += [t for t in (manifest_table, checkpoint_table, provenance_table, metrics_table, slices_table) if t is not None]
    site.downloads += tables
    return env.get_template("submission.html").render(
        root="../", page_title=info.name, info=info, manifest_table=manifest_table, checkpoint_table=checkpoint_table,
        provenance_table=provenance_table, metrics_table=metrics_table, slices_table=slices_table, artifacts=artifacts,
        citations=citations, task_status=task_status, bibtex=BENCHMARK_BIBTEX, **common,
    )


def _score_citation(info: SubmissionInfo, task: TaskInfo, row: Any) -> dict[str, str]:
    spread = _spread_text(row)
    sha = row.git_sha if isinstance(row.git_sha, str) and row.git_sha else "unknown"
    text = (
        f"{info.name}: {row.metric} = {format_number(float(row.value))}{' ' + spread if spread else ''} "
        f"(CanonBench {row.benchmark_version}, task {task.name} v{row.task_version}, run {row.run_id}, code {sha})"
    )
    return {"task": task.name, "text": text, "id": f"cite-{task.slug}"}


def _provenance_table(rows: pd.DataFrame, stem: str) -> Table | None:
    """Checkpoint files (repo, commit, sha256) as recorded in the result rows."""
    seen: dict[str, dict[str, Any]] = {}
    tasks_for: dict[str, set[str]] = {}
    for row in rows.itertuples(index=False):
        if not isinstance(row.checkpoints, str):
            continue
        try:
            records = json.loads(row.checkpoints)
        except ValueError:
            continue
        for record in records if isinstance(records, list) else []:
            if not isinstance(record, dict):
                continue
            key = json.dumps(record, sort_keys=True)
            seen.setdefault(key, record)
            tasks_for.setdefault(key, set()).add(str(row.task))
    if not seen:
        return None
    out_records, out_rows = [], []
    for key in sorted(seen):
        record = seen[key]
        revision = record.get("resolved_revision") or record.get("revision")
        url = hub_tree_url(record.get("repo"), revision, record.get("path"))
        files = record.get("files") or {}
        items = sorted(files.items()) if isinstance(files, dict) else []
        for file_name, detail in items or [("", {})]:
            detail = detail if isinstance(detail, dict) else {}
            out = {
                "seed": record.get("seed"), "repo": record.get("repo"), "requested_revision": record.get("requested_revision"),
                "resolved_revision": revision, "path": record.get("path"), "local": record.get("local"),
                "file": file_name, "bytes": detail.get("bytes"), "sha256": detail.get("sha256"), "hub_url": url,
                "tasks": ", ".join(sorted(tasks_for[key])),
            }
            out_records.append(out)
            out_rows.append([
                Cell("" if out["seed"] is None else str(out["seed"]), "" if out["seed"] is None else repr(float(out["seed"]))),
                Cell(str(out["repo"] or ("local" if out["local"] else "")), str(out["repo"] or "")),
                Cell(str(revision or ""), str(revision or ""), code=True, title=f"requested: {out['requested_revision']}" if out["requested_revision"] else None),
                Cell(str(out["path"] or ""), str(out["path"] or ""), code=True),
                Cell(str(file_name), str(file_name), code=True),
                Cell("" if out["bytes"] is None else f"{int(out['bytes']):,}", "" if out["bytes"] is None else repr(float(out["bytes"]))),
                Cell(str(out["sha256"] or ""), str(out["sha256"] or ""), code=True, cls="hash"),
                Cell("Hub" if url else "", "", href=url, external=True),
            ])
    columns = [Column("Seed", numeric=True), Column("Repo"), Column("Commit"), Column("Path"), Column("File"),
               Column("Bytes", numeric=True), Column("sha256"), Column("Link")]
    frame = _typed_frame(out_records, ["seed", "repo", "requested_revision", "resolved_revision", "path", "local", "file", "bytes", "sha256", "hub_url", "tasks"])
    return Table("provenance", "Checkpoint provenance (as recorded with the results)", columns, out_rows, frame, f"{stem}/provenance")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """CSV with a fixed line terminator and full float precision (reads back to the same values)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, lineterminator="\n")


def write_parquet(frame: pd.DataFrame, path: Path, schema: pa.Schema | None = None) -> None:
    """Parquet written the same way each time; pyarrow adds no timestamps, so equal tables give
    equal bytes with the same library versions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    pq.write_table(table, path, compression="snappy")


def _write_site(site: Site, out: Path) -> None:
    for relative, text in sorted(site.pages.items()):
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8", newline="\n")
    static_out = out / "static"
    static_out.mkdir(parents=True, exist_ok=True)
    for source in sorted(STATIC_DIR.iterdir()):
        if source.is_file():
            (static_out / source.name).write_bytes(source.read_bytes())
    write_csv(site.results, out / "downloads" / "results.csv")
    write_parquet(site.results, out / "downloads" / "results.parquet", schema=SCHEMA)
    for table in site.downloads:
        write_csv(table.frame, out / f"{table.stem}.csv")
        write_parquet(table.frame, out / f"{table.stem}.parquet", schema=table.schema)
    for stem, frame in site.figure_data:
        write_csv(frame, out / f"{stem}.csv")
        write_parquet(frame, out / f"{stem}.parquet")
    (out / SITE_MARKER).write_text("CanonBench leaderboard site; `canonbench leaderboard build` replaces this folder.\n", encoding="utf-8")
