"""Rendering the overview, task and submission pages from the collected :class:`~leaderboard.collect.Site`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from benchmark.version import BENCHMARK_VERSION
from leaderboard import plots
from leaderboard.cells import (
    Cell,
    Column,
    Table,
    direction_arrow,
    first_paragraph,
    flatten,
    frame_table,
    hub_tree_url,
    is_web_url,
    link_or_text,
    num_or_none,
    paragraphs,
    range_text,
    seeds_text,
    slug,
    tidy_rows_table,
    typed_frame,
)
from leaderboard import citation, overview
from leaderboard.chance import RULE as CHANCE_RULE
from leaderboard.collect import L0_METRIC, Site, SubmissionInfo, TaskInfo, task_status
from leaderboard.plots import format_number
from leaderboard.reliability import ROLES as RELIABILITY_ROLES
from leaderboard.reliability import main_metric_flag, reliability_section

PACKAGE_DIR = Path(__file__).resolve().parent

TEMPLATES_DIR = PACKAGE_DIR / "templates"


ARTIFACT_ROWS_SHOWN = 200


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


def environment() -> jinja2.Environment:
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


def _submission_cells(info: SubmissionInfo, l0: tuple[float, float | None, str] | None, *, root_link: bool = True) -> list[Cell]:
    badges = ("local",) if info.local else ()
    name_cell = Cell(info.name, info.name, href=f"submissions/{info.slug}.html", sub=info.title, badges=badges,
                     title="checkpoints from local folders or trained here, not pinned Hub commits" if info.local else None)
    if l0 is None:
        l0_cell = Cell("", "", title="no 'l0' metric stored")
    else:
        l0_cell = Cell(format_number(l0[0]), repr(l0[0]), spread=f"\u00b1 {format_number(l0[1])}" if l0[1] is not None else "",
                       title=f"metric '{L0_METRIC}' (subset all) from task {l0[2]}")
    return [
        name_cell,
        Cell(info.model, info.model, sub=info.hook, cls="nowrap-sub"),
        Cell(info.architecture, info.architecture),
        Cell(str(info.width) if info.width is not None else "", repr(float(info.width)) if info.width is not None else ""),
        l0_cell,
        Cell(seeds_text(info.seeds), repr(float(len(info.seeds))) if info.seeds else "", title=", ".join(map(str, info.seeds)) or None),
    ]


SUBMISSION_COLUMNS = [
    Column("Submission"), Column("Model", sub="hook"), Column("Architecture"),
    Column("Width", numeric=True, title="number of latents (d_sae)"),
    Column("L0", numeric=True, title=f"stored metric '{L0_METRIC}' (subset all): mean active latents per token"),
    Column("Seeds", numeric=True, title="number of seeds (sorted by count)"),
]


def _submission_record(info: SubmissionInfo, l0: tuple[float, float | None, str] | None) -> dict[str, Any]:
    return {
        "submission": info.name, "title": info.title, "kind": info.kind, "local": info.local, "model": info.model,
        "hook": info.hook, "architecture": info.architecture, "width": info.width,
        "l0": l0[0] if l0 else None, "l0_std": l0[1] if l0 else None, "l0_task": l0[2] if l0 else None,
        "seeds": json.dumps(info.seeds),
    }


def render_overview(env: jinja2.Environment, site: Site, common: dict[str, Any]) -> str:
    columns = list(SUBMISSION_COLUMNS)
    for task in site.tasks.values():
        main = task.meta.main_metric
        flag = main_metric_flag(task)
        sub = f"{main.name} {'↑' if main.direction == 'higher' else '↓' if main.direction == 'lower' else ''}".strip()
        title = f"{task.name} v{task.meta.version}: {main.name}, {direction_arrow(main.direction)}, range {range_text(main.range)}"
        if flag:  # shown, not hidden: the main metric fails the stored reliability thresholds
            sub += " · fails reliability"
            title += f". Fails the reliability thresholds ({flag}); see the task page"
        columns.append(Column(task.meta.title or task.name, numeric=True, href=f"tasks/{task.slug}.html", sub=sub, title=title))
    ranked, waiting = overview.split_not_run_yet(site)  # submissions without any result are listed apart
    rows, records = [], []
    for info in ranked:
        l0 = site.l0.get(info.name)
        cells = _submission_cells(info, l0)
        record = _submission_record(info, l0)
        for task in site.tasks.values():
            main = task.meta.main_metric.name
            status, cell, row = task_status(site, task, info, main)
            cells.append(overview.with_chance(site, task, info, cell, row))
            record.update(overview.chance_record(site, task, info, row))
            key = f"{task.name}.{main}"
            record[key] = None if row is None or pd.isna(row.value) else float(row.value)
            for stat in ("std", "ci_low", "ci_high"):
                record[f"{key}.{stat}"] = None if row is None else num_or_none(getattr(row, stat))
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
        record_columns += overview.chance_columns(task)
    overview_table = Table("overview", "Submissions × tasks (main metric of each task)", columns, rows,
                           typed_frame(records, record_columns), "downloads/overview/overview", cls="sticky-first")

    task_cards = []
    for task in site.tasks.values():
        main = task.meta.main_metric
        stored = task.rows["submission"].nunique()
        task_cards.append({"name": task.name, "title": task.meta.title, "version": task.meta.version,
                           "href": f"tasks/{task.slug}.html", "main": main.name, "direction": direction_arrow(main.direction),
                           "range": range_text(main.range), "description": first_paragraph(task.meta.description),
                           "stored": stored})
    provenance = _results_provenance(site.results)
    site.downloads += [overview_table, provenance]
    results_download = {"csv": "downloads/results.csv", "parquet": "downloads/results.parquet", "rows": len(site.results)}
    return env.get_template("index.html").render(
        root="", page_title="Leaderboard", overview=overview_table, aggregation_rule=AGGREGATION_RULE, task_cards=task_cards,
        provenance=provenance, results_download=results_download, unregistered=site.unregistered_tasks,
        n_submissions=len(site.submissions), l0_metric=L0_METRIC,
        not_run_yet=overview.not_run_yet_entries(site, waiting), chance_rule=CHANCE_RULE,
        chance_tasks=[t for t in site.tasks.values() if t.meta.chance_metric], **common,
    )


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
    frame = typed_frame(records, ["benchmark_version", "git_sha", "task", "task_version", "rows"])
    return frame_table(frame, table_id="results-provenance", caption="Code that produced the stored results",
                       stem="downloads/overview/results-provenance")


def render_task(env: jinja2.Environment, site: Site, task: TaskInfo, common: dict[str, Any]) -> str:
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
          Cell(direction_arrow(m.direction), m.direction), Cell(range_text(m.range), ""), Cell(m.unit, m.unit),
          Cell(m.description, m.description)] for m in meta.metrics],
        typed_frame(metric_records, ["metric", "main", "direction", "range_low", "range_high", "unit", "description"]),
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
                              title=f"{m.description} ({direction_arrow(m.direction)}, range {range_text(m.range)})"))
    columns += [Column(name, numeric=True, sub="undeclared", title="stored but not declared in the task metadata") for name in extra_metrics]
    rows, records = [], []
    for info in site.submissions.values():
        l0 = site.l0.get(info.name)
        cells = _submission_cells(info, l0)
        record = _submission_record(info, l0)
        for name in declared + extra_metrics:
            status, cell, row = task_status(site, task, info, name)
            cells.append(cell)
            key = f"{task.name}.{name}"
            record[key] = None if row is None or pd.isna(row.value) else float(row.value)
            for stat in ("std", "ci_low", "ci_high"):
                record[f"{key}.{stat}"] = None if row is None else num_or_none(getattr(row, stat))
            record[f"{key}.status"] = status
        rows.append(cells)
        records.append(record)
    record_columns = list(_submission_record(SubmissionInfo("", "", None, "", "", False, "", "", "", None, []), None))
    for name in declared + extra_metrics:
        key = f"{task.name}.{name}"
        record_columns += [key, f"{key}.std", f"{key}.ci_low", f"{key}.ci_high", f"{key}.status"]
    scores = Table("scores", f"Scores at v{meta.version} (subset \u201call\u201d)", columns, rows,
                   typed_frame(records, record_columns), f"{stem}/scores")

    all_rows = tidy_rows_table(task.all_rows, table_id="rows", caption="Every stored row of this task (all versions and subsets)",
                                stem=f"{stem}/rows", with_task=True, with_submission=True)
    figures = _task_figures(site, task)
    for figure in figures:
        if figure.data is not None:
            site.figure_data.append((f"{stem}/plot-{figure.id}", figure.data))
    summaries = _summaries(task, stem)
    reliability = reliability_section(task, stem)
    if reliability is not None:
        reliability["stale"] = site.stale_ranks.get(task.name, [])
    tables = [metric_defs, scores, all_rows] + [s["table"] for s in summaries if s["table"] is not None]
    if reliability and reliability["computed"]:
        tables += [reliability["verdict_table"]] + reliability["tables"]
        for figure in reliability["figures"]:
            if figure.data is not None:
                site.figure_data.append((f"{stem}/plot-{figure.id}", figure.data))
    site.downloads += tables
    return env.get_template("task.html").render(
        root="../", page_title=meta.title or task.name, task=task, meta=meta, metric_defs=metric_defs, scores=scores,
        all_rows=all_rows, figures=figures, summaries=summaries, reliability=reliability, paragraphs=paragraphs(meta.description),
        references=[link_or_text(r) for r in meta.references], figure_stem=stem, **common,
    )


def _task_figures(site: Site, task: TaskInfo) -> list[plots.Figure]:
    """The plots the task declares (:class:`tasks.base.PlotSpec`), drawn from its shown rows and
    the shown units' artifacts."""
    architectures = {n: i.architecture for n, i in site.submissions.items()}
    ranges = {m.name: m.range for m in task.meta.metrics}
    figures = []
    for spec in task.meta.plots:
        artifacts = _shown_artifacts(site, task, spec.artifact) if spec.artifact else {}
        figures.append(plots.figure_for(spec, rows=task.rows, artifacts=artifacts, l0=site.l0, architectures=architectures,
                                        metric_ranges=ranges))
    return figures


