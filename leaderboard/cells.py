"""Table cells, columns and tables: how stored values are shown (formatting only, no metric is computed)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pandas as pd
import pyarrow as pa

from benchmark.results import SCHEMA
from benchmark.submission.manifest import COMMIT_SHA, HUB_REPO
from leaderboard.plots import format_number

NOT_RUN = "not run"


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
    rank: str = ""  # "#2" / "#2=" (shared): the stored rank group of the reliability lens
    rank_title: str = ""  # why (stored reason), shown on hover
    rank_tied: bool = False
    flag: str = ""  # a short marker beside the value (e.g. "≈ chance"); its reason goes in flag_title
    flag_title: str = ""
    slices: tuple["SliceEntry", ...] = ()  # per-slice values, shown as a small nested table


@dataclass
class SliceEntry:
    """One slice of a cell that stores no overall value: shown as one row of a nested table."""

    subset: str
    text: str
    spread: str = ""
    title: str = ""
    sub: str = ""  # e.g. the slice's chance level
    flag: str = ""
    flag_title: str = ""


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
    cls: str = ""  # extra classes of the <table> (e.g. "sticky-first")


def slug(text: str) -> str:
    """A file-name form of a submission, task or artifact name, one-to-one.

    Text made of ``[A-Za-z0-9._-]`` and ``/`` maps ``/`` to ``~`` (names never contain ``~``), so
    ``a/b__c`` and ``a__b/c`` stay apart; any other text becomes ``+<safe form>-<sha256 prefix>``
    (names never contain ``+`` either), so a hashed form can never equal a plain one."""
    if re.fullmatch(r"[A-Za-z0-9._/-]+", text) and not text.startswith("."):
        return text.replace("/", "~")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip(".")[:60]
    return f"+{safe}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def num_or_none(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def spread_text(row: Any) -> str:
    std, lo, hi = num_or_none(row.std), num_or_none(row.ci_low), num_or_none(row.ci_high)
    if std is not None:
        return f"\u00b1 {format_number(std)}"
    if lo is not None and hi is not None:
        return f"[{format_number(lo)}, {format_number(hi)}]"
    return ""


def _row_details(row: Any) -> str:
    parts = []
    if not pd.isna(row.n):
        parts.append(f"n = {int(row.n)}")
    lo, hi = num_or_none(row.ci_low), num_or_none(row.ci_high)
    if lo is not None and hi is not None:
        parts.append(f"CI [{format_number(lo)}, {format_number(hi)}]")
    if isinstance(row.note, str) and row.note:
        parts.append(row.note)
    if getattr(row, "capped", False) is True:
        parts.append("capped (--limit) preview: no full run is stored")
    seed = getattr(row, "task_seed", None)
    if seed is not None and not pd.isna(seed):
        parts.append(f"task seed {int(seed)}")
    parts.append(f"{row.task} v{row.task_version}, run {row.run_id}")
    return "; ".join(parts)


def metric_cell(row: Any) -> Cell:
    """A stored row as a table cell: the value with its spread, details on hover."""
    capped = bool(getattr(row, "capped", False) is True)
    badges = ("capped",) if capped else ()
    if pd.isna(row.value):
        return Cell("undefined", "", title=_row_details(row), cls="undefined", badges=badges)
    value = float(row.value)
    return Cell(format_number(value), repr(value), title=_row_details(row), spread=spread_text(row), badges=badges)


def subset_cell(rows: list[Any]) -> Cell:
    """Per-slice values listed (never averaged) when a task stores no "all" row: the text names them
    all; ``slices`` holds the top-level slices (no "," in the subset) for a nested table, finer
    slices (e.g. per seed within a preset) stay on the task and submission pages."""
    lines, entries = [], []
    for row in sorted(rows, key=lambda r: r.subset):
        value = "undefined" if pd.isna(row.value) else format_number(float(row.value))
        spread = spread_text(row)
        lines.append(f"{row.subset}: {value}{' ' + spread if spread else ''}")
        if "," not in str(row.subset):
            entries.append(SliceEntry(str(row.subset), value, spread, title=_row_details(row)))
    finer = len(lines) - len(entries)
    title = "no overall ('all') value is stored; per-slice values are listed, not averaged"
    if finer:
        title += f"; {finer} finer slice(s) (e.g. per seed) are on the task page"
    return Cell(lines[0] if len(lines) == 1 else f"{len(lines)} slices", "", sub="; ".join(lines), title=title,
                cls="slices", slices=tuple(entries))


def seeds_text(seeds: list[int]) -> str:
    if not seeds:
        return ""
    shown = ", ".join(str(s) for s in seeds[:5]) + (", …" if len(seeds) > 5 else "")
    return f"{len(seeds)} ({shown})"


def direction_arrow(direction: str) -> str:
    return {"higher": "\u2191 higher is better", "lower": "\u2193 lower is better"}.get(direction, "no direction")


def range_text(metric_range: tuple[float | None, float | None]) -> str:
    lo, hi = metric_range
    return f"[{'−∞' if lo is None else f'{lo:g}'}, {'∞' if hi is None else f'{hi:g}'}]"


def typed_frame(records: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
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


def tidy_rows_table(rows: pd.DataFrame, *, table_id: str, caption: str, stem: str, with_task: bool, with_submission: bool) -> Table:
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
            cells.append(Cell(row.submission, row.submission, href=f"submissions/{slug(row.submission)}.html"))
        if with_task:
            cells += [Cell(row.task, row.task), Cell(str(row.task_version), str(row.task_version))]
        n = None if pd.isna(row.n) else int(row.n)
        cells += [
            Cell(row.metric, row.metric, code=True), Cell(row.subset, row.subset), metric_cell(row),
            Cell("" if n is None else str(n), "" if n is None else repr(float(n))),
            Cell(row.note if isinstance(row.note, str) else "", row.note if isinstance(row.note, str) else ""),
            Cell(row.run_id, row.run_id, code=True),
        ]
        table_rows.append(cells)
    return Table(table_id, caption, columns, table_rows, rows.reset_index(drop=True), stem, schema=SCHEMA)


def flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    elif value is None or value == []:
        return
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for index, inner in enumerate(value):
            flatten(f"{prefix}[{index}]", inner, out)
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


def is_web_url(text: str | None) -> bool:
    return bool(text) and re.match(r"^https?://[^\s<>\"']+$", text.strip()) is not None


def link_or_text(text: str) -> dict[str, Any]:
    return {"text": text, "href": text if is_web_url(text) else None}


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in (text or "").strip().split("\n\n") if p.strip()]


def first_paragraph(text: str) -> str:
    return (text or "").strip().split("\n\n")[0].strip()

