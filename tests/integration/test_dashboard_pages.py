"""Every dashboard page renders with Streamlit's AppTest against the real ClickHouse, as the read-only
`reader` user, over seeded history (tests/dashboard_seed.py), with no exception, and shows what it is for.

The module migrates and seeds a database of its own (the session's name + "_dash"), so what other tests
write cannot change the counts asserted here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest

from tests import dashboard_seed as seed
from trainmon.settings import Settings

pytestmark = pytest.mark.integration

# The read-only user the dashboard queries as: the local engine and the Docker image define `reader`;
# for another server (TRAINMON_TEST_CLICKHOUSE_URL) name its read-only user here.
READER = os.environ.get("TRAINMON_TEST_DASHBOARD_USER", "reader")

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
DB_ERROR = "did not answer"  # the pages' message when ClickHouse refuses a query


@pytest.fixture(scope="module")
def dashboard_db(stack: Settings) -> Iterator[tuple[Settings, seed.Seeded]]:
    from trainmon.deploy.migrate import migrate
    from trainmon.clickhouse import connect

    settings = stack.replace(clickhouse_database=stack.clickhouse_database + "_dash")
    migrate(settings, progress=lambda message: None)
    client = connect(settings)
    try:
        seeded = seed.seed(client)
    finally:
        client.close()
    yield settings, seeded
    admin = connect(settings, database="default")
    admin.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
    admin.close()


@pytest.fixture
def app(dashboard_db, monkeypatch):
    """A factory: AppTest of dashboard/app.py on `page` with URL query parameters."""
    from streamlit.testing.v1 import AppTest

    settings, _ = dashboard_db
    monkeypatch.delenv("TRAINMON_CONFIG", raising=False)
    monkeypatch.setenv("TRAINMON_CLICKHOUSE_URL", settings.clickhouse)
    monkeypatch.setenv("TRAINMON_CLICKHOUSE_DATABASE", settings.clickhouse_database)
    monkeypatch.setenv("TRAINMON_DASHBOARD_CLICKHOUSE_USER", READER)  # read-only: what the dashboard runs as
    monkeypatch.setenv("TRAINMON_DASHBOARD_REFRESH_S", "0")

    def open_page(page: str = "runs", **params: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60)
        at.run()
        at.query_params.update(params)
        if page != "runs" or params:
            at.switch_page(f"views/{page}.py")
        at.run()
        assert_clean(at)
        return at

    return open_page


def assert_clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not [e.value for e in at.error if DB_ERROR in e.value]


def walk(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from walk(child)


def _chart_nodes(at) -> list:
    return [n for n in walk(at._tree) if type(n).__name__ == "UnknownElement" and n.type == "vega_lite_chart"]


def charts(at) -> list[dict]:
    """The Vega-Lite specs the page drew (Altair charts reach AppTest as unknown elements)."""
    return [json.loads(n.proto.spec) for n in _chart_nodes(at)]


def chart_data(at) -> list:
    """Per chart, the rows it plots (its Arrow datasets, concatenated) as a DataFrame."""
    import pandas as pd
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    out = []
    for node in _chart_nodes(at):
        frames = [convert_arrow_bytes_to_pandas_df(d.data.data) for d in node.proto.datasets]
        out.append(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())
    return out


def chart_titles(at) -> list[str]:
    out = []
    for spec in charts(at):
        title = spec.get("title")
        out.append(title.get("text") if isinstance(title, dict) else title)
    return out


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [t.value for t in at.title]
    parts += [w.value for w in at.warning] + [e.value for e in at.error] + [i.value for i in at.info]
    return "\n".join(str(p) for p in parts)


# ---------------------------------------------------------------- every page

@pytest.mark.parametrize("page, params", [
    ("runs", {}),
    ("run", {"project": seed.PROJECT, "run": seed.LIVE_RUN}),
    ("run", {}),
    ("compare", {"project": seed.PROJECT, "runs": f"{seed.LIVE_RUN},{seed.DONE_RUN},{seed.FAILED_RUN}"}),
    ("compare", {}),
    ("cluster", {}),
    ("alerts", {}),
    ("host", {"host": seed.HOT[0]}),
    ("host", {}),
])
def test_every_page_renders_without_exception(app, page, params) -> None:
    at = app(page, **params)
    assert at.title or at.metric, f"{page} drew nothing"


@pytest.mark.parametrize("tab", ["Metrics", "Hardware", "Ranks", "Config", "Alerts"])
def test_every_run_tab_renders_without_exception(app, tab) -> None:
    at = app("run", project=seed.PROJECT, run=seed.LIVE_RUN)
    at.session_state["tab"] = tab
    at.run()
    assert_clean(at)


# ---------------------------------------------------------------- runs

def test_runs_table_lists_the_seeded_runs_with_status_best_and_alerts(app, dashboard_db) -> None:
    at = app("runs")
    table = at.dataframe[0].value
    runs = {link.split("run=")[-1]: row for link, row in zip(table["run"], table.to_dict("records"))}
    assert set(runs) >= {seed.LIVE_RUN, seed.DONE_RUN, seed.FAILED_RUN, seed.OTHER_RUN}
    assert runs[seed.LIVE_RUN]["status"] == "running"
    assert runs[seed.FAILED_RUN]["status"] == "failed"
    assert runs[seed.LIVE_RUN]["alerts"] == 1  # the straggler alert
    assert runs[seed.LIVE_RUN]["world size"] == 4
    assert (runs[seed.LIVE_RUN]["dropped"], runs[seed.DONE_RUN]["dropped"]) == (seed.DROPPED, 0)
    assert 0 < runs[seed.LIVE_RUN]["best val_loss"] < 2.3
    assert metric(at, "Running") == "2"


def test_runs_filters_narrow_the_table(app) -> None:
    at = app("runs")
    at.selectbox(key="f_project").select(seed.OTHER_PROJECT).run()
    assert_clean(at)
    assert [link.split("run=")[-1] for link in at.dataframe[0].value["run"]] == [seed.OTHER_RUN]
    at = app("runs")
    at.multiselect(key="f_status").select("failed").run()
    assert [link.split("run=")[-1] for link in at.dataframe[0].value["run"]] == [seed.FAILED_RUN]
    at = app("runs")
    at.text_input(key="f_tag").input("sweep").run()
    assert {link.split("run=")[-1] for link in at.dataframe[0].value["run"]} == {seed.DONE_RUN, seed.FAILED_RUN}


def test_runs_selection_opens_compare(app) -> None:
    at = app("runs")
    # selecting rows is a browser gesture; the buttons stay disabled until there is a selection
    assert [b.disabled for b in at.button if b.label in ("Open selected run", "Compare selected")] == [True, True]


# ---------------------------------------------------------------- run

def test_run_page_from_an_alert_link_shows_the_run_curves_and_header(app) -> None:
    at = app("run", project=seed.PROJECT, run=seed.LIVE_RUN)
    assert at.title[0].value.startswith("ResNet-50")
    assert seed.LIVE_RUN in texts(at)
    assert metric(at, "World size") == "4"
    assert metric(at, "Last step") == "1,000"
    assert f"{seed.DROPPED:,} events dropped by the SDK" in texts(at)  # a badge: markdown
    titles = chart_titles(at)
    assert set(titles) == {"Loss", "Accuracy", "Precision / recall / F1", "Learning rate"}
    loss = chart_data(at)[titles.index("Loss")]
    assert set(loss["metric"]) == {"loss", "val_loss"}
    assert loss.groupby("metric").size().max() <= 500  # downsampled: at most `points` per line
    assert loss["value"].notna().all()


def test_run_page_plots_against_epoch(app) -> None:
    at = app("run", project=seed.PROJECT, run=seed.LIVE_RUN)
    at.segmented_control(key="x").set_value("epoch").run()
    assert_clean(at)
    loss = chart_data(at)[chart_titles(at).index("Loss")]
    assert loss["x"].min() >= 0 and loss["x"].max() == pytest.approx(10.0, abs=0.1)  # the seed: epoch = step / 100


def test_run_page_with_only_the_run_in_the_link_finds_its_project(app) -> None:
    at = app("run", run=seed.OTHER_RUN)
    assert at.selectbox(key="project").value == seed.OTHER_PROJECT
    assert at.selectbox(key="run").value == seed.OTHER_RUN
    assert at.title[0].value.startswith("BERT-base")


def test_run_page_config_tab_shows_config_datasets_model_code_environment(app) -> None:
    at = app("run", project=seed.PROJECT, run=seed.LIVE_RUN)
    at.session_state["tab"] = "Config"
    at.run()
    assert_clean(at)
    config = dict(zip(at.dataframe[0].value["key"], at.dataframe[0].value["value"]))
    assert config["lr"] == "0.001" and config["batch_size"] == "256" and config["optimizer.name"] == "adamw"
    assert set(at.dataframe[1].value["name"]) == {"imagenet-1k"}
    documents = [j.value for j in at.json]
    assert any("ResNet50" in d for d in documents) and any("3f9c2a0e" in d for d in documents)
    assert any("550.54.15" in d for d in documents)


def test_run_page_ranks_tab_flags_the_straggling_rank_and_shows_the_spread(app) -> None:
    at = app("run", project=seed.PROJECT, run=seed.LIVE_RUN)
    at.session_state["tab"] = "Ranks"
    at.run()
    assert_clean(at)
    ranks = at.dataframe[0].value
    assert list(ranks["rank"]) == [0, 1, 2, 3]
    assert list(ranks["behind"]) == [0, 0, 0, 150]
    assert list(ranks["dropped"]) == [0, 0, 0, seed.DROPPED]
    assert any("behind the leader" in w.value and w.value.endswith("3") for w in at.warning)
    assert any("across ranks" in (t or "") for t in chart_titles(at))


def test_run_page_hardware_tab_shows_the_runs_gpus(app) -> None:
    at = app("run", project=seed.PROJECT, run=seed.LIVE_RUN)
    at.session_state["tab"] = "Hardware"
    at.run()
    assert_clean(at)
    assert set(chart_titles(at)) == {"GPU utilisation", "GPU memory used", "GPU temperature", "GPU power"}
    devices = set(chart_data(at)[0]["device"])
    assert devices == {f"{host}:{gpu}" for host in seed.HOSTS[:2] for gpu in range(seed.GPUS)}


def test_run_page_alerts_tab_puts_the_runs_alert_on_a_timeline(app) -> None:
    at = app("run", project=seed.PROJECT, run=seed.LIVE_RUN)
    at.session_state["tab"] = "Alerts"
    at.run()
    assert_clean(at)
    assert "Alerts on the timeline" in chart_titles(at)
    assert list(at.dataframe[0].value["rule"]) == [seed.FIRING_RUN_RULE]


def test_unknown_run_is_a_message_not_an_exception(app) -> None:
    at = app("run", project=seed.PROJECT, run="no-such-run")
    assert any("no-such-run" in w.value for w in at.warning)


# ---------------------------------------------------------------- compare

def test_compare_shows_only_differing_config_keys_and_parallel_coordinates(app) -> None:
    runs = [seed.LIVE_RUN, seed.DONE_RUN, seed.FAILED_RUN]
    at = app("compare", project=seed.PROJECT, runs=",".join(runs))
    diff = at.dataframe[0].value
    assert sorted(diff["key"]) == ["batch_size", "lr"]  # epochs, arch, optimizer... are equal
    assert list(diff.columns) == ["key", *runs]
    data = chart_data(at)
    assert set(data[0]["run"]) == set(runs)  # the overlay
    assert set(data[-1]["key"]) >= {"batch_size", "lr", "val_loss"}  # parallel coordinates
    at.segmented_control(key="cmp_x").set_value("epoch").run()
    assert_clean(at)
    overlay = chart_data(at)[0]
    assert set(overlay["run"]) == set(runs) and overlay["x"].max() <= 10.0  # the seed: epoch = step / 100


# ---------------------------------------------------------------- cluster

def test_cluster_heatmap_marks_silent_and_straggling_nodes(app) -> None:
    at = app("cluster")
    data = chart_data(at)
    assert len(data) == 1
    cells = data[0]
    assert set(zip(cells["host"], cells["gpu"])) == {(h, g) for h in seed.HOSTS for g in range(seed.GPUS)}
    states = dict(zip(cells["host"], cells["state"]))
    assert states[seed.SILENT_HOST] == "silent"
    assert states[seed.HOT[0]] == "straggler"  # rank 3 of the live run runs there
    assert any(seed.SILENT_HOST in e.value for e in at.error)
    nodes = at.dataframe[0].value
    assert len(nodes) == len(seed.HOSTS)


def test_cluster_colours_by_temperature(app) -> None:
    at = app("cluster")
    at.segmented_control(key="figure").set_value("Temperature").run()
    assert_clean(at)
    cells = chart_data(at)[0]
    hot = cells[(cells["host"] == seed.HOT[0]) & (cells["gpu"] == seed.HOT[1])]
    assert hot["value"].iloc[0] > 80  # the cells are coloured by temperature now


# ---------------------------------------------------------------- alerts

def test_alerts_page_shows_incidents_firing_alerts_history_and_deliveries(app) -> None:
    at = app("alerts")
    assert metric(at, "Firing now") == "3"
    incidents = at.dataframe[0].value
    (incident,) = incidents.to_dict("records")
    assert (incident["id"], incident["state"], incident["alerts"]) == (seed.INCIDENT, "firing", 2)
    assert incident["cause"].startswith(f"GPU {seed.HOT[1]} on {seed.HOT[0]}") and incident["runs"] == seed.LIVE_RUN
    firing = at.dataframe[1].value
    assert set(firing["rule"]) == {seed.FIRING_RULE, seed.FIRING_HOST_RULE, seed.FIRING_RUN_RULE}
    assert set(firing["state"]) == {"firing"}
    history = at.dataframe[2].value
    assert seed.RESOLVED_RULE in set(history["rule"])
    links = set(firing["open"])
    assert f"run?project={seed.PROJECT}&run={seed.LIVE_RUN}" in links
    assert f"host?host={seed.HOT[0]}" in links
    deliveries = at.dataframe[3].value
    assert {"delivered", "retrying", "failed"} <= set(deliveries["outcome"])
    assert metric(at, "Failed") == "1"
    at.selectbox(key="incident").set_value(seed.INCIDENT).run()  # its members, from the alerts table
    assert not at.exception
    members = at.dataframe[1].value  # under the incidents
    assert sorted(members["rule"]) == sorted([seed.FIRING_RULE, seed.FIRING_RUN_RULE])


@pytest.mark.parametrize("field, value, expected", [
    ("severity", "critical", {seed.FIRING_RULE, seed.FIRING_HOST_RULE}),
    ("rule", seed.FIRING_RULE, {seed.FIRING_RULE}),
    ("host", seed.HOT[0], {seed.FIRING_RULE, seed.FIRING_RUN_RULE}),
    ("run", seed.LIVE_RUN, {seed.FIRING_RUN_RULE}),
])
def test_alerts_filters(app, field, value, expected) -> None:
    at = app("alerts", **{field: value})
    assert set(at.dataframe[1].value["rule"]) == expected  # after the incidents (in scope of every filter)


# ---------------------------------------------------------------- host

def test_host_page_from_an_alert_link_shows_the_nodes_figures_and_alerts(app) -> None:
    host, gpu = seed.HOT
    at = app("host", host=host)
    assert at.title[0].value == f"Host {host}"
    assert metric(at, "GPUs") == str(seed.GPUS)
    assert metric(at, "State") == "live"
    titles = chart_titles(at)
    assert set(titles) == {"GPU utilisation", "GPU memory used", "GPU temperature", "GPU power"}
    temperature = chart_data(at)[titles.index("GPU temperature")]
    assert temperature[temperature["device"] == f"GPU {gpu}"]["max"].max() > 85
    firing = "\n".join(m.value for m in at.markdown)
    assert f"**{seed.FIRING_RULE}**" in firing and f"**{seed.FIRING_RUN_RULE}**" in firing  # firing here
    assert f"(host?host={host})" in firing and f"(run?project={seed.PROJECT}&run={seed.LIVE_RUN})" in firing
    at.session_state["host_tab"] = "Host"
    at.run()
    assert_clean(at)
    assert set(chart_titles(at)) == {"CPU", "Host memory", "Load (1 min)"}
    at.session_state["host_tab"] = "Alerts"
    at.run()
    assert_clean(at)
    assert seed.FIRING_RULE in set(at.dataframe[-1].value["rule"])


def test_silent_host_page_says_so(app) -> None:
    at = app("host", host=seed.SILENT_HOST)
    assert metric(at, "State") == "silent"
    assert any("no samples for more than 60 s" in e.value for e in at.error)


# ---------------------------------------------------------------- hostile input and failures

INJECTIONS = ["' OR 1=1 --", "x'; DROP TABLE runs; --", "\\' OR '1'='1", "{p0:String}", "%' UNION SELECT 1 --",
              "a" * 5000]


@pytest.mark.parametrize("attempt", INJECTIONS)
def test_sql_injection_through_page_filters_is_inert(app, attempt) -> None:
    at = app("runs")
    for key in ("f_tag", "f_user", "f_search", "f_metric"):
        at.text_input(key=key).input(attempt)
    at.run()
    assert_clean(at)
    assert not at.dataframe  # no run has such a tag, user or name
    at = app("alerts", rule=attempt, host=attempt, severity=attempt, project=attempt, run=attempt)
    assert metric(at, "Firing now") == "0"
    app("run", project=attempt, run=attempt)
    app("run", run=attempt)
    app("compare", project=seed.PROJECT, runs=f"{attempt},{seed.LIVE_RUN}")
    app("host", host=attempt)
    app("runs", project=attempt, tag=attempt, user=attempt, q=attempt, metric=attempt)
    # the tables are still there
    at = app("runs")
    assert len(at.dataframe[0].value) == 4


def test_clickhouse_away_is_a_message_not_a_traceback(app, monkeypatch) -> None:
    from tests.headless import free_port

    monkeypatch.setenv("TRAINMON_CLICKHOUSE_URL", f"http://127.0.0.1:{free_port()}")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert any(DB_ERROR in e.value for e in at.error)
