"""End to end: `trainmon dashboard` as a process against the real ClickHouse (seeded, read as `reader`),
each page loaded in headless Chromium until fully rendered, checked, and screenshotted.

Screenshots go to .trainmon/screenshots/<page>.png (git-ignored). Needs Debian's `chromium`
(`apt-get install -y chromium`); without it the test is skipped, or fails under CI=true.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from tests import dashboard_seed as seed
from tests.headless import Chromium, Dashboard, find_chromium
from trainmon.settings import Settings

pytestmark = pytest.mark.integration

# The read-only user the dashboard queries as: the local engine and the Docker image define `reader`;
# for another server (TRAINMON_TEST_CLICKHOUSE_URL) name its read-only user here.
READER = os.environ.get("TRAINMON_TEST_DASHBOARD_USER", "reader")

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / ".trainmon" / "screenshots"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# page, path and query, what it must show once rendered (text outside tables: tables draw on a canvas)
PAGES = [  # page, path and query, what it must show once rendered (text outside tables: tables draw on a
    # canvas), how many charts it draws at least
    ("runs", "", ["Runs", "Runs shown", "Running", "Compare selected"], 0),
    ("run", f"run?project={seed.PROJECT}&run={seed.LIVE_RUN}", [seed.LIVE_RUN, "ResNet-50", "Loss", "Accuracy",
                                                                 "Learning rate", "alert(s) firing"], 4),
    ("compare", f"compare?project={seed.PROJECT}&runs={seed.LIVE_RUN},{seed.DONE_RUN},{seed.FAILED_RUN}",
     ["Compare runs", "Config: what differs", "2 key(s) differ", "Hyperparameters vs a final metric"], 2),
    ("cluster", "cluster", ["Cluster", "Silent nodes", seed.SILENT_HOST, "Stragglers on"], 1),
    ("alerts", "alerts", ["Alerts", "Firing now", "History", "Deliveries"], 1),
    ("host", f"host?host={seed.HOT[0]}", [f"Host {seed.HOT[0]}", "GPU temperature", "Firing on this host"], 4),
]


@pytest.fixture(scope="module")
def dashboard(stack: Settings) -> Iterator[Dashboard]:
    from trainmon.deploy.migrate import migrate
    from trainmon.clickhouse import connect

    binary = find_chromium()
    if binary is None:
        message = "no Chromium: apt-get install -y chromium"
        if IN_CI:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    settings = stack.replace(clickhouse_database=stack.clickhouse_database + "_web")
    migrate(settings, progress=lambda message: None)
    client = connect(settings)
    seed.seed(client)
    client.close()
    env = {"TRAINMON_CLICKHOUSE_URL": settings.clickhouse, "TRAINMON_CLICKHOUSE_DATABASE": settings.clickhouse_database,
           "TRAINMON_DASHBOARD_CLICKHOUSE_USER": READER, "TRAINMON_DASHBOARD_REFRESH_S": "0"}
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with Dashboard(env, log=SHOTS / "dashboard.log") as running:
            yield running
    finally:
        admin = connect(settings, database="default")
        admin.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
        admin.close()


@pytest.fixture(scope="module")
def browser(dashboard) -> Iterator[Chromium]:
    with Chromium() as chromium:
        yield chromium


def test_dashboard_listens_on_loopback_only(dashboard) -> None:
    assert dashboard.url.startswith("http://127.0.0.1:")
    log = (SHOTS / "dashboard.log").read_text()
    assert "0.0.0.0" not in log


@pytest.mark.parametrize("page, path, expect, charts", PAGES, ids=[p[0] for p in PAGES])
def test_page_renders_in_headless_chromium(dashboard, browser, page, path, expect, charts) -> None:
    rendered = browser.load(f"{dashboard.url}/{path}", expect, timeout=60, charts=charts)
    shot = browser.screenshot(SHOTS / f"{page}.png")
    print(f"{page}: rendered in {rendered.ms:.0f} ms, {rendered.charts} chart(s), screenshot {shot}")
    assert rendered.exceptions == 0, rendered.text[-2000:]
    assert "Traceback" not in rendered.text
    assert not [e for e in rendered.errors if "did not answer" in e], rendered.errors
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_the_sidebar_navigation_is_the_apps_own(dashboard, browser) -> None:
    """A first request straight to a page's URL (an alert link) runs the app with its navigation."""
    rendered = browser.load(f"{dashboard.url}/host?host={seed.HOT[0]}", ["Auto-refresh", "Cluster", "Compare"])
    assert "app" not in rendered.text.split("\n")[:20]  # not Streamlit's directory-based page list
