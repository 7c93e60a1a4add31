"""The static leaderboard: content, escaping, downloads, determinism, plots and the CLI verb."""

from __future__ import annotations

import datetime as dt
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import leaderboard_fixtures as fx
from benchmark.errors import CanonBenchError
from benchmark.results import COLUMNS, ResultStore, to_table_frame
from leaderboard import plots
from leaderboard.build import build_site

DATE = dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.timezone.utc)


class Page(HTMLParser):
    """Tables (by id) as rows of cells {text, attrs, links}, plus every link and script source."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, dict] = {}
        self.links: list[str] = []
        self.sources: list[str] = []
        self._table: dict | None = None
        self._cell: dict | None = None
        self._row: list | None = None
        self._in_head = False
        self._nested = 0  # depth of tables inside a cell (slice tables): their text belongs to the cell
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self._cell is not None:
            self._cell["text"] += " "  # elements inside a cell read as separate words
            if tag == "table":
                self._nested += 1
        if self._nested:
            if tag == "a" and "href" in a:
                self.links.append(a["href"])
                self._cell["links"].append(a["href"])
            return
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
            if self._cell is not None:
                self._cell["links"].append(a["href"])
        if tag in ("script", "link", "img") and (a.get("src") or a.get("href")):
            self.sources.append(a.get("src") or a.get("href"))
        if tag == "table" and a.get("id"):
            self._table = {"header": [], "rows": []}
            self.tables[a["id"]] = self._table
        elif self._table is not None:
            if tag == "thead":
                self._in_head = True
            elif tag == "tr":
                self._row = []
            elif tag in ("td", "th"):
                self._cell = {"text": "", "attrs": a, "links": []}

    def handle_endtag(self, tag):
        if self._nested:
            self._nested -= tag == "table"
            return
        if self._table is None:
            return
        if tag in ("td", "th") and self._cell is not None:
            self._cell["text"] = " ".join(self._cell["text"].split())
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            (self._table["header"] if self._in_head else self._table["rows"]).append(self._row)
            self._row = None
        elif tag == "thead":
            self._in_head = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


def _html(site: Path, relative: str) -> str:
    return (site / relative).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("leaderboard")
    results_dir, submissions_dir = fx.write_fixture(root)
    index = build_site(results_dir=results_dir, submissions_dir=submissions_dir, out_dir=root / "site",
                       build_date=DATE, tasks=fx.FIXTURE_TASKS)
    return {"root": root, "results": results_dir, "submissions": submissions_dir, "site": index.parent, "index": index}


def _stored(results_dir: Path) -> pd.DataFrame:
    return ResultStore(results_dir).read()


def _stored_value(frame: pd.DataFrame, submission: str, task: str, version: str, metric: str, subset: str = "all"):
    hit = frame[(frame.submission == submission) & (frame.task == task) & (frame.task_version == version)
                & (frame.metric == metric) & (frame.subset == subset)]
    return None if hit.empty else hit.iloc[0]


def _overview(built) -> dict:
    return Page(_html(built["site"], "index.html")).tables["overview"]


def test_overview_has_one_row_per_submission_and_one_column_per_task(built):
    table = _overview(built)
    names = [row[0]["links"][0] for row in table["rows"]]
    expected = sorted(fx.SUBMISSIONS)
    assert [n.removeprefix("submissions/").removesuffix(".html").replace("~", "/") for n in names] == expected
    header = [cell["text"] for cell in table["header"][0]]
    for meta in (cls.metadata for cls in fx.FIXTURE_TASKS.values()):
        assert any(h.startswith(meta.title) and meta.main_metric.name in h for h in header), (meta.name, header)
    for label in ("Submission", "Model", "Architecture", "Width", "L0", "Seeds"):
        assert any(h.startswith(label) for h in header)


def test_overview_cells_are_stored_values_or_say_why_not(built):
    """Every task cell is the stored main metric (subset all, current version) or an explicit status."""
    table = _overview(built)
    stored = _stored(built["results"])
    header = [cell["text"] for cell in table["header"][0]]
    expected_status = {
        ("acme/relu-16k", "absorption"): "not run",  # only a v0 result is stored
        ("ghost/orphan", "absorption"): "not run",
        ("ref/synthetic-topk", "cross-seed"): "n/a",  # recipes are not accepted
        ("local/jumprelu-dev", "absorption"): "undefined",
        ("ref/synthetic-topk", "synthetic"): "2 slices",
    }
    seen_status = {}
    for row in table["rows"]:
        submission = row[0]["text"].split()[0]
        for cls in fx.FIXTURE_TASKS.values():
            meta = cls.metadata
            column = next(i for i, h in enumerate(header) if h.startswith(meta.title))
            cell = row[column]
            hit = _stored_value(stored, submission, meta.name, meta.version, meta.main_metric.name)
            if hit is not None and not pd.isna(hit.value):
                assert cell["attrs"]["data-sort"] == repr(float(hit.value))
                assert cell["text"].startswith(plots.format_number(float(hit.value)))
                if not pd.isna(hit["std"]):
                    assert f"± {plots.format_number(float(hit['std']))}" in cell["text"]
            else:
                assert "data-sort" not in cell["attrs"]
                seen_status[(submission, meta.name)] = cell["text"]
    for key, text in expected_status.items():
        assert seen_status[key].startswith(text), (key, seen_status[key])
    # the not-run cell for an older version says which versions are stored
    relu_row = next(r for r in table["rows"] if r[0]["text"].startswith("acme/relu-16k"))
    absorption_col = next(i for i, h in enumerate(header) if h.startswith("First-letter absorption"))
    assert "v0" in relu_row[absorption_col]["attrs"]["title"]
    # the CI is shown when no std is stored, and the L0 column comes from the 'l0' rows
    jump_row = next(r for r in table["rows"] if r[0]["text"].startswith("local/jumprelu-dev"))
    assert "[0.720, 0.760]" in " ".join(c["text"] for c in jump_row)
    l0_col = header.index(next(h for h in header if h.startswith("L0")))
    assert jump_row[l0_col]["attrs"]["data-sort"] == repr(41.0)
    assert "local" in jump_row[0]["text"]  # the local badge
    assert "aggregation" in _html(built["site"], "index.html") and "never averages" in _html(built["site"], "index.html")


def test_manifest_text_is_escaped_everywhere(built):
    pages = {p: p.read_text(encoding="utf-8") for p in built["site"].rglob("*.html")}
    assert len(pages) == 2 + len(fx.FIXTURE_TASKS) + len(fx.SUBMISSIONS)  # overview, architectures, tasks, submissions
    for path, text in pages.items():
        assert fx.EVIL_TITLE not in text, path
        assert "<script>alert" not in text, path
        assert "<b>markup</b>" not in text and "<i>numbers</i>" not in text, path
        assert not any(href.strip().lower().startswith("javascript:") for href in Page(text).links), path
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert escaped in pages[built["site"] / "index.html"]
    assert escaped in pages[built["site"] / "submissions" / "acme~topk-16k.html"]
    assert "&lt;b&gt;markup&lt;/b&gt;" in pages[built["site"] / "tasks" / "synthetic.html"]
    # a reference that is not a web address is shown as text, never as a link
    assert "javascript:alert(3)" in pages[built["site"] / "tasks" / "synthetic.html"]


def _read_csv_as_results(path: Path) -> pd.DataFrame:
    dtypes = {}
    for name, dtype in COLUMNS.items():
        text = str(dtype)
        dtypes[name] = "string" if text == "string" else "boolean" if text == "bool" else "Int64" if text.startswith("int") else "Float64"
    return to_table_frame(pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[""]))


def test_whole_results_downloads_equal_the_store(built):
    stored = _stored(built["results"])
    assert len(stored) == sum(len(v) for v in fx.UNITS.values())
    from_parquet = to_table_frame(pd.read_parquet(built["site"] / "downloads" / "results.parquet"))
    pd.testing.assert_frame_equal(from_parquet, stored)
    from_csv = _read_csv_as_results(built["site"] / "downloads" / "results.csv")
    pd.testing.assert_frame_equal(from_csv, stored)


def test_overview_download_holds_the_stored_main_metrics(built):
    stored = _stored(built["results"])
    frame = pd.read_parquet(built["site"] / "downloads" / "overview" / "overview.parquet")
    from_csv = pd.read_csv(built["site"] / "downloads" / "overview" / "overview.csv")
    assert list(frame.columns) == list(from_csv.columns)
    assert sorted(frame["submission"]) == sorted(fx.SUBMISSIONS)
    for cls in fx.FIXTURE_TASKS.values():
        meta = cls.metadata
        key = f"{meta.name}.{meta.main_metric.name}"
        for record in frame.to_dict("records"):
            hit = _stored_value(stored, record["submission"], meta.name, meta.version, meta.main_metric.name)
            want = None if hit is None or pd.isna(hit.value) else float(hit.value)
            got = None if pd.isna(record[key]) else float(record[key])
            assert got == want, (record["submission"], key)
            csv_value = from_csv.loc[from_csv.submission == record["submission"], key].iloc[0]
            assert (pd.isna(csv_value) and want is None) or float(csv_value) == want


def test_every_table_has_csv_and_parquet_downloads_that_match(built):
    site = built["site"]
    checked = 0
    for page_path in site.rglob("*.html"):
        text = page_path.read_text(encoding="utf-8")
        for section in re.findall(r'<section class="table-block".*?</section>', text, flags=re.S):
            hrefs = re.findall(r'href="([^"]+\.(?:csv|parquet))"', section.split("<table")[0])
            csv = [h for h in hrefs if h.endswith(".csv")]
            parquet = [h for h in hrefs if h.endswith(".parquet")]
            assert len(csv) == 1 and len(parquet) == 1, (page_path, section[:200])
            a = pd.read_csv(page_path.parent / csv[0])
            b = pd.read_parquet(page_path.parent / parquet[0])
            assert list(a.columns) == list(b.columns)
            assert len(a) == len(b)
            n_rows = len(re.findall(r"<tr>", section.split("<tbody>")[1])) if "<tbody>" in section else 0
            assert n_rows == min(len(b), 200) or "Showing the first" in section
            checked += 1
    assert checked >= 20


def test_all_local_links_resolve(built):
    site = built["site"]
    for page_path in site.rglob("*.html"):
        page = Page(page_path.read_text(encoding="utf-8"))
        for target in page.links + page.sources:
            if target.startswith(("http://", "https://", "#")):
                continue
            resolved = (page_path.parent / target.split("#")[0]).resolve()
            assert resolved.exists(), (page_path.relative_to(site), target)
    for name in ("style.css", "table.js"):
        assert (site / "static" / name).exists()
    html = _html(site, "index.html")
    assert "http://" not in "".join(Page(html).sources) and "https://" not in "".join(Page(html).sources)


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_is_deterministic_and_the_date_sits_in_one_marked_place(built):
    root = built["root"]
    kwargs = dict(results_dir=built["results"], submissions_dir=built["submissions"], tasks=fx.FIXTURE_TASKS)
    build_site(out_dir=root / "again", build_date=DATE, **kwargs)
    first, again = _tree_bytes(built["site"]), _tree_bytes(root / "again")
    assert first.keys() == again.keys()
    assert [k for k in first if first[k] != again[k]] == []
    build_site(out_dir=root / "later", build_date=DATE + dt.timedelta(days=400), **kwargs)
    later = _tree_bytes(root / "later")
    assert later.keys() == first.keys()
    changed = [k for k in first if first[k] != later[k]]
    assert changed and all(k.endswith(".html") for k in changed)
    strip = re.compile(rb'<span class="build-date">[^<]*</span>')
    for k in changed:
        assert len(strip.findall(first[k])) == 1
        assert strip.sub(b"", first[k]) == strip.sub(b"", later[k]), k
    assert b"built 2026-01-02 03:04 UTC" in first["index.html"]


def test_rebuilding_replaces_the_old_site_and_never_a_foreign_folder(built, tmp_path):
    kwargs = dict(results_dir=built["results"], submissions_dir=built["submissions"], tasks=fx.FIXTURE_TASKS, build_date=DATE)
    out = tmp_path / "site"
    build_site(out_dir=out, **kwargs)
    (out / "stale.html").write_text("old")
    build_site(out_dir=out, **kwargs)
    assert not (out / "stale.html").exists() and (out / "index.html").exists()
    foreign = tmp_path / "my-notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(CanonBenchError, match="refusing to replace"):
        build_site(out_dir=foreign, **kwargs)
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_task_pages_show_metadata_tables_and_plots(built):
    site = built["site"]
    for cls in fx.FIXTURE_TASKS.values():
        meta = cls.metadata
        text = _html(site, f"tasks/{meta.name}.html")
        page = Page(text)
        assert f"v{meta.version}" in text and meta.title in text
        metric_rows = page.tables["metrics"]["rows"]
        assert [r[0]["text"] for r in metric_rows] == [m.name for m in meta.metrics]
        for row, m in zip(metric_rows, meta.metrics):
            assert m.direction in row[2]["attrs"]["data-sort"]
        assert len(page.tables["scores"]["rows"]) == len(fx.SUBMISSIONS)
        n_rows = sum(len(v) for (s, t, ver), v in fx.UNITS.items() if t == meta.name)
        assert len(page.tables["rows"]["rows"]) == n_rows
    cross = _html(site, "tasks/cross-seed.html")
    assert 'id="plot-pw-mcc-vs-l0"' in cross and 'id="plot-matched-cosine-histogram"' in cross
    assert cross.count("<svg") == 2
    # one point per submission with both an L0 and a pw_mcc, labelled by submission
    vs_l0 = cross.split('id="plot-pw-mcc-vs-l0"')[1].split("</figure>")[0]
    for name in ("acme/topk-16k", "acme/relu-16k", "local/jumprelu-dev", "ghost/orphan"):
        assert f"<title>{name} (" in vs_l0
    synthetic = _html(site, "tasks/synthetic.html")
    assert 'id="plot-gt-vs-pw"' in synthetic and "song-32x16" in synthetic
    assert synthetic.count('class="diagonal"') == 1
    assert "proxy-validity-fixture" in synthetic and "Stored by <code>canonbench summarize</code>" in synthetic
    assert "stored per slice only" in synthetic  # gt_mcc vs L0 is omitted with a note
    assert "@article{song2025position" in synthetic
    explanations = _html(site, "tasks/explanation-similarity.html")
    assert 'id="plot-similarity-by-cosine"' in explanations and "<svg" in explanations
    assert "proxy-validity" not in cross and "proxy-validity" not in explanations
    absorption = _html(site, "tasks/absorption.html")
    assert 'id="plot-absorption-vs-l0"' in absorption and "<svg" in absorption


def test_submission_page_has_provenance_citations_and_drill_downs(built):
    site = built["site"]
    stored = _stored(built["results"])
    text = _html(site, "submissions/acme~topk-16k.html")
    page = Page(text)
    for seed in (0, 1, 2):
        url = f"https://huggingface.co/acme/topk-16k/tree/{fx.SHA_B}/layer_3/seed_{seed}"
        assert url in page.links
        assert f"{seed:02d}" + "d" * 62 in text  # the weights file's sha256
    assert "@misc{canonbench" in text
    hit = _stored_value(stored, "acme/topk-16k", "cross-seed", "1", "pw_mcc")
    citation = next(line for line in text.splitlines() if "acme/topk-16k: pw_mcc" in line)
    assert "CanonBench 0.1.0" in citation and "task cross-seed v1" in citation and f"run {hit.run_id}" in citation
    assert "0.810 ± 0.020" in citation
    per_seed = page.tables["per-seed"]["rows"]
    assert sorted(r[3]["text"] for r in per_seed) == ["pair=0-1", "pair=0-2", "pair=1-2"]
    metrics = page.tables["metrics"]["rows"]
    assert len(metrics) == len(stored[(stored.submission == "acme/topk-16k") & (stored.subset == "all")])
    assert "artifact-explanation-similarity-examples" in page.tables
    assert "&lt;i&gt;numbers&lt;/i&gt;" in text
    manifest_fields = {r[0]["text"]: r[1]["text"] for r in page.tables["manifest"]["rows"]}
    assert manifest_fields["title"] == fx.EVIL_TITLE and manifest_fields["links.paper"] == fx.EVIL_LINK
    assert "local" not in [b for b in re.findall(r'badge-(\w+)', text)]

    local = _html(site, "submissions/local~jumprelu-dev.html")
    assert "badge-local" in local and "Local / trained here" in local
    orphan = _html(site, "submissions/ghost~orphan.html")
    assert "No manifest for this submission" in orphan
    recipe = _html(site, "submissions/ref~synthetic-topk.html")
    assert "recipe.hyperparameters.k" in recipe and "badge-local" in recipe


def test_a_failing_summary_is_reported_and_shown_as_missing_not_hidden(tmp_path):
    """summarize reports the failure (and stores nothing); the page says the summary is missing."""
    import dataclasses

    from benchmark.summaries import summarize

    def broken(rows):
        raise RuntimeError("needs two presets")

    results, submissions = fx.write_fixture(tmp_path / "fx", summaries=False)
    meta = fx.FixtureSynthetic.metadata
    spec = dataclasses.replace(meta.summaries[0], compute=broken)
    broken_task = type("Broken", (fx.FixtureSynthetic,), {"metadata": dataclasses.replace(meta, summaries=(spec,))})
    registry = {**fx.FIXTURE_TASKS, "synthetic": broken_task}
    outcomes = summarize(results, registry=registry)
    failed = [o for o in outcomes if o.error]
    assert len(failed) == 1 and "needs two presets" in failed[0].error
    build_site(results_dir=results, submissions_dir=submissions, out_dir=tmp_path / "s", build_date=DATE, tasks=registry)
    text = _html(tmp_path / "s", "tasks/synthetic.html")
    assert "Not computed yet" in text and "proxy-validity-fixture" not in text


def test_description_length_page_shows_the_stored_triple_explanations(tmp_path):
    """The description-length page shows the triple-explanation summaries as ``summarize`` stored them
    (joined with explanation-similarity's explanations there; the leaderboard computes nothing)."""
    import triple_explanation_fixtures as tx

    from benchmark.summaries import summarize

    results = tmp_path / "results"
    tx.write_store(results)
    build_site(results_dir=results, submissions_dir=None, out_dir=tmp_path / "before", build_date=DATE, tasks=tx.TASKS)
    before = _html(tmp_path / "before", "tasks/description-length.html")
    assert 'id="summary-triple_explanations"' in before and "fires on dog; after a" not in before
    assert not any(o.error for o in summarize(results, registry=tx.TASKS, tasks=["description-length"])
                   if o.name.startswith("triple_"))
    build_site(results_dir=results, submissions_dir=None, out_dir=tmp_path / "s", build_date=DATE, tasks=tx.TASKS)
    page = Page(_html(tmp_path / "s", "tasks/description-length.html"))
    per_triple = page.tables["summary-triple_explanations"]
    header = [c["text"] for c in per_triple["header"][0]]
    rows = [dict(zip(header, (c["text"] for c in row))) for row in per_triple["rows"]]
    assert len(rows) == len(tx.EXPECTED_TRIPLES)
    disagreeing = [r for r in rows if r["disagree"] == "True"]
    assert [(r["latent"], r["explanation_swapped"], r["similarity"]) for r in disagreeing] == \
        [("10", "fires on dog; after a", "0.375")]
    counts = page.tables["summary-triple_explanation_counts"]
    header = [c["text"] for c in counts["header"][0]]
    by_sub = {r["submission"]: r for r in (dict(zip(header, (c["text"] for c in row))) for row in counts["rows"])}
    assert by_sub["lab/gamma"]["n_triples"] == "0" and "no triples stored" in by_sub["lab/gamma"]["note"]
    assert by_sub["lab/beta"]["n_explained"] == "0"


def test_empty_store_gives_not_run_cells_and_plot_notes(built, tmp_path):
    index = build_site(results_dir=tmp_path / "no-results", submissions_dir=built["submissions"], out_dir=tmp_path / "s",
                       build_date=DATE, tasks=fx.FIXTURE_TASKS)
    text = index.read_text(encoding="utf-8")
    with_manifest = [n for n, s in fx.SUBMISSIONS.items() if s.manifest is not None]
    assert "overview" not in Page(text).tables  # nothing to rank: every submission is listed as not run yet
    listed = re.findall(r'<li><a href="submissions/[^"]+">([^<]+)</a>', text.split('id="not-run-yet"')[1])
    assert sorted(listed) == sorted(with_manifest)
    for name in fx.FIXTURE_TASKS:
        text = _html(tmp_path / "s", f"tasks/{name}.html")
        assert "<svg" not in text and "Plot omitted" in text
    assert "Plot omitted: no submission has a &#39;matched_cosine_histogram&#39; artifact" in _html(tmp_path / "s", "tasks/cross-seed.html")


def test_every_registered_task_gets_a_page_and_a_column(built, tmp_path):
    from tasks import all_tasks

    registry = all_tasks()
    index = build_site(results_dir=built["results"], submissions_dir=built["submissions"], out_dir=tmp_path / "s", build_date=DATE)
    header = [c["text"] for c in Page(index.read_text(encoding="utf-8")).tables["overview"]["header"][0]]
    for name, cls in registry.items():
        assert (tmp_path / "s" / "tasks" / f"{name}.html").exists()
        assert any(h.startswith(cls.metadata.title or name) for h in header)


def test_cli_verb_builds_the_site(built, tmp_path, capsys):
    from benchmark.cli import main

    out = tmp_path / "cli-site"
    code = main(["leaderboard", "build", "--results", str(built["results"]), "--submissions", str(built["submissions"]),
                 "--out", str(out), "--quiet"])
    assert code == 0 and (out / "index.html").exists()
    assert str((out / "index.html").resolve()) in capsys.readouterr().out


def test_source_date_epoch_sets_the_build_date(built, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    build_site(results_dir=built["results"], submissions_dir=built["submissions"], out_dir=tmp_path / "s", tasks=fx.FIXTURE_TASKS)
    assert "built 1970-01-01 00:00 UTC" in _html(tmp_path / "s", "index.html")


# ---- plots ------------------------------------------------------------------------------------


def test_chart_escapes_text_and_is_deterministic():
    series = [plots.Series("<script>x</script>", [plots.Point(0.1, 0.2, label='a "quoted" <b>label</b>', y_err=float("nan"))]),
              plots.Series("b&c", [plots.Point(0.5, 0.9, x_err=0.05)], connect=True)]
    svg = plots.xy_chart(series, x_label="x <i>", y_label="y & z")
    assert svg == plots.xy_chart(series, x_label="x <i>", y_label="y & z")
    assert "<script>" not in svg and "<b>" not in svg and "<i>" not in svg
    assert "&lt;script&gt;" in svg and "b&amp;c" in svg and "y &amp; z" in svg
    assert "nan" not in svg.lower()
    assert svg.count('class="errbar"') == 1  # the NaN spread draws no bar, the 0.05 one does


@pytest.mark.parametrize("low,high", [(0.0, 1.0), (17.6, 61.7), (-0.93, 0.41), (5.0, 5.0), (1e-4, 3e-4)])
def test_nice_ticks_cover_the_range_with_even_steps(low, high):
    ticks = plots.nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:])}
    assert len(steps) == 1 and 2 <= len(ticks) <= 12


