"""What a researcher reads on the site: each main score beside its stored chance level (and the
``≈ chance`` flag by the stated rule), submissions without results listed apart, the architecture
view (Pareto front, libraries side by side), the "Cite this score" BibTeX, and building from several
submissions folders, one of them holding a virtualenv."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from benchmark import cli
from benchmark.results import MetricValue, ResultStore, UnitProvenance, make_rows
from benchmark.spec import short_hash
from leaderboard.architectures import pareto
from leaderboard.build import build_site
from leaderboard.chance import indistinguishable
from tasks.base import MetricSpec, PlotSpec, Task, TaskMetadata

DATE = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
SHA = "0123456789abcdef0123456789abcdef01234567"
CODE = "c0de" * 10


class Consistency(Task):
    metadata = TaskMetadata(
        name="consistency", version="3", title="Consistency", description="A fixture with a chance level.",
        metrics=(MetricSpec("pw_mcc", "mean matched cosine", "higher", (-1.0, 1.0), main=True),
                 MetricSpec("chance_mcc", "the same for random dictionaries", "none", (-1.0, 1.0)),
                 MetricSpec("l0", "active latents", "none", (0.0, None))),
        accepts=("checkpoints",), min_seeds=2, chance_metric="chance_mcc",
        plots=(PlotSpec("metric_vs_l0", "pw-vs-l0", "pw_mcc vs L0", metric="pw_mcc"),),
    )


TASKS = {"consistency": Consistency}

#: submission → (architecture, format, width, main value, std, CI, chance, l0, local)
SCORES = {
    "lab/topk-a": ("topk", "saelens", 1024, 0.80, 0.02, None, 0.10, 32.0, False),
    "lab/topk-b": ("topk", "sparsify", 2048, 0.70, 0.03, None, 0.10, 16.0, False),
    "lab/relu": ("standard", "saelens", 1024, 0.60, 0.01, None, 0.10, 64.0, False),
    "lab/near-chance": ("jumprelu", "dictionary_learning", 1024, 0.12, 0.02, None, 0.10, 40.0, False),  # |0.02| <= 2*0.02
    "lab/ci-chance": ("batchtopk", "sparsify", 1024, 0.15, None, (0.09, 0.21), 0.10, 50.0, False),  # CI holds 0.10
    "lab/no-spread": ("matryoshka", "saelens", 4096, 0.11, None, None, 0.10, 8.0, True),  # never flagged
}


def manifest(name: str, architecture: str, fmt: str, width: int, local: bool) -> str:
    if local:
        blocks = "".join(f'\n[[checkpoints]]\nseed = {s}\nlocal = "/data/{s}"\nlocal_outside = true\n' for s in (0, 1))
    else:
        blocks = "".join(f'\n[[checkpoints]]\nseed = {s}\nrepo = "{name}"\nrevision = "{SHA}"\npath = "s{s}"\n' for s in (0, 1))
    return (f'name = "{name}"\nkind = "checkpoints"\ntitle = "SAEs {name}"\nauthors = ["Ada Lovelace", "Alan {{T}}uring"]\n'
            f'license = "MIT"\n[model]\nname = "gpt2"\nhook = "blocks.3.hook_resid_post"\nrevision = "{SHA}"\n'
            f'[sae]\narchitecture = "{architecture}"\nwidth = {width}\nformat = "{fmt}"\n{blocks}')


def write_site_inputs(root: Path) -> tuple[Path, Path]:
    results, subs = root / "results", root / "submissions"
    store = ResultStore(results)
    for index, (name, (arch, fmt, width, value, std, ci, chance, l0, local)) in enumerate(sorted(SCORES.items())):
        path = subs / f"{name}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(manifest(name, arch, fmt, width, local))
        records = [{"seed": s, "repo": None if local else name, "resolved_revision": None if local else SHA,
                    "path": f"s{s}", "local": local, "format": fmt,
                    "files": {"sae_weights.safetensors": {"bytes": 10, "sha256": f"{s}" * 64}}} for s in (0, 1)]
        provenance = UnitProvenance(
            run_id=f"20260102T000000Z-{index:08x}", submission=name, submission_kind="checkpoints", local=local,
            task="consistency", task_version="3", benchmark_version="0.1.0", git_sha=CODE, device="cpu", dtype="float32",
            model="gpt2", hook="blocks.3.hook_resid_post", architecture=arch, width=width, seeds=[0, 1], checkpoints=records,
            spec={"task": "consistency", "seed": 0, "limit": None}, spec_hash=short_hash(["spec", name]),
            inputs={"submission": name}, inputs_hash=short_hash(["inputs", name]),
        )
        metrics = [MetricValue("pw_mcc", value, std=std, ci_low=ci[0] if ci else None, ci_high=ci[1] if ci else None, n=1),
                   MetricValue("chance_mcc", chance, std=0.001, n=5), MetricValue("l0", l0)]
        assert store.write_unit(make_rows(metrics, provenance, Consistency.metadata.directions,
                                          timestamp="2026-01-02T00:00:00+00:00", runtime_s=1.0))
    waiting = subs / "lab" / "waiting.toml"  # a manifest without any result
    waiting.write_text(manifest("lab/waiting", "gated", "saelens", 1024, False))
    return results, subs


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("researcher-site")
    results, subs = write_site_inputs(root)
    return build_site(results_dir=results, submissions_dir=subs, out_dir=root / "site", build_date=DATE, tasks=TASKS).parent


def overview_rows(site: Path) -> dict[str, str]:
    text = (site / "index.html").read_text()
    body = text.split('id="overview"')[1].split("<tbody>")[1].split("</tbody>")[0]
    return {re.search(r'<a href="submissions/[^"]+">([^<]+)</a>', row).group(1): row for row in body.split("<tr>")[1:]}


# --- chance levels ---------------------------------------------------------------------------------------------
def test_each_score_shows_its_stored_chance_level_and_the_flag_follows_the_rule(site):
    rows = overview_rows(site)
    for name, (*_, value, std, ci, chance, _l0, _local) in SCORES.items():
        assert "chance 0.100" in rows[name], name
    flagged = {name for name, row in rows.items() if "≈ chance" in row}
    assert flagged == {"lab/near-chance", "lab/ci-chance"}
    text = (site / "index.html").read_text()
    assert "inside its stored 95% confidence interval" in text and "two stored standard deviations" in text
    frame = pd.read_parquet(site / "downloads" / "overview" / "overview.parquet").set_index("submission")
    assert frame.loc["lab/near-chance", "consistency.pw_mcc.near_chance"] == True  # noqa: E712 - a nullable boolean
    assert frame.loc["lab/topk-a", "consistency.pw_mcc.chance"] == 0.10
    assert pd.isna(frame.loc["lab/no-spread", "consistency.pw_mcc.near_chance"])


@pytest.mark.parametrize("value, std, ci, chance, expected", [
    (0.1399, 0.02, None, 0.10, True),  # just within 2 std: indistinguishable
    (0.1401, 0.02, None, 0.10, False),  # just beyond
    (0.0601, 0.02, None, 0.10, True),  # below chance counts the same
    (0.50, 0.30, (0.11, 0.9), 0.10, False),  # the CI decides when stored, even with a wide std
    (0.12, None, (0.10, 0.2), 0.10, True),   # the CI's edge is inside
    (0.12, None, None, 0.10, None),   # nothing to judge by
])
def test_the_chance_rule(value, std, ci, chance, expected):
    row = SimpleNamespace(value=value, std=std, ci_low=ci[0] if ci else None, ci_high=ci[1] if ci else None)
    assert indistinguishable(row, chance)[0] is expected


def test_the_chance_level_is_read_never_computed(tmp_path):
    """Change only the stored chance row: the page follows it."""
    results, subs = write_site_inputs(tmp_path)
    store = ResultStore(results)
    for path in store.unit_files():
        frame = pd.read_parquet(path)
        if frame["submission"].iloc[0] == "lab/topk-a":
            frame.loc[frame["metric"] == "chance_mcc", "value"] = 0.79
            frame.to_parquet(path, index=False)
    built = build_site(results_dir=results, submissions_dir=subs, out_dir=tmp_path / "site", build_date=DATE, tasks=TASKS)
    row = overview_rows(built.parent)["lab/topk-a"]
    assert "chance 0.790" in row and "≈ chance" in row


# --- not run yet ----------------------------------------------------------------------------------------------
def test_submissions_without_results_are_listed_apart_not_ranked(site):
    assert "lab/waiting" not in overview_rows(site)
    text = (site / "index.html").read_text()
    waiting = text.split('id="not-run-yet"')[1].split("</section>")[0]
    assert "lab/waiting" in waiting and "consistency" in waiting
    assert (site / "submissions" / "lab~waiting.html").exists()


# --- the architecture view ------------------------------------------------------------------------------------
def test_the_pareto_front_is_the_undominated_stored_points():
    points = [(32.0, 0.8, "a"), (16.0, 0.7, "b"), (64.0, 0.6, "c"), (40.0, 0.12, "d"), (8.0, 0.11, "e"), (16.0, 0.7, "twin")]
    brute = {n for x, y, n in points
             if not any((ox <= x and oy >= y) and (ox < x or oy > y) for ox, oy, _ in points)}
    assert pareto(points, "higher") == brute == {"a", "b", "twin", "e"}
    assert pareto(points, "lower") == {"e"}
    assert pareto(points, "none") == set()


def test_architecture_view_draws_stored_points_by_architecture_and_library(site, tmp_path):
    text = (site / "architectures.html").read_text()
    assert text.count("<svg") == 2  # vs L0 and vs width
    data = pd.read_csv(site / "downloads" / "architectures" / "plot-consistency-vs-l0.csv").set_index("submission")
    for name, (arch, fmt, width, value, *_rest) in SCORES.items():
        l0 = SCORES[name][7]
        assert (data.loc[name, "architecture"], data.loc[name, "library"]) == (arch, fmt)
        assert data.loc[name, "pw_mcc"] == value and data.loc[name, "l0"] == l0
    assert set(data.index[data["pareto"]]) == {"lab/topk-a", "lab/topk-b", "lab/no-spread"}
    legend = re.findall(r'class="legend">([^<]+)<', text)
    assert "topk · saelens" in legend and "topk · sparsify" in legend and "Pareto front" in legend
    side = pd.read_csv(site / "downloads" / "architectures" / "consistency-by-library.csv")
    topk = side[side["architecture"] == "topk"].set_index("library")["submission"].to_dict()
    assert topk == {"saelens": "lab/topk-a", "sparsify": "lab/topk-b"}  # the same architecture, two libraries

    rebuilt = build_site(results_dir=site.parent / "results", submissions_dir=site.parent / "submissions",
                         out_dir=tmp_path / "again", build_date=DATE, tasks=TASKS).parent
    assert (rebuilt / "architectures.html").read_bytes() == (site / "architectures.html").read_bytes()  # deterministic


# --- cite this score ------------------------------------------------------------------------------------------
def bibtex_of(site: Path, submission: str) -> str:
    text = (site / "submissions" / f"{submission.replace('/', '~')}.html").read_text()
    import html

    return html.unescape(re.search(r'<textarea id="cite-consistency"[^>]*>(.*?)</textarea>', text, flags=re.S).group(1))


def test_cite_this_score_names_everything_needed_to_find_the_computation(site):
    rows = ResultStore(site.parent / "results").read()
    for name in ("lab/topk-a", "lab/no-spread"):
        bib = bibtex_of(site, name)
        row = rows[(rows["submission"] == name) & (rows["metric"] == "pw_mcc")].iloc[0]
        assert bib.startswith("@misc{canonbench:lab-") and bib.count("{") == bib.count("}")
        for fragment in ("CanonBench 0.1.0", "task consistency v3", f"run {row.run_id}", f"code {CODE}",
                         f"run spec {row.spec_hash}", f"inputs {row.inputs_hash}", "chance level (chance\\_mcc): 0.100"):
            assert fragment in bib, (name, fragment)
        assert "Ada Lovelace and Alan \\{T\\}uring" in bib  # author braces escaped
    hub = bibtex_of(site, "lab/topk-a")
    assert f"lab/topk-a@{SHA}/s0" in hub and "not be reproduced from the Hub" not in hub
    local = bibtex_of(site, "lab/no-spread")
    assert "cannot be reproduced from the Hub" in local and "sae\\_weights.safetensors sha256 " + "0" * 64 in local
    near = bibtex_of(site, "lab/near-chance")
    assert "indistinguishable from chance" in near


# --- where the manifests are ----------------------------------------------------------------------------------
def test_several_submission_folders_one_holding_a_virtualenv_and_a_bad_manifest(tmp_path, capsys, caplog):
    results, subs = write_site_inputs(tmp_path)
    other = tmp_path / "elsewhere"
    (other / "team").mkdir(parents=True)
    (other / "team" / "extra.toml").write_text(manifest("team/extra", "topk", "saelens", 1024, False))
    (other / "team" / "broken.toml").write_text('name = "team/broken"\nkind = "checkpoints"\n')
    (other / "pyproject.toml").write_text('[project]\nname = "x"\n')
    venv = other / ".venv" / "lib" / "python3.11" / "site-packages" / "pkg"
    venv.mkdir(parents=True)
    (venv / "pyproject.toml").write_text("[[[ not toml")
    (venv / "pkg.toml").write_text('name = "pkg"\nkind = "library"\n')
    code = cli.main(["leaderboard", "build", "--results", str(results), "--submissions", str(subs), "--submissions", str(other),
                     "--out", str(tmp_path / "site")])
    assert code == 0
    pages = sorted(p.name for p in (tmp_path / "site" / "submissions").iterdir())
    assert "team~extra.html" in pages and "lab~topk-a.html" in pages and "team~broken.html" not in pages
    assert any("broken.toml" in r.getMessage() and "left out" in r.getMessage() for r in caplog.records)
    assert not any("site-packages" in r.getMessage() for r in caplog.records)


def test_the_provenance_table_has_its_seed_column(site):
    frame = pd.read_csv(site / "downloads" / "submission-lab~topk-a" / "provenance.csv")
    assert sorted(frame["seed"].tolist()) == [0, 1]
    assert json.loads(ResultStore(site.parent / "results").read()["seeds"].iloc[0]) == [0, 1]
