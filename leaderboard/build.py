"""Render the static leaderboard: a pure function of the results store, the manifests and the tasks'
metadata.

The site is plain HTML (jinja2, autoescaped), one CSS file, one small script for sorting and
filtering, and inline SVG plots, so it works offline and from ``file://``. Nothing here computes a
metric: cells show stored rows (value, std or CI, n, note) and plots draw stored values and
artifacts. Statistics across submissions are stored summaries (``canonbench summarize``), shown as stored.

The output is deterministic: the same inputs give byte-identical files except the build date, which
appears once per page inside ``<span class="build-date">`` and can be fixed with ``build_date=`` or
``SOURCE_DATE_EPOCH``.

Layout of the built site::

    index.html                       overview: one row per submission, one column per task
    architectures.html               each task's main metric vs L0 and width, by architecture and library
    tasks/<task>.html                one page per registered task
    submissions/<org>~<name>.html    one page per submission (see leaderboard.cells.slug)
    downloads/results.{csv,parquet}  the whole results table, as stored
    downloads/<page>/<table>.{csv,parquet}   the data behind every table and plot
    static/style.css, static/table.js
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from pathlib import Path
from typing import Mapping

from benchmark.results import ResultStore
from benchmark.version import BENCHMARK_VERSION, git_sha
from leaderboard.architectures import render_architectures
from leaderboard.collect import collect, load_manifest_map
from leaderboard.pages import environment, render_overview, render_submission, render_task
from leaderboard.write import check_out_dir, remove_stale_builds, staging_dir, swap_in, write_site

log = logging.getLogger(__name__)


def build_site(
    *,
    results_dir: Path | str,
    submissions_dir: Path | str | list[Path | str] | None,
    out_dir: Path | str,
    build_date: dt.datetime | str | None = None,
    tasks: Mapping[str, type] | None = None,
) -> Path:
    """Build the static site into ``out_dir`` and return the path of its ``index.html``.

    ``results_dir``: a results store (:class:`benchmark.results.ResultStore`). ``submissions_dir``:
    a folder of manifests, or a list of folders (missing or None: submissions are described from
    their result rows only; a manifest that does not load is left out with a warning).
    ``build_date``: shown on every page (default: ``SOURCE_DATE_EPOCH`` if set, else now, UTC).
    ``tasks``: name → Task class (default: :func:`tasks.all_tasks`; tests pass fixture tasks).
    ``out_dir`` is replaced as a whole, but only if it is empty, absent, or a site built before.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    if tasks is None:
        from tasks import all_tasks

        tasks = all_tasks()
    stale = remove_stale_builds(out_dir)
    if stale:
        log.info("removed %d folder(s) left beside %s by interrupted builds", stale, out_dir)
    store = ResultStore(results_dir)
    manifests = load_manifest_map(submissions_dir)
    site = collect(store, manifests, tasks)
    date_text = _build_date_text(build_date)

    env = environment()
    common = {
        "benchmark_version": BENCHMARK_VERSION,
        "git_sha": git_sha() or "unknown (not a git checkout)",
        "build_date": date_text,
        "nav_tasks": [{"label": t.meta.title or t.name, "href": f"tasks/{t.slug}.html"} for t in site.tasks.values()],
    }
    site.pages["index.html"] = render_overview(env, site, common)
    site.pages["architectures.html"] = render_architectures(env, site, common)
    for task in site.tasks.values():
        site.pages[f"tasks/{task.slug}.html"] = render_task(env, site, task, common)
    for info in site.submissions.values():
        site.pages[f"submissions/{info.slug}.html"] = render_submission(env, site, info, common)

    staging = staging_dir(out_dir)
    try:
        write_site(site, staging)
        swap_in(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir / "index.html"


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