def test_format_number():
    assert [plots.format_number(v) for v in (0.81234, 58.2, 123.45, 1536.0, 0.0, -0.5, 2e-5, None)] == [
        "0.812", "58.20", "123.5", "1536", "0", "-0.500", "2e-05", ""]


def test_histogram_with_missing_columns_is_omitted_with_a_note():
    figure = plots.artifact_histogram({"a/b": pd.DataFrame({"bin_low": [0.0], "count": [3]})}, artifact="h",
                                      x_low="bin_low", x_high="bin_high", y="count", figure_id="h", title="h")
    assert figure.svg is None and "lacks column(s) bin_high" in figure.note


def test_slugs_are_one_to_one():
    from leaderboard.cells import slug

    names = ["a/b__c", "a__b/c", "a/b_c", "a/b-c", "a/b.c", "x y/z", "x_y/z", "+x_y/z", "A/b", "a/b"]
    slugs = [slug(n) for n in names]
    assert len(set(slugs)) == len(names), dict(zip(names, slugs))
    assert all("/" not in s and not s.startswith(".") for s in slugs)


def test_csv_downloads_neutralise_formulas_and_parquet_keeps_the_text(tmp_path):
    from leaderboard.write import write_csv

    frame = pd.DataFrame({"title": ["=HYPERLINK(\"http://evil\")", "+1", "-cmd|x", "@SUM(A1)", "\tx", "plain", None],
                          "value": [1.0, -2.0, 3.0, 4.0, 5.0, 6.0, 7.0]})
    write_csv(frame, tmp_path / "t.csv")
    back = pd.read_csv(tmp_path / "t.csv", keep_default_na=False)
    assert back["title"].tolist()[:6] == ["'=HYPERLINK(\"http://evil\")", "'+1", "'-cmd|x", "'@SUM(A1)", "'\tx", "plain"]
    assert back["value"].tolist()[1] == -2.0  # numbers are never touched


