"""The architecture view: for each task, its main metric against L0 and against width, one colour and
marker per architecture, one line style per library (checkpoint format), the Pareto front drawn, and
the same architecture from different libraries side by side in a table.

Everything drawn is stored: the main metric (subset "all") of each submission's shown unit, the
stored ``l0`` the overview uses, the width its manifest (or its rows) declares, and the library its
manifest names or its stored checkpoint records say were read. The Pareto front only selects stored
points (those no other point beats on both axes: lower L0 or width, and a better value in the
metric's declared direction); no number is computed. Plots are static SVG, byte-deterministic, and
each has its data as CSV and parquet beside it.
"""

from __future__ import annotations

import json
import math
from typing import Any

import jinja2
import pandas as pd

from benchmark.submission.manifest import ARCHITECTURES
from leaderboard.cells import Cell, Column, Table, direction_arrow, typed_frame
from leaderboard.cells import slug as slug_of
from leaderboard.collect import Site, SubmissionInfo, TaskInfo
from leaderboard.plots import MARKERS, PALETTE, Figure, Point, Series, format_number, xy_chart

STEM = "downloads/architectures"
#: Line styles of the libraries (checkpoint formats), in order of first appearance.
DASHES = ("", "6 3", "2 3", "9 3 2 3", "1 5")
TRAINED_HERE = "trained here"
FRONT_COLOR = "#8b93a1"


def library_of(site: Site, info: SubmissionInfo) -> str:
    """The library a submission's checkpoints come in: the manifest's declared format, else the
    format stored with its checkpoint records, ``trained here`` for recipes, else ``unknown``."""
    sub = info.manifest.submission if info.manifest is not None else None
    if sub is not None and sub.kind == "recipe":
        return TRAINED_HERE
    if sub is not None and sub.sae.format != "auto":
        return sub.sae.format
    rows = site.results[site.results["submission"] == info.name]
    for text in rows["checkpoints"].dropna():
        try:
            records = json.loads(text)
        except ValueError:
            continue
        formats = sorted({r.get("format") for r in records if isinstance(r, dict) and r.get("format")})
        if formats:
            return formats[0]
        if any(isinstance(r, dict) and r.get("source") == "trained" for r in records):
            return TRAINED_HERE
    return "unknown"


def architecture_style(architecture: str) -> tuple[str, str]:
    """One colour and one marker per architecture, fixed by the manifest schema's order."""
    order = list(ARCHITECTURES)
    index = order.index(architecture) if architecture in order else len(order)
    return PALETTE[index % len(PALETTE)], MARKERS[index % len(MARKERS)]


def subsets_of(task: TaskInfo) -> list[str]:
    """The subsets the view draws: "all" when the task stores overall values of its main metric, else
    its top-level slices (e.g. one per synthetic preset; finer slices such as per seed are left out)."""
    main = task.rows[task.rows["metric"] == task.meta.main_metric.name]
    if (main["subset"] == "all").any():
        return ["all"]
    return sorted({str(s) for s in main["subset"] if "," not in str(s)})


def points_of(site: Site, task: TaskInfo, subset: str = "all") -> pd.DataFrame:
    """One row per submission with a stored main value in ``subset``: architecture, library, L0, width,
    value and std (stored), for the plots and their downloads. L0: the task's own stored ``l0`` of the
    same subset when there is one, else (subset "all") the overview's L0."""
    main = task.meta.main_metric.name
    picked = task.rows[(task.rows["metric"] == main) & (task.rows["subset"] == subset)]
    own_l0 = task.rows[(task.rows["metric"] == "l0") & (task.rows["subset"] == subset)]
    records = []
    for row in picked.itertuples(index=False):
        info = site.submissions.get(row.submission)
        if info is None or pd.isna(row.value):
            continue
        l0_rows = own_l0[(own_l0["submission"] == row.submission) & own_l0["value"].notna()]
        if len(l0_rows):
            l0 = float(l0_rows["value"].iloc[0])
        else:
            stored = site.l0.get(row.submission) if subset == "all" else None
            l0 = stored[0] if stored else None
        records.append({
            "submission": row.submission, "subset": subset, "architecture": info.architecture or "unknown",
            "library": library_of(site, info), "l0": l0, "width": info.width,
            main: float(row.value), f"{main}_std": None if pd.isna(row.std) else float(row.std),
            "run_id": row.run_id,
        })
    columns = ["submission", "subset", "architecture", "library", "l0", "width", main, f"{main}_std", "run_id"]
    return pd.DataFrame(records, columns=columns).sort_values(["architecture", "library", "submission"], kind="stable")


def pareto(points: list[tuple[float, float, str]], direction: str) -> set[str]:
    """Names of the points no other point beats: a smaller-or-equal x and a better-or-equal value
    (in ``direction``), one of them strictly. Empty when the metric has no direction."""
    if direction not in ("higher", "lower"):
        return set()
    sign = 1.0 if direction == "higher" else -1.0
    front = set()
    for x, y, name in points:
        beaten = any(ox <= x and sign * oy >= sign * y and (ox < x or sign * oy > sign * y) for ox, oy, _ in points)
        if not beaten:
            front.add(name)
    return front


