"""The built site in headless Chromium: sorting, filtering, links, offline from ``file://``.

Needs Debian's ``chromium`` (driven by Playwright's Python package through ``executable_path``; never
``playwright install``, which downloads browsers). When Chromium is missing and this runs as root
with apt-get, the fixture installs it; otherwise the test is skipped with a message saying so.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import leaderboard_fixtures as fx
from leaderboard.build import build_site

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
#: Where screenshots are kept (for people to look at); default: the test's temporary folder.
SCREENSHOT_DIR_ENV = "CANONBENCH_SCREENSHOTS"


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.fixture(scope="session")
def chromium() -> str:
    path = _find_chromium()
    if path is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=300, env=env)
            subprocess.run(["apt-get", "install", "-y", "chromium"],
                           check=True, capture_output=True, timeout=600, env=env)
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"Chromium is not installed and `apt-get install -y chromium` failed: {exc}")
        path = _find_chromium()
    if path is None:
        pytest.skip("Chromium is not installed and cannot be installed here (needs root and apt-get): "
                    "run `apt-get install -y chromium`")
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser-site")
    results_dir, submissions_dir = fx.write_fixture(root)
    index = build_site(results_dir=results_dir, submissions_dir=submissions_dir, out_dir=root / "site",
                       build_date=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc), tasks=fx.FIXTURE_TASKS)
    return index.parent


@pytest.fixture
def page(chromium):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing: pip install -e '.[test]'")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 900})
            tab.requests = []
            tab.errors = []
            tab.on("request", lambda request: tab.requests.append(request.url))
            tab.on("pageerror", lambda error: tab.errors.append(str(error)))
            tab.on("console", lambda message: tab.errors.append(message.text) if message.type == "error" else None)
            yield tab
        finally:
            browser.close()


def _screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get(SCREENSHOT_DIR_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _submission_order(page) -> list[str]:
    return page.eval_on_selector_all(
        "#overview tbody tr:not([hidden]) td:first-child a", "links => links.map(a => a.textContent.trim())"
    )


def test_sort_filter_and_follow_a_link_offline(page, site, tmp_path):
    page.goto((site / "index.html").as_uri())
    assert _submission_order(page) == sorted(fx.SUBMISSIONS)  # the default order is by name

    pw_mcc = {name: values[0].value for (name, task, _), values in fx.UNITS.items() if task == "cross-seed"}
    assert len(pw_mcc) >= 3
    header = page.locator("#overview thead th", has_text="Cross-seed consistency")
    header.click()  # first click: a ranking, highest first
    ranked = sorted(pw_mcc, key=lambda n: -pw_mcc[n])
    unscored = sorted(set(fx.SUBMISSIONS) - set(pw_mcc))
    assert _submission_order(page) == ranked + unscored  # "not run" / "n/a" rows always last
    assert header.get_attribute("aria-sort") == "descending"
    header.click()
    assert _submission_order(page) == ranked[::-1] + unscored
    assert header.get_attribute("aria-sort") == "ascending"

    page.locator("#overview thead th", has_text="Submission").click()
    assert _submission_order(page) == sorted(fx.SUBMISSIONS)

    page.fill('input.table-filter[data-table="overview"]', "acme/")
    assert _submission_order(page) == ["acme/relu-16k", "acme/topk-16k"]
    assert page.text_content('[data-count-for="overview"]') == f"2 of {len(fx.SUBMISSIONS)} rows"
    page.fill('input.table-filter[data-table="overview"]', "")
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "overview.png"), full_page=True)

    page.click("#overview >> text=acme/topk-16k")
    page.wait_for_load_state()
    assert page.url.endswith("/submissions/acme~topk-16k.html")
    assert page.text_content("h1").startswith("acme/topk-16k")
    assert page.locator("h1 + p.lead").text_content() == fx.EVIL_TITLE  # escaped, so shown as text
    assert page.locator("svg.chart").count() >= 1
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "submission.png"), full_page=True)

    page.goto((site / "tasks" / "cross-seed.html").as_uri())
    assert page.locator("svg.chart").count() == 2
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "task-cross-seed.png"), full_page=True)

    assert (_screenshot_dir(tmp_path) / "overview.png").stat().st_size > 10_000
    assert all(url.startswith("file://") for url in page.requests), [u for u in page.requests if not u.startswith("file://")]
    assert page.errors == []


def test_numeric_sort_of_a_task_table(page, site):
    page.goto((site / "tasks" / "cross-seed.html").as_uri())
    page.locator("#scores thead th", has_text="shared_fraction").click()
    values = page.eval_on_selector_all(
        "#scores tbody tr", "rows => rows.map(r => r.cells[r.cells.length - 2].getAttribute('data-sort'))"
    )
    numbers = [float(v) for v in values if v is not None]
    assert numbers == sorted(numbers, reverse=True) and len(numbers) == 3
    assert values[len(numbers):] == [None] * (len(values) - len(numbers))