def test_a_killed_builds_leftovers_are_removed_and_a_live_builds_are_kept(built, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "site"
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    stale = [tmp_path / f".site.building-{dead}-abc", tmp_path / f".site.old-{dead}"]
    live = tmp_path / f".site.building-{os.getppid()}-def"
    for folder in (*stale, live):
        (folder / "tasks").mkdir(parents=True)
    build_site(results_dir=built["results"], submissions_dir=built["submissions"], out_dir=out, build_date=DATE,
               tasks=fx.FIXTURE_TASKS)
    assert not any(f.exists() for f in stale) and live.exists()


def test_metric_vs_slice_draws_each_submission_against_its_slice_numbers():
    rows = pd.DataFrame([
        {"submission": "o/a", "metric": "m", "subset": "width=256", "value": 0.5, "std": 0.01},
        {"submission": "o/a", "metric": "m", "subset": "width=1024", "value": 0.6, "std": None},
        {"submission": "o/a", "metric": "m", "subset": "width=512,seed=0", "value": 0.9, "std": None},  # a slice of a slice
        {"submission": "o/a", "metric": "m", "subset": "all", "value": 0.6, "std": None},
        {"submission": "o/b", "metric": "m", "subset": "width=512", "value": float("nan"), "std": None},
        {"submission": "o/b", "metric": "other", "subset": "width=512", "value": 0.1, "std": None},
    ])
    figure = plots.metric_vs_slice(rows, metric="m", subset_prefix="width=", architectures={"o/a": "topk"},
                                   figure_id="f", title="t", log2_x=True)
    assert figure.svg is not None and "<polyline" in figure.svg and "topk: o/a" in figure.svg
    assert figure.data[["submission", "width", "x", "m"]].values.tolist() == [["o/a", 256.0, 8.0, 0.5], ["o/a", 1024.0, 10.0, 0.6]]
    empty = plots.metric_vs_slice(rows, metric="other", subset_prefix="layer=", architectures={}, figure_id="f", title="t")
    assert empty.svg is None and "Plot omitted" in empty.note


def _scatter_rows(points: dict[str, tuple[float, float]]) -> pd.DataFrame:
    rows = []
    for sub, (x, y) in points.items():
        rows += [{"submission": sub, "metric": "rate", "subset": "all", "value": x, "std": None},
                 {"submission": sub, "metric": "fit", "subset": "all", "value": y, "std": 0.01},
                 {"submission": sub, "metric": "rate", "subset": "seed=0", "value": -5.0, "std": None}]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_matches_a_brute_force(seed):
    rng = np.random.default_rng(seed)
    points = [tuple(p) for p in rng.integers(0, 6, size=(12, 2)).astype(float)]  # ties included
    for better in (("lower", "higher"), ("higher", "higher"), ("lower", "lower")):
        sx, sy = (1 if b == "higher" else -1 for b in better)
        want = {i for i, (x, y) in enumerate(points)
                if not any(sx * a >= sx * x and sy * b >= sy * y and (a, b) != (x, y) for a, b in points)}
        assert set(plots.pareto_front(points, better)) == want


def test_metric_scatter_colours_by_architecture_and_draws_the_front():
    rows = _scatter_rows({"a/1": (10.0, 0.9), "a/2": (12.0, 0.8), "b/1": (8.0, 0.7), "b/2": (20.0, 0.95)})
    arch = {"a/1": "topk", "a/2": "topk", "b/1": "standard", "b/2": "standard"}
    figure = plots.metric_scatter(rows, x_metric="rate", y_metric="fit", architectures=arch, figure_id="f", title="t",
                                  front=("lower", "higher"))
    data = figure.data.set_index("submission")
    assert data.loc[["b/1", "a/1", "b/2"], "on_front"].all() and not data.loc["a/2", "on_front"]
    assert (data["rate"] > 0).all()  # per-seed rows are not points
    assert figure.svg.count("<polyline") == 1 and "Pareto front" in figure.svg
    assert "topk" in figure.svg and "standard" in figure.svg
    empty = plots.metric_scatter(rows[rows.metric == "rate"], x_metric="rate", y_metric="fit", architectures=arch,
                                 figure_id="f", title="t")
    assert empty.svg is None and "Plot omitted" in empty.note


def test_plot_spec_front_is_validated():
    from tasks.base import MetricSpec, PlotSpec, TaskMetadata

    metrics = (MetricSpec("a", "d", "higher", main=True), MetricSpec("b", "d", "lower"))
    with pytest.raises(ValueError, match="front"):
        TaskMetadata(name="x", version="1", title="t", description="d", metrics=metrics, accepts=("recipe",),
                     plots=(PlotSpec("metric_scatter", "p", "p", x_metric="a", y_metric="b", front=("lower", "up")),))