def _shown_artifacts(site: Site, task: TaskInfo, name: str) -> dict[str, pd.DataFrame]:
    """submission → the artifact ``name`` of its shown unit of ``task`` (current version)."""
    out: dict[str, pd.DataFrame] = {}
    for row in task.rows.drop_duplicates("unit_key").itertuples(index=False):
        frame = site.store.read_artifact(row, name)
        if frame is not None:
            out[row.submission] = frame
    return out


def _summaries(task: TaskInfo, stem: str) -> list[dict[str, Any]]:
    """The task's declared summaries as stored by ``canonbench summarize`` (never recomputed here)."""
    out = []
    for spec in task.meta.summaries:
        if getattr(spec, "role", "") in RELIABILITY_ROLES:
            continue  # shown in the reliability section
        stored = task.summaries.get(spec.name)
        table = None
        if stored is not None:
            table = frame_table(stored.reset_index(drop=True), table_id=f"summary-{slug(spec.name)}",
                                caption=f"{spec.title} (v{spec.version})", stem=f"{stem}/summary-{slug(spec.name)}")
        computed = str(stored["computed_at"].iloc[0]) if stored is not None and len(stored) and "computed_at" in stored else ""
        out.append({"spec": spec, "table": table, "computed_at": computed})
    return out


def render_submission(env: jinja2.Environment, site: Site, info: SubmissionInfo, common: dict[str, Any]) -> str:
    stem = f"downloads/submission-{info.slug}"
    rows = site.results[site.results["submission"] == info.name]
    tables: list[Table] = []

    manifest_table = None
    checkpoint_table = None
    if info.manifest is not None:
        dumped = info.manifest.submission.model_dump(mode="json")
        checkpoints = dumped.pop("checkpoints", None) or []
        pairs: list[tuple[str, Any]] = []
        flatten("", dumped, pairs)
        pairs.append(("manifest file", info.manifest.path.name))
        frame = typed_frame([{"field": k, "value": str(v)} for k, v in pairs], ["field", "value"])
        manifest_table = Table(
            "manifest", "Manifest", [Column("Field"), Column("Value")],
            [[Cell(k, k, code=True), Cell(str(v), str(v), href=str(v).strip() if is_web_url(str(v)) else None, external=True)] for k, v in pairs],
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
                                     ck_rows, typed_frame(ck_records, ["seed", "repo", "revision", "path", "local", "hub_url"]), f"{stem}/checkpoints")
    provenance_table = _provenance_table(rows, stem)

    overall = rows[rows["subset"] == "all"]
    metrics_table = tidy_rows_table(overall, table_id="metrics", caption="Every metric (subset \u201call\u201d), with its spread",
                                     stem=f"{stem}/metrics", with_task=True, with_submission=False)
    slices = rows[rows["subset"] != "all"]
    slices_table = tidy_rows_table(slices, table_id="per-seed", caption="Per-seed, per-pair and per-slice values",
                                    stem=f"{stem}/per-seed", with_task=True, with_submission=False)

    citations, statuses, artifacts = [], [], []
    store = site.store
    for task in site.tasks.values():
        main = task.meta.main_metric.name
        status, cell, row = task_status(site, task, info, main)
        statuses.append({"task": task, "status": status, "cell": cell})
        if citation.is_citable(row):
            citations.append(_score_citation(site, info, task, row))
        shown = [r for r in site.index.get((info.name, task.name), []) if r.task_version == task.meta.version]
        if not shown:
            continue
        unit_row = shown[0]
        for name in store.artifact_names(unit_row):
            frame = store.read_artifact(unit_row, name)
            table = frame_table(frame.reset_index(drop=True), table_id=f"artifact-{task.slug}-{slug(name)}",
                                caption=f"{task.name} v{task.meta.version}: {name}", stem=f"{stem}/artifact-{task.slug}-{slug(name)}",
                                max_rows=ARTIFACT_ROWS_SHOWN)
            figure = None
            for spec in task.meta.plots:
                if spec.artifact != name:
                    continue
                figure = plots.figure_for(spec, rows=task.rows, artifacts={info.name: frame}, l0=site.l0,
                                          architectures={info.name: info.architecture}, metric_ranges={},
                                          figure_id=f"{task.slug}-{slug(name)}")
                if figure.svg is None:
                    figure = None
                elif figure.data is not None:
                    site.figure_data.append((f"{stem}/plot-{figure.id}", figure.data))
                break
            artifacts.append({"table": table, "figure": figure})
            tables.append(table)
    spec_table = _spec_table(site, info, stem)
    tables += [t for t in (manifest_table, checkpoint_table, provenance_table, metrics_table, slices_table, spec_table) if t is not None]
    site.downloads += tables
    return env.get_template("submission.html").render(
        root="../", page_title=info.name, info=info, manifest_table=manifest_table, checkpoint_table=checkpoint_table,
        provenance_table=provenance_table, metrics_table=metrics_table, slices_table=slices_table, artifacts=artifacts,
        citations=citations, task_status=statuses, spec_table=spec_table, bibtex=BENCHMARK_BIBTEX, **common,
    )


