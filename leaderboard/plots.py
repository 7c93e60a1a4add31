"""Static SVG plots drawn at build time, one builder per plot kind that tasks declare in their metadata
(:class:`tasks.base.PlotSpec`); no task or metric name is written here.

Plots are hand-written SVG rather than matplotlib: the output is a small, byte-deterministic string
(no renderer version, font cache or timestamp leaks into it), it is inlined into the page so it works
offline and from ``file://``, every point carries a ``<title>`` tooltip, and no plotting dependency
is needed. Every piece of text that reaches the SVG passes through :func:`_esc`.

A plot only draws stored values (rows of the results store and task artifacts); it never computes a
metric. A plot whose data is absent is replaced by a note saying what is missing.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import pandas as pd

# Okabe-Ito colours (colour-blind safe), paired with marker shapes so series differ without colour.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#8C6D31")
MARKERS = ("circle", "square", "triangle", "diamond")


@dataclass
class Point:
    x: float
    y: float
    label: str = ""  # tooltip text
    x_err: float | None = None  # half-width of the error bar (a stored std), or None
    y_err: float | None = None

    def __post_init__(self) -> None:
        # frames turn missing spreads into NaN or pd.NA; a bar is drawn only for a finite spread
        self.x_err = _value(self.x_err) or None
        self.y_err = _value(self.y_err) or None


@dataclass
class Series:
    name: str
    points: list[Point] = field(default_factory=list)
    connect: bool = False  # draw a line through the points in x order
    step: bool = False  # draw as a histogram step line (points are bin edges)
    # Optional styling; by default each series takes the next palette colour and marker.
    color: str | None = None
    marker: str | None = None
    dash: str | None = None  # an SVG stroke-dasharray for its line, e.g. "6 3"
    markers: bool = True  # False: only the line (e.g. a front drawn over other series' points)


@dataclass
class Figure:
    """One plot for a page: its SVG (None when omitted), a note, and the data it drew."""

    id: str
    title: str
    svg: str | None
    note: str = ""
    data: pd.DataFrame | None = None


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: float) -> str:
    """Coordinates with two decimals: enough for screens and stable across platforms."""
    out = f"{value:.2f}"
    return "0.00" if out == "-0.00" else out


def format_number(value: float | None) -> str:
    """The one number format of the site (tables and tick labels)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    value = float(value)
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6 or magnitude < 1e-3:
        return f"{value:.3g}"
    if magnitude >= 1000:
        return f"{value:.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 10:
        return f"{value:.2f}"
    return f"{value:.3f}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick positions covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high <= low:
        pad = abs(low) * 0.1 or 0.5
        low, high = low - pad, high + pad
    raw_step = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw_step))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw_step)
    start = math.floor(low / step) * step
    ticks = [round(start, 12)]
    while ticks[-1] < high - step * 1e-9 or len(ticks) < 2:
        ticks.append(round(start + step * len(ticks), 12))
        if len(ticks) > 50:  # pragma: no cover - guard against float surprises
            break
    return ticks


def _tick_label(value: float, step: float) -> str:
    step_text = f"{step:.6f}".rstrip("0").rstrip(".")
    decimals = len(step_text.split(".")[1]) if "." in step_text else 0
    out = f"{value:.{decimals}f}"
    return "0" if float(out) == 0 else out


def _marker(shape: str, x: float, y: float, color: str, title: str) -> str:
    tip = f"<title>{_esc(title)}</title>" if title else ""
    if shape == "ring":
        return f'<circle cx="{_num(x)}" cy="{_num(y)}" r="8" fill="none" stroke="{color}" stroke-width="1.5">{tip}</circle>'
    if shape == "square":
        return f'<rect x="{_num(x - 4)}" y="{_num(y - 4)}" width="8" height="8" fill="{color}">{tip}</rect>'
    if shape == "triangle":
        pts = f"{_num(x)},{_num(y - 5)} {_num(x - 5)},{_num(y + 4)} {_num(x + 5)},{_num(y + 4)}"
        return f'<polygon points="{pts}" fill="{color}">{tip}</polygon>'
    if shape == "diamond":
        pts = f"{_num(x)},{_num(y - 5)} {_num(x - 5)},{_num(y)} {_num(x)},{_num(y + 5)} {_num(x + 5)},{_num(y)}"
        return f'<polygon points="{pts}" fill="{color}">{tip}</polygon>'
    return f'<circle cx="{_num(x)}" cy="{_num(y)}" r="4.5" fill="{color}">{tip}</circle>'


