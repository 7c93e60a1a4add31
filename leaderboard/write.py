"""Writing the built site: pages, static files and every table's CSV/parquet download, into a staging
folder that replaces the old site in one rename."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from benchmark.errors import CanonBenchError
from benchmark.results import SCHEMA

if TYPE_CHECKING:
    from leaderboard.collect import Site

PACKAGE_DIR = Path(__file__).resolve().parent

STATIC_DIR = PACKAGE_DIR / "static"


SITE_MARKER = ".canonbench-site"


def check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise CanonBenchError("exists and is not a folder", file=out_dir, field="--out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / SITE_MARKER).exists():
        raise CanonBenchError(
            "is not empty and holds no CanonBench site; refusing to replace it (choose an empty or new folder)",
            file=out_dir, field="--out",
        )


def staging_dir(out_dir: Path) -> Path:
    """A new empty folder beside ``out_dir`` to build into; its name carries this process's id so a
    later build can tell a killed build's leftovers (see :func:`remove_stale_builds`)."""
    import tempfile

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-{os.getpid()}-", dir=out_dir.parent))


def remove_stale_builds(out_dir: Path) -> int:
    """Delete staging and old-site folders left beside ``out_dir`` by builds that were killed
    (their process is gone); returns how many were removed."""
    import re

    removed = 0
    if not out_dir.parent.is_dir():
        return 0
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.(?:building|old)-(\d+)(?:-.*)?")
    for entry in out_dir.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and _pid_alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def swap_in(staging: Path, out_dir: Path) -> None:
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


#: A cell starting with one of these is a formula to a spreadsheet (``=HYPERLINK(...)``, ``=cmd|...``).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """A text cell that a spreadsheet would run as a formula gets a leading apostrophe (the OWASP
    rule for CSV injection); numbers and other values pass unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """CSV with a fixed line terminator and full float precision (reads back to the same values);
    text cells that start like a formula are neutralised (:func:`spreadsheet_safe`). The parquet
    download beside every CSV keeps the exact text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    safe = frame.copy()
    for column in safe.columns:
        if not (pd.api.types.is_numeric_dtype(safe[column]) or pd.api.types.is_bool_dtype(safe[column])):
            safe[column] = safe[column].map(spreadsheet_safe, na_action="ignore")
    safe.to_csv(path, index=False, lineterminator="\n")


def write_parquet(frame: pd.DataFrame, path: Path, schema: pa.Schema | None = None) -> None:
    """Parquet written the same way each time; pyarrow adds no timestamps, so equal tables give
    equal bytes with the same library versions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    pq.write_table(table, path, compression="snappy")


def write_site(site: Site, out: Path) -> None:
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