def _spec_table(site: Site, info: SubmissionInfo, stem: str) -> Table | None:
    """The run spec behind each shown score: task seed, sample cap, dtype, device class and config,
    with the unit key that names it in the store."""
    records, rows = [], []
    for task in site.tasks.values():
        shown = [r for r in site.index.get((info.name, task.name), []) if r.task_version == task.meta.version]
        if not shown:
            continue
        row = shown[0]
        try:
            spec = json.loads(row.spec)
        except (TypeError, ValueError):
            spec = {}
        capped = bool(row.capped) if not pd.isna(row.capped) else False
        config = json.dumps(spec.get("config", {}), sort_keys=True)
        record = {"task": task.name, "task_version": task.meta.version, "unit_key": row.unit_key, "seed": spec.get("seed"),
                  "limit": spec.get("limit"), "capped": capped, "dtype": spec.get("dtype"),
                  "device_class": spec.get("device_class"), "batch_size": spec.get("batch_size"), "config": config,
                  "runtime_s": num_or_none(row.runtime_s), "setup_s": num_or_none(row.setup_s)}
        records.append(record)
        rows.append([
            Cell(task.name, task.name, href=f"tasks/{task.slug}.html"),
            Cell(str(spec.get("seed", "")), repr(float(spec.get("seed") or 0))),
            Cell("capped" if capped else "full run", "1" if capped else "0", badges=("capped",) if capped else (),
                 title=f"--limit {spec.get('limit')}: a preview, not comparable with full runs" if capped else None),
            Cell(str(spec.get("dtype", "")), str(spec.get("dtype", ""))),
            Cell(str(spec.get("device_class", "")), str(spec.get("device_class", ""))),
            Cell(config, config, code=True),
            Cell(format_number(record["runtime_s"]) if record["runtime_s"] is not None else "", repr(record["runtime_s"] or 0.0),
                 sub=f"setup {format_number(record['setup_s'])}" if record["setup_s"] else ""),
            Cell(row.unit_key, row.unit_key, code=True, cls="hash"),
        ])
    if not records:
        return None
    columns = [Column("Task"), Column("Seed", numeric=True, title="task seed: the task's own randomness"), Column("Run"),
               Column("dtype"), Column("Device"), Column("Config"), Column("Time (s)", numeric=True, title="task runtime; setup: preparing inputs"),
               Column("Unit")]
    frame = typed_frame(records, list(records[0]))
    return Table("run-specs", "Run specs of the shown scores", columns, rows, frame, f"{stem}/run-specs")


def _score_citation(site: Site, info: SubmissionInfo, task: TaskInfo, row: Any) -> dict[str, Any]:
    """The "Cite this score" block of one (submission, task): BibTeX and a one-line form
    (:mod:`leaderboard.citation`)."""
    authors = list(info.manifest.submission.authors) if info.manifest is not None else []
    bibtex = citation.score_bibtex(submission=info.name, title=info.title, authors=authors, local=info.local,
                                   task=task.name, task_title=task.meta.title or task.name, row=row,
                                   chance=overview.chance_of(site, task, info, row))
    return {"task": task.name, "title": task.meta.title or task.name, "text": citation.score_text(info.name, task.name, row),
            "bibtex": bibtex, "id": f"cite-{task.slug}", "local": info.local}


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
    frame = typed_frame(out_records, ["seed", "repo", "requested_revision", "resolved_revision", "path", "local", "file", "bytes", "sha256", "hub_url", "tasks"])
    return Table("provenance", "Checkpoint provenance (as recorded with the results)", columns, out_rows, frame, f"{stem}/provenance")

