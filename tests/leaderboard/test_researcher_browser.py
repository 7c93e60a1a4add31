"""The researcher's path in headless Chromium: SAEs in each library's real layout (SAELens folders kept
outside the submissions tree, a sparsify multi-seed run, a dictionary_learning Matryoshka run),
``new-submission``, ``validate --check-files``, ``run --tasks cross-seed``, ``leaderboard build``, then
the site: the overview on a laptop screen, the architecture view, the submission page, and the
"Cite this score" BibTeX copied to the clipboard.

Uses Debian's ``chromium`` through Playwright's Python package (never ``playwright install``); see
test_leaderboard_browser.py for how it is found.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

import checkpoint_fixtures as ckf
from benchmark import cli
from benchmark.results import ResultStore

from test_leaderboard_browser import CHROMIUM_ARGS, _screenshot_dir, chromium  # noqa: F401 - the fixture

pytestmark = pytest.mark.browser
MODEL_SHA = "607a30d783dfa663caf39e06633721c8d4cfcd7e"
LAPTOP = {"width": 1366, "height": 768}


def fill_todos(path: Path, title: str) -> None:
    values = {"title": f'"{title}"', "authors": '["A. Researcher", "B. Researcher"]', "license": '"MIT"',
              "revision": f'"{MODEL_SHA}"'}
    lines = [f"{m.group(1)} = {values[m.group(1)]}" if (m := re.match(r"^(\w+) = .*TODO", line)) else line
             for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def researcher(tmp_path_factory) -> dict:
    """Three submissions written, validated, run and built through the CLI, as the README says."""
    root = tmp_path_factory.mktemp("researcher")
    subs = root / "repo" / "submissions"
    for seed in (0, 1, 2):  # SAELens: one folder per seed, kept outside the repository
        ckf.write_saelens(root / "scratch" / "saelens-topk" / f"seed{seed}", "topk", d_in=8, d_sae=32, k=4, seed=seed,
                          model_name="EleutherAI/pythia-70m", hook_name="blocks.3.hook_resid_post")
    ckf.write_sparsify_seeds(subs / "lab" / "runs" / "sparsify-topk", "layers.3", seeds=(0, 1, 2))  # below the manifest
    for trainer, seed in enumerate((0, 1, 2)):  # dictionary_learning: trainer_<i>, the seed in config.json
        ckf.write_dictionary_learning(root / "scratch" / "dl-matryoshka", "MatryoshkaBatchTopKSAE", trainer=trainer,
                                      seed=seed)
    sources = {
        "lab/saelens-topk": ([str(root / "scratch" / "saelens-topk" / f"seed{s}") for s in (0, 1, 2)], "TopK, SAELens"),
        "lab/sparsify-topk": ([str(subs / "lab" / "runs" / "sparsify-topk" / "layers.3")], "TopK, sparsify"),
        "lab/dl-matryoshka": ([str(root / "scratch" / "dl-matryoshka")], "Matryoshka, dictionary_learning"),
    }
    common = ["--cache-dir", str(root / "cache"), "--quiet"]
    for name, (paths, title) in sources.items():
        out = subs / f"{name}.toml"
        assert cli.main(["new-submission", *paths, "--name", name, "--out", str(out), *common]) == 0
        fill_todos(out, title)
        assert cli.main(["validate", str(out), "--check-files", *common]) == 0
    assert 'architecture = "matryoshka"' in (subs / "lab" / "dl-matryoshka.toml").read_text()
    assert cli.main(["run", str(subs), "--tasks", "cross-seed", "--results", str(root / "results"), *common]) == 0
    assert cli.main(["leaderboard", "build", "--results", str(root / "results"), "--submissions", str(subs),
                     "--out", str(root / "site"), "--quiet"]) == 0
    return {"root": root, "site": root / "site", "results": root / "results", "names": sorted(sources)}


@pytest.fixture
def tab(chromium):  # noqa: F811 - the fixture imported above
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing: pip install -e '.[test]'")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=LAPTOP)
            context.grant_permissions(["clipboard-read", "clipboard-write"])
            page = context.new_page()
            page.requests, page.errors = [], []
            page.on("request", lambda request: page.requests.append(request.url))
            page.on("pageerror", lambda error: page.errors.append(str(error)))
            yield page
        finally:
            browser.close()


def test_from_trained_saes_to_a_copied_citation(tab, researcher, tmp_path):
    site, shots = researcher["site"], _screenshot_dir(tmp_path)
    tab.goto((site / "index.html").as_uri())
    names = tab.eval_on_selector_all("#overview tbody > tr > td:first-child a", "links => links.map(a => a.textContent.trim())")
    assert names == researcher["names"]
    cells = tab.eval_on_selector_all("#overview tbody > tr", "rows => rows.map(r => r.textContent)")
    assert all("chance" in text for text in cells)  # each cross-seed score beside its stored chance level

    # a laptop screen: the page itself never scrolls sideways; the table does, inside its frame,
    # and the submission column stays in place while it does
    assert tab.evaluate("document.documentElement.scrollWidth") <= LAPTOP["width"]
    first_x = tab.eval_on_selector("#overview tbody tr td:first-child", "td => td.getBoundingClientRect().left")
    scrolled = tab.eval_on_selector("#section-overview .table-scroll", "box => { box.scrollLeft = 10000; return box.scrollLeft; }")
    after_x = tab.eval_on_selector("#overview tbody tr td:first-child", "td => td.getBoundingClientRect().left")
    assert after_x == pytest.approx(first_x, abs=1.0) and scrolled >= 0
    tab.screenshot(path=str(shots / "researcher-overview.png"), full_page=True)

    tab.click("nav >> text=Architectures")
    tab.wait_for_load_state()
    legend = tab.eval_on_selector_all("#arch-cross-seed svg.chart text.legend title", "ts => ts.map(t => t.textContent)")
    assert {"topk · saelens", "topk · sparsify", "matryoshka · dictionary_learning"} <= set(legend)
    data_link = tab.get_attribute("#plot-cross-seed-vs-width a[href$='.csv']", "href")  # no L0: run on weights alone
    assert data_link and (site / data_link).is_file()
    tab.screenshot(path=str(shots / "researcher-architectures.png"), full_page=True)

    tab.goto((site / "index.html").as_uri())
    tab.click("#overview >> text=lab/sparsify-topk")
    tab.wait_for_load_state()
    assert tab.url.endswith("/submissions/lab~sparsify-topk.html")
    assert "local" in tab.text_content("h1")
    seeds = tab.eval_on_selector_all("#provenance tbody tr", "rows => rows.map(r => r.cells[0].textContent.trim())")
    assert sorted(set(seeds)) == ["0", "1", "2"]  # the provenance table's seed column

    block = tab.locator("#cite-cross-seed-block")
    assert "Cite this score" in block.locator("h3").text_content()
    block.locator('button[data-copy="cite-cross-seed"]').click()
    tab.wait_for_function("document.querySelector('button[data-copy=\"cite-cross-seed\"]').textContent === 'Copied'")
    copied = tab.evaluate("navigator.clipboard.readText()")
    assert copied == tab.input_value("#cite-cross-seed")
    rows = ResultStore(researcher["results"]).read()
    row = rows[(rows["submission"] == "lab/sparsify-topk") & (rows["metric"] == "decoder_pw_mcc") & (rows["subset"] == "all")].iloc[0]
    chance = rows[(rows["submission"] == "lab/sparsify-topk") & (rows["metric"] == "chance_mcc")].iloc[0]
    assert copied.startswith("@misc{canonbench:lab-sparsify-topk:cross-seed:v3:")
    for fragment in (f"run {row.run_id}", f"run spec {row.spec_hash}", "task cross-seed v3", "CanonBench 0.1.0",
                     "cannot be reproduced from the Hub", "A. Researcher and B. Researcher", "chance level (chance\\_mcc)"):
        assert fragment in copied, fragment
    assert f"code {row.git_sha}" in copied and not pd.isna(chance.value)
    tab.screenshot(path=str(shots / "researcher-submission.png"), full_page=True)
    assert all(url.startswith("file://") for url in tab.requests)
    assert tab.errors == []