def xy_chart(
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    x_range: tuple[float | None, float | None] = (None, None),
    y_range: tuple[float | None, float | None] = (None, None),
    diagonal: bool = False,
    legend_title: str = "",
    width: int = 720,
    height: int = 380,
) -> str:
    """An SVG scatter/line chart with one colour and marker per series, error bars from stored
    spreads and a legend. Ranges fall back to the data (with the metric's declared range
    clipping the axis where given)."""
    xs = [v for s in series for p in s.points for v in (p.x - (p.x_err or 0), p.x + (p.x_err or 0))]
    ys = [v for s in series for p in s.points for v in (p.y - (p.y_err or 0), p.y + (p.y_err or 0))]
    x_lo, x_hi = _span(xs, x_range)
    y_lo, y_hi = _span(ys, y_range)
    if diagonal:
        x_lo = y_lo = min(x_lo, y_lo)
        x_hi = y_hi = max(x_hi, y_hi)
    x_ticks, y_ticks = nice_ticks(x_lo, x_hi), nice_ticks(y_lo, y_hi)
    x_lo, x_hi = min(x_ticks[0], x_lo), max(x_ticks[-1], x_hi)
    y_lo, y_hi = min(y_ticks[0], y_lo), max(y_ticks[-1], y_hi)

    legend_w = 190
    left, right, top, bottom = 64, legend_w + 16, 16, 52
    legend_h = 28 + 18 * len(series)
    height = max(height, legend_h + top + 8)
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * plot_w

    def sy(v: float) -> float:
        return top + plot_h - (v - y_lo) / (y_hi - y_lo) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_esc(y_label)} against {_esc(x_label)}">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="plot-bg"/>',
    ]
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    for t in x_ticks:
        if x_lo <= t <= x_hi:
            parts.append(f'<line x1="{_num(sx(t))}" y1="{top}" x2="{_num(sx(t))}" y2="{top + plot_h}" class="grid"/>')
            parts.append(f'<text x="{_num(sx(t))}" y="{top + plot_h + 16}" class="tick" text-anchor="middle">{_esc(_tick_label(t, x_step))}</text>')
    for t in y_ticks:
        if y_lo <= t <= y_hi:
            parts.append(f'<line x1="{left}" y1="{_num(sy(t))}" x2="{left + plot_w}" y2="{_num(sy(t))}" class="grid"/>')
            parts.append(f'<text x="{left - 6}" y="{_num(sy(t) + 4)}" class="tick" text-anchor="end">{_esc(_tick_label(t, y_step))}</text>')
    parts.append(f'<text x="{_num(left + plot_w / 2)}" y="{height - 12}" class="axis-label" text-anchor="middle">{_esc(x_label)}</text>')
    parts.append(
        f'<text x="16" y="{_num(top + plot_h / 2)}" class="axis-label" text-anchor="middle" '
        f'transform="rotate(-90 16 {_num(top + plot_h / 2)})">{_esc(y_label)}</text>'
    )
    if diagonal:
        parts.append(f'<line x1="{_num(sx(x_lo))}" y1="{_num(sy(y_lo))}" x2="{_num(sx(x_hi))}" y2="{_num(sy(y_hi))}" class="diagonal"/>')

    for index, s in enumerate(series):
        color, shape = _style(s, index)
        dash = f' stroke-dasharray="{_esc(s.dash)}"' if s.dash else ""
        points = sorted(s.points, key=lambda p: (p.x, p.y)) if (s.connect or s.step) else s.points
        if s.step and points:
            path = [f"M{_num(sx(points[0].x))},{_num(sy(points[0].y))}"]
            for prev, cur in zip(points, points[1:]):
                path.append(f"H{_num(sx(cur.x))}V{_num(sy(cur.y))}")
            parts.append(f'<path d="{"".join(path)}" fill="none" stroke="{color}" stroke-width="2"{dash}><title>{_esc(s.name)}</title></path>')
            continue
        if s.connect and len(points) > 1:
            coords = " ".join(f"{_num(sx(p.x))},{_num(sy(p.y))}" for p in points)
            parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5"{dash}/>')
        if not s.markers:
            continue
        for p in points:
            if p.y_err:
                parts.append(f'<line x1="{_num(sx(p.x))}" y1="{_num(sy(p.y - p.y_err))}" x2="{_num(sx(p.x))}" y2="{_num(sy(p.y + p.y_err))}" stroke="{color}" class="errbar"/>')
            if p.x_err:
                parts.append(f'<line x1="{_num(sx(p.x - p.x_err))}" y1="{_num(sy(p.y))}" x2="{_num(sx(p.x + p.x_err))}" y2="{_num(sy(p.y))}" stroke="{color}" class="errbar"/>')
            parts.append(_marker(shape, sx(p.x), sy(p.y), color, p.label))

    lx = width - legend_w
    if legend_title:
        parts.append(f'<text x="{lx}" y="{top + 10}" class="legend-title">{_esc(legend_title)}</text>')
    for index, s in enumerate(series):
        color, shape = _style(s, index)
        dash = f' stroke-dasharray="{_esc(s.dash)}"' if s.dash else ""
        y = top + 30 + 18 * index
        if s.step or not s.markers:
            parts.append(f'<line x1="{lx}" y1="{y}" x2="{lx + 12}" y2="{y}" stroke="{color}" stroke-width="2"{dash}/>')
        else:
            if s.connect:
                parts.append(f'<line x1="{lx - 6}" y1="{y}" x2="{lx + 18}" y2="{y}" stroke="{color}" stroke-width="1.5"{dash}/>')
            parts.append(_marker(shape, lx + 6, y, color, ""))
        parts.append(f'<text x="{lx + 18}" y="{y + 4}" class="legend">{_esc(_shorten(s.name, 26))}<title>{_esc(s.name)}</title></text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _style(s: Series, index: int) -> tuple[str, str]:
    """The series' own colour and marker, or the next of the palette's."""
    color = s.color or PALETTE[index % len(PALETTE)]
    shape = s.marker or MARKERS[(index // len(PALETTE) + index) % len(MARKERS)]
    return color, shape


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _span(values: Iterable[float], declared: tuple[float | None, float | None]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    lo = min(finite) if finite else 0.0
    hi = max(finite) if finite else 1.0
    dlo, dhi = declared
    # Keep declared bounds when the data sit within them and fill a good part of the range.
    if dlo is not None and dhi is not None and dlo <= lo and hi <= dhi and (hi - lo) > 0.3 * (dhi - dlo):
        return float(dlo), float(dhi)
    if dlo is not None:
        lo = max(lo, float(dlo)) if lo >= dlo else lo
    if dhi is not None:
        hi = min(hi, float(dhi)) if hi <= dhi else hi
    if hi <= lo:
        pad = abs(lo) * 0.1 or 0.5
        lo, hi = lo - pad, hi + pad
    else:
        pad = (hi - lo) * 0.06
        lo, hi = lo - pad, hi + pad
        if dlo is not None and lo < dlo <= lo + pad:
            lo = float(dlo)
        if dhi is not None and hi > dhi >= hi - pad:
            hi = float(dhi)
    return lo, hi


# ---------------------------------------------------------------------------------------------
# The figures of the task pages. Each takes stored rows/artifacts and returns a Figure whose
# ``data`` is exactly what was drawn (offered as a download beside the plot).
# ---------------------------------------------------------------------------------------------


def _value(v) -> float | None:
    if v is None or v is pd.NA:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def metric_vs_l0(
    rows: pd.DataFrame,
    *,
    metric: str,
    metric_range: tuple[float | None, float | None],
    l0: dict[str, tuple[float, float | None, str]],
    architectures: dict[str, str],
    figure_id: str,
    title: str | None = None,
) -> Figure:
    """``metric`` (subset "all") against the submission's L0, one series per architecture.

    ``rows``: the task's shown rows. ``l0``: submission → (L0, its std or None, task it came from).
    ``architectures``: submission → architecture."""
    title = title or f"{metric} vs L0, by architecture"
    picked = rows[(rows["metric"] == metric) & (rows["subset"] == "all")]
    records = []
    for row in picked.itertuples(index=False):
        value = _value(row.value)
        if value is None or row.submission not in l0:
            continue
        l0_value, l0_std, l0_task = l0[row.submission]
        records.append({"submission": row.submission, "architecture": architectures.get(row.submission) or "unknown",
                        "l0": l0_value, "l0_std": l0_std, "l0_task": l0_task, metric: value, f"{metric}_std": _value(row.std)})
    if not records:
        if len(picked):
            missing = "no submission has both a stored L0 (metric 'l0', subset all) and a value of this metric"
        elif (rows["metric"] == metric).any():
            missing = "this metric is stored per slice only (no subset \u201call\u201d), so there is no single value to place against L0"
        else:
            missing = "no stored values of this metric yet"
        return Figure(figure_id, title, None, note=f"Plot omitted: {missing}.")
    data = pd.DataFrame(records).sort_values(["architecture", "submission"], kind="stable").reset_index(drop=True)
    series = []
    for arch, group in data.groupby("architecture", sort=True):
        points = [
            Point(x=r["l0"], y=r[metric], x_err=r["l0_std"], y_err=r[f"{metric}_std"],
                  label=f"{r['submission']} ({arch}): L0 {format_number(r['l0'])}, {metric} {format_number(r[metric])}")
            for r in group.to_dict("records")
        ]
        series.append(Series(str(arch), points))
    svg = xy_chart(series, x_label="L0 (active latents per token)", y_label=metric, y_range=metric_range, legend_title="architecture")
    return Figure(figure_id, title, svg, note="Error bars: stored std. L0 from the metric 'l0' (subset all).", data=data)


def metric_pair(
    rows: pd.DataFrame,
    *,
    x_metric: str,
    y_metric: str,
    subset_prefix: str,
    figure_id: str,
    title: str,
    diagonal: bool = False,
    x_range: tuple[float | None, float | None] = (None, None),
    y_range: tuple[float | None, float | None] = (None, None),
    note: str = "",
) -> Figure:
    """``y_metric`` against ``x_metric`` for each (submission, slice) whose subset starts with
    ``subset_prefix``, one series per slice (e.g. per preset); ``diagonal`` draws y = x."""
    pick = rows[rows["metric"].isin([x_metric, y_metric]) & rows["subset"].astype(str).str.startswith(subset_prefix)]
    pick = pick[~pick["subset"].astype(str).str.contains(",")]  # slices of slices (e.g. per seed) are not points here
    records = []
    for (submission, subset), group in pick.groupby(["submission", "subset"], sort=True):
        point = _xy_point(group, x_metric, y_metric)
        if point is not None:
            records.append({"submission": submission, "slice": subset[len(subset_prefix):], **point})
    if not records:
        return Figure(figure_id, title, None, note=f"Plot omitted: no (submission, slice) has both {y_metric} and {x_metric} stored.")
    data = pd.DataFrame(records)
    series = []
    for name, group in data.groupby("slice", sort=True):
        points = [
            Point(x=r[x_metric], y=r[y_metric], x_err=r[f"{x_metric}_std"], y_err=r[f"{y_metric}_std"],
                  label=f"{r['submission']} on {name}: {x_metric} {format_number(r[x_metric])}, {y_metric} {format_number(r[y_metric])}")
            for r in group.to_dict("records")
        ]
        series.append(Series(str(name), points))
    svg = xy_chart(series, x_label=x_metric, y_label=y_metric, x_range=x_range, y_range=y_range, diagonal=diagonal,
                   legend_title=subset_prefix.rstrip("=") or "slice")
    return Figure(figure_id, title, svg, note=note, data=data)


def pareto_front(points: Sequence[tuple[float, float]], better: tuple[str, str]) -> list[int]:
    """Indices of the points no other point beats on both axes (at least as good on both, strictly
    better on one), sorted by x. ``better``: ("lower" | "higher") for x, then for y."""
    sign = [1.0 if b == "higher" else -1.0 for b in better]
    scored = [(sign[0] * x, sign[1] * y) for x, y in points]
    front = [i for i, (a, b) in enumerate(scored)
             if not any(c >= a and d >= b and (c > a or d > b) for c, d in scored)]
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


def metric_scatter(
    rows: pd.DataFrame,
    *,
    x_metric: str,
    y_metric: str,
    architectures: dict[str, str],
    figure_id: str,
    title: str,
    front: tuple[str, str] | None = None,
    x_label: str = "",
    y_label: str = "",
    x_range: tuple[float | None, float | None] = (None, None),
    y_range: tuple[float | None, float | None] = (None, None),
    note: str = "",
) -> Figure:
    """``y_metric`` against ``x_metric`` (subset "all"), one point per submission, one series per
    architecture; with ``front`` the Pareto front is drawn as a line (:func:`pareto_front`)."""
    pick = rows[rows["metric"].isin([x_metric, y_metric]) & (rows["subset"].astype(str) == "all")]
    records = []
    for submission, group in pick.groupby("submission", sort=True):
        point = _xy_point(group, x_metric, y_metric)
        if point is not None:
            records.append({"submission": submission, "architecture": architectures.get(submission) or "unknown",
                            **point})
    if not records:
        return Figure(figure_id, title, None, note=f"Plot omitted: no submission has both {y_metric} and {x_metric} "
                                                   "stored (subset \u201call\u201d).")
    data = pd.DataFrame(records).sort_values(["architecture", "submission"], kind="stable").reset_index(drop=True)
    data["on_front"] = False
    series = []
    for arch, group in data.groupby("architecture", sort=True):
        points = [
            Point(x=r[x_metric], y=r[y_metric], x_err=r[f"{x_metric}_std"], y_err=r[f"{y_metric}_std"],
                  label=f"{r['submission']} ({arch}): {x_metric} {format_number(r[x_metric])}, "
                        f"{y_metric} {format_number(r[y_metric])}")
            for r in group.to_dict("records")
        ]
        series.append(Series(str(arch), points))
    if front is not None:
        on = pareto_front(list(zip(data[x_metric], data[y_metric])), front)
        data.loc[on, "on_front"] = True
        series.append(Series("Pareto front", [Point(float(data.loc[i, x_metric]), float(data.loc[i, y_metric])) for i in on],
                             connect=True, markers=False))
    svg = xy_chart(series, x_label=x_label or x_metric, y_label=y_label or y_metric, x_range=x_range, y_range=y_range,
                   legend_title="architecture")
    return Figure(figure_id, title, svg, note=note, data=data)


def _check_columns(frame: pd.DataFrame, needed: Sequence[str]) -> list[str]:
    return [c for c in needed if c and c not in frame.columns]


def artifact_histogram(artifacts: dict[str, pd.DataFrame], *, artifact: str, x_low: str, x_high: str, y: str,
                       figure_id: str, title: str, x_label: str = "", y_label: str = "",
                       x_range: tuple[float | None, float | None] = (None, None),
                       y_range: tuple[float | None, float | None] = (0.0, None), note: str = "") -> Figure:
    """Overlaid step histograms of an artifact's bin counts, one line per submission; heights are
    each bin's share of that submission's total so that widths compare."""
    series, records, problems = [], [], []
    for submission, frame in sorted(artifacts.items()):
        missing = _check_columns(frame, (x_low, x_high, y))
        if missing:
            problems.append(f"{submission}'s {artifact} lacks column(s) {', '.join(missing)}")
            continue
        bins = frame.sort_values(x_low, kind="stable")
        total = float(pd.to_numeric(bins[y]).sum())
        if total <= 0 or len(bins) == 0:
            problems.append(f"{submission}'s {artifact} is empty")
            continue
        points = []
        for low, high, count in zip(bins[x_low], bins[x_high], bins[y]):
            share = float(count) / total
            points.append(Point(float(low), share))
            records.append({"submission": submission, x_low: float(low), x_high: float(high), y: float(count), "share": share})
        points.append(Point(float(bins[x_high].iloc[-1]), points[-1].y))
        series.append(Series(submission, points, step=True))
    problem_text = "; ".join(problems)
    if not series:
        return Figure(figure_id, title, None, note=f"Plot omitted: no submission has a '{artifact}' artifact yet."
                      + (f" ({problem_text})" if problem_text else ""))
    svg = xy_chart(series, x_label=x_label or x_low, y_label=y_label or "share", x_range=x_range, y_range=y_range,
                   legend_title="submission")
    return Figure(figure_id, title, svg, note=(note + " " + problem_text).strip(), data=pd.DataFrame(records))


def artifact_curve(artifacts: dict[str, pd.DataFrame], *, artifact: str, y: str, figure_id: str, title: str,
                   x: str | None = None, x_low: str | None = None, x_high: str | None = None, n: str | None = None,
                   x_label: str = "", y_label: str = "", x_range: tuple[float | None, float | None] = (None, None),
                   y_range: tuple[float | None, float | None] = (None, None), note: str = "") -> Figure:
    """An artifact's ``y`` at ``x`` (or at bin centres of ``x_low``/``x_high``), one line per
    submission; rows whose ``n`` is 0 are left out."""
    series, records, problems = [], [], []
    needed = (y, n) + ((x,) if x else (x_low, x_high))
    for submission, frame in sorted(artifacts.items()):
        missing = _check_columns(frame, needed)
        if missing:
            problems.append(f"{submission}'s {artifact} lacks column(s) {', '.join(missing)}")
            continue
        points = []
        ordered = frame.sort_values(x or x_low, kind="stable")
        for record in ordered.to_dict("records"):
            value = _value(record[y])
            if value is None or (n and not _value(record[n])):
                continue
            at = float(record[x]) if x else (float(record[x_low]) + float(record[x_high])) / 2
            label = f"{submission}: {x or 'bin'} {format_number(at)}, {y} {format_number(value)}" + (f" (n={int(record[n])})" if n else "")
            points.append(Point(at, value, label=label))
            records.append({"submission": submission, "x": at, y: value, **({n: int(record[n])} if n else {})})
        if points:
            series.append(Series(submission, points, connect=True))
    problem_text = "; ".join(problems)
    if not series:
        return Figure(figure_id, title, None, note=f"Plot omitted: no submission has a '{artifact}' artifact with data yet."
                      + (f" ({problem_text})" if problem_text else ""))
    svg = xy_chart(series, x_label=x_label or (x or x_low), y_label=y_label or y, x_range=x_range, y_range=y_range,
                   legend_title="submission")
    return Figure(figure_id, title, svg, note=(note + " " + problem_text).strip(), data=pd.DataFrame(records))


def pair_matrix(pairs: pd.DataFrame, *, names: Sequence[str], figure_id: str, title: str, mdd: float | None = None,
                note: str = "") -> Figure:
    """The stored pair matrix of one measure (a ``reliability_pairs`` summary's rows) as a grid:
    one row and column per submission (``names``, in that order); a cell is filled when the two
    differ beyond noise (the stored Holm-adjusted test), hatched-light when they do not, and shows
    the stored difference row − column. Nothing is computed here: colours and texts are stored values."""
    if pairs is None or len(pairs) == 0 or len(names) < 2:
        return Figure(figure_id, title, None, note="Plot omitted: no pair of submissions was tested (run canonbench reliability).")
    lookup: dict[tuple[str, str], dict] = {}
    for record in pairs.to_dict("records"):
        lookup[(record["a"], record["b"])] = record
        lookup[(record["b"], record["a"])] = {**record, "diff": -float(record["diff"]), "a": record["b"], "b": record["a"]}
    cell, label_w, top_h = 64, 200, 120
    n = len(names)
    width, height = max(label_w + n * cell + 16, label_w + 280), top_h + n * cell + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart pair-matrix" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="{_esc(title)}">']
    for j, name in enumerate(names):
        x = label_w + j * cell + cell / 2
        parts.append(f'<text x="{_num(x)}" y="{top_h - 8}" class="tick" text-anchor="start" '
                     f'transform="rotate(-40 {_num(x)} {top_h - 8})">{_esc(_shorten(name, 28))}<title>{_esc(name)}</title></text>')
    for i, row_name in enumerate(names):
        y = top_h + i * cell
        parts.append(f'<text x="{label_w - 8}" y="{_num(y + cell / 2 + 4)}" class="tick" text-anchor="end">'
                     f'{_esc(_shorten(row_name, 28))}<title>{_esc(row_name)}</title></text>')
        for j, col_name in enumerate(names):
            x = label_w + j * cell
            if i == j:
                parts.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" class="pm-self"/>')
                continue
            record = lookup.get((row_name, col_name))
            if record is None:
                parts.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" class="pm-missing"><title>'
                             f'{_esc(row_name)} vs {_esc(col_name)}: not tested</title></rect>')
                continue
            differs = bool(record["differs"])
            tip = (f"{row_name} − {col_name} = {format_number(float(record['diff']))}; Welch t on {record['evidence']}, "
                   f"Holm-adjusted p = {format_number(float(record['p_holm']))}: "
                   f"{'differ beyond noise' if differs else 'within noise'} (α = {format_number(float(record['alpha']))})")
            parts.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" class="{"pm-differ" if differs else "pm-same"}">'
                         f'<title>{_esc(tip)}</title></rect>')
            parts.append(f'<text x="{_num(x + cell / 2)}" y="{_num(y + cell / 2 + 4)}" class="pm-text{" pm-text-on" if differs else ""}" '
                         f'text-anchor="middle">{_esc(format_number(float(record["diff"])))}</text>')
    legend_y = top_h + n * cell + 24
    parts.append(f'<rect x="{label_w}" y="{legend_y - 10}" width="12" height="12" class="pm-differ"/>')
    parts.append(f'<text x="{label_w + 18}" y="{legend_y}" class="legend">differ beyond noise</text>')
    parts.append(f'<rect x="{label_w + 150}" y="{legend_y - 10}" width="12" height="12" class="pm-same"/>')
    parts.append(f'<text x="{label_w + 168}" y="{legend_y}" class="legend">within noise</text>')
    parts.append("</svg>")
    data = pairs.reset_index(drop=True)
    text = "Cell: stored difference row − column; filled: the Holm-adjusted Welch test says they differ."
    if mdd is not None:
        text += f" Two single shown scores need a difference above {format_number(mdd)} (the stored MDD)."
    return Figure(figure_id, title, "\n".join(parts), note=(text + " " + note).strip(), data=data)


def _xy_point(group: pd.DataFrame, x_metric: str, y_metric: str) -> dict[str, float | None] | None:
    """The stored (x, y) values and stds of one group of rows, or None if either value is missing."""
    by_metric = {r.metric: r for r in group.itertuples(index=False)}
    if x_metric not in by_metric or y_metric not in by_metric:
        return None
    x, y = _value(by_metric[x_metric].value), _value(by_metric[y_metric].value)
    if x is None or y is None:
        return None
    return {x_metric: x, f"{x_metric}_std": _value(by_metric[x_metric].std),
            y_metric: y, f"{y_metric}_std": _value(by_metric[y_metric].std)}


def metric_vs_slice(rows: pd.DataFrame, *, metric: str, subset_prefix: str, architectures: dict[str, str],
                    figure_id: str, title: str, log2_x: bool = False, x_label: str = "", y_label: str = "",
                    y_range: tuple[float | None, float | None] = (None, None), note: str = "") -> Figure:
    """``metric`` against the number each of its subsets ``<subset_prefix><number>`` carries (e.g. a
    width), one line per submission (legend: architecture and submission); ``log2_x`` plots log2 of it."""
    pick = rows[(rows["metric"] == metric) & rows["subset"].astype(str).str.startswith(subset_prefix)]
    records = []
    for row in pick.itertuples(index=False):
        text = str(row.subset)[len(subset_prefix):]
        value = _value(row.value)
        try:
            at = float(text)
        except ValueError:
            continue  # a slice of a slice ("width=512,seed=0") or a non-numeric slice is not a point here
        if value is None or not math.isfinite(at) or (log2_x and at <= 0):
            continue
        records.append({"submission": row.submission, "architecture": architectures.get(row.submission) or "unknown",
                        subset_prefix.rstrip("=") or "slice": at, "x": math.log2(at) if log2_x else at,
                        metric: value, f"{metric}_std": _value(row.std)})
    if not records:
        return Figure(figure_id, title, None, note=f"Plot omitted: no stored {metric} values in slices {subset_prefix}<number>.")
    data = pd.DataFrame(records).sort_values(["architecture", "submission", "x"], kind="stable").reset_index(drop=True)
    slice_name = subset_prefix.rstrip("=") or "slice"
    series = []
    for (arch, submission), group in data.groupby(["architecture", "submission"], sort=True):
        points = [Point(x=r["x"], y=r[metric], y_err=r[f"{metric}_std"],
                        label=f"{submission} ({arch}): {slice_name} {format_number(r[slice_name])}, {metric} {format_number(r[metric])}")
                  for r in group.to_dict("records")]
        series.append(Series(f"{arch}: {submission}", points, connect=True))
    default_x = f"log2 {slice_name}" if log2_x else slice_name
    svg = xy_chart(series, x_label=x_label or default_x, y_label=y_label or metric, y_range=y_range,
                   legend_title="architecture: submission")
    return Figure(figure_id, title, svg, note=note, data=data)


def figure_for(spec, *, rows: pd.DataFrame, artifacts: dict[str, pd.DataFrame], l0: dict[str, tuple[float, float | None, str]],
               architectures: dict[str, str], metric_ranges: dict[str, tuple[float | None, float | None]],
               figure_id: str | None = None) -> Figure:
    """The figure a task's :class:`~tasks.base.PlotSpec` asks for, from stored rows and artifacts
    (``artifacts``: submission → the artifact the spec names)."""
    fid = figure_id or spec.id
    if spec.kind == "metric_vs_l0":
        return metric_vs_l0(rows, metric=spec.metric, metric_range=metric_ranges.get(spec.metric, (None, None)), l0=l0,
                            architectures=architectures, figure_id=fid, title=spec.title)
    if spec.kind == "metric_pair":
        return metric_pair(rows, x_metric=spec.x_metric, y_metric=spec.y_metric, subset_prefix=spec.subset_prefix or "",
                           figure_id=fid, title=spec.title, diagonal=spec.diagonal, x_range=spec.x_range,
                           y_range=spec.y_range, note=spec.note)
    if spec.kind == "metric_scatter":
        return metric_scatter(rows, x_metric=spec.x_metric, y_metric=spec.y_metric, architectures=architectures,
                              figure_id=fid, title=spec.title, front=spec.front, x_label=spec.x_label,
                              y_label=spec.y_label, x_range=spec.x_range, y_range=spec.y_range, note=spec.note)
    if spec.kind == "artifact_histogram":
        return artifact_histogram(artifacts, artifact=spec.artifact, x_low=spec.x_low, x_high=spec.x_high, y=spec.y,
                                  figure_id=fid, title=spec.title, x_label=spec.x_label, y_label=spec.y_label,
                                  x_range=spec.x_range, y_range=spec.y_range, note=spec.note)
    if spec.kind == "artifact_curve":
        return artifact_curve(artifacts, artifact=spec.artifact, y=spec.y, x=spec.x, x_low=spec.x_low, x_high=spec.x_high,
                              n=spec.n, figure_id=fid, title=spec.title, x_label=spec.x_label, y_label=spec.y_label,
                              x_range=spec.x_range, y_range=spec.y_range, note=spec.note)
    if spec.kind == "metric_vs_slice":
        return metric_vs_slice(rows, metric=spec.metric, subset_prefix=spec.subset_prefix or "", architectures=architectures,
                               figure_id=fid, title=spec.title, log2_x=spec.log2_x, x_label=spec.x_label,
                               y_label=spec.y_label, y_range=spec.y_range, note=spec.note)
    return Figure(fid, spec.title, None, note=f"Plot omitted: unknown plot kind {spec.kind!r}.")