def architecture_figure(data: pd.DataFrame, *, task: TaskInfo, x: str, figure_id: str, subset: str = "all") -> Figure:
    """``task``'s main metric against ``x`` ("l0" or "width"), a series per (architecture, library),
    and the Pareto front as a grey staircase."""
    meta = task.meta
    main = meta.main_metric
    x_label = "L0 (active latents per token, stored)" if x == "l0" else "width (latents, log\u2082 scale)"
    title = f"{main.name} vs {'L0' if x == 'l0' else 'width'}, by architecture and library"
    if subset != "all":
        title += f" ({subset})"
    usable = data.dropna(subset=[x]).copy()
    if usable.empty:
        what = "a stored L0 (metric 'l0', subset all)" if x == "l0" else "a declared width"
        return Figure(figure_id, title, None, note=f"Plot omitted: no submission has both {main.name} and {what}.")
    usable["x"] = usable[x].astype(float) if x == "l0" else usable[x].astype(float).map(math.log2)
    front = pareto([(r["x"], r[main.name], r["submission"]) for r in usable.to_dict("records")], main.direction)
    usable["pareto"] = usable["submission"].isin(front)
    libraries = list(dict.fromkeys(sorted(usable["library"])))
    series = []
    for (arch, library), group in usable.groupby(["architecture", "library"], sort=True):
        color, marker = architecture_style(str(arch))
        dash = DASHES[libraries.index(library) % len(DASHES)]
        points = [Point(r["x"], r[main.name], label=_label(r, main.name, x), y_err=r[f"{main.name}_std"])
                  for r in group.to_dict("records")]
        series.append(Series(f"{arch} \u00b7 {library}", points, connect=True, color=color, marker=marker, dash=dash or None))
    if front:
        on_front = usable[usable["pareto"]].sort_values("x", kind="stable")
        series.append(Series("Pareto front", [Point(r["x"], r[main.name], label=f"{r['submission']}: on the Pareto front")
                                              for r in on_front.to_dict("records")],
                             step=len(on_front) > 1, color=FRONT_COLOR, marker="ring", dash="4 3"))
    svg = xy_chart(series, x_label=x_label, y_label=f"{main.name} ({direction_arrow(main.direction)})", y_range=main.range,
                   legend_title="architecture \u00b7 library")
    note = ("Colour and marker: architecture; line style: library (checkpoint format). Error bars: stored std. "
            "Grey staircase: the Pareto front (no other submission has a lower "
            f"{'L0' if x == 'l0' else 'width'} and a better {main.name})." if front else
            "Colour and marker: architecture; line style: library (checkpoint format). Error bars: stored std. "
            "This metric has no direction, so no Pareto front is drawn.")
    data_out = usable.drop(columns=["x"]).reset_index(drop=True)
    return Figure(figure_id, title, svg, note=note, data=data_out)


def _label(record: dict[str, Any], metric: str, x: str) -> str:
    where = f"L0 {format_number(record['l0'])}" if x == "l0" else f"width {int(record['width'])}"
    return f"{record['submission']} ({record['architecture']}, {record['library']}): {where}, {metric} {format_number(record[metric])}"


def side_by_side(data: pd.DataFrame, task: TaskInfo, subset: str = "all") -> Table:
    """Architecture × library: each cell lists the submissions of that pair with their stored value."""
    main = task.meta.main_metric.name
    suffix = "" if subset == "all" else f" ({subset})"
    slug = task.slug if subset == "all" else f"{task.slug}-{slug_of(subset)}"
    libraries = sorted(set(data["library"]))
    columns = [Column("Architecture")] + [Column(lib, title=f"checkpoints in the {lib} format") for lib in libraries]
    rows, records = [], []
    for arch in sorted(set(data["architecture"]), key=lambda a: (list(ARCHITECTURES) + [a]).index(a)):
        cells = [Cell(arch, arch)]
        for lib in libraries:
            group = data[(data["architecture"] == arch) & (data["library"] == lib)]
            parts = []
            for r in group.to_dict("records"):
                std = r[f"{main}_std"]
                parts.append(f"{r['submission']}: {format_number(r[main])}" + (f" \u00b1 {format_number(std)}" if std is not None and not pd.isna(std) else ""))
                records.append({"subset": subset, "architecture": arch, "library": lib, "submission": r["submission"],
                                main: r[main], f"{main}_std": None if std is None or pd.isna(std) else float(std)})
            cells.append(Cell(f"{len(parts)} submission{'s' if len(parts) != 1 else ''}" if parts else "", "",
                              sub="; ".join(parts)))
        rows.append(cells)
    frame = typed_frame(records, ["subset", "architecture", "library", "submission", main, f"{main}_std"])
    return Table(f"arch-{slug}", f"{task.meta.title or task.name}: {main} by architecture and library{suffix}", columns,
                 rows, frame, f"{STEM}/{slug}-by-library", cls="arch-table")


def render_architectures(env: jinja2.Environment, site: Site, common: dict[str, Any]) -> str:
    """The page ``architectures.html``: per task, the two plots and the side-by-side table."""
    sections = []
    for task in site.tasks.values():
        parts = []
        for subset in subsets_of(task):
            data = points_of(site, task, subset)
            if not len(data):
                continue
            stem = task.slug if subset == "all" else f"{task.slug}-{slug_of(subset)}"
            figures = [architecture_figure(data, task=task, x=x, figure_id=f"{stem}-vs-{x}", subset=subset)
                       for x in ("l0", "width")]
            for figure in figures:
                if figure.data is not None:
                    site.figure_data.append((f"{STEM}/plot-{figure.id}", figure.data))
            table = side_by_side(data, task, subset)
            site.downloads.append(table)
            parts.append({"subset": subset, "figures": figures, "table": table})
        sections.append({"task": task, "parts": parts})
    return env.get_template("architectures.html").render(root="", page_title="Architectures", sections=sections,
                                                         figure_stem=STEM, **common)


__all__ = ["architecture_figure", "library_of", "pareto", "points_of", "render_architectures", "side_by_side"]
