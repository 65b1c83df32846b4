"""trainmon.history and `trainmon runs` / `trainmon alerts` on the real ClickHouse, as the read-only user.

The seeded history of the dashboard's tests (tests/dashboard_seed.py) plus one finished run with its
hardware, in a database of this module's own. The run page is rendered with Streamlit's AppTest and
what its charts draw is compared with what the read API returns for the same run: the same numbers.
"""

from __future__ import annotations

import io
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from tests import dashboard_seed as seed
from tests.integration.test_dashboard_pages import APP, assert_clean, chart_data, chart_titles
from trainmon import cli
from trainmon.settings import Settings, environment

pytestmark = pytest.mark.integration

READER = os.environ.get("TRAINMON_TEST_DASHBOARD_USER", "reader")
DONE = "hist-done"  # finished on HOSTS[0] 25 to 5 minutes ago, inside the seeded hardware's 30 minutes


@pytest.fixture(scope="module")
def history_db(stack: Settings) -> Iterator[tuple[Settings, seed.Seeded]]:
    from trainmon.clickhouse import connect
    from trainmon.deploy.migrate import migrate

    settings = stack.replace(clickhouse_database=stack.clickhouse_database + "_hist", dashboard_clickhouse_user=READER)
    migrate(settings, progress=lambda message: None)
    writer = connect(settings)
    try:
        seeded = seed.seed(writer)
        started, ended = seeded.now - timedelta(minutes=25), seeded.now - timedelta(minutes=5)
        writer.insert("runs", [[seed.PROJECT, DONE, "done", "dora", "finished", ["hist"], 1, [seed.HOSTS[0]], started,
                                ended, ended, 99, json.dumps({"lr": 0.5}), seeded.now]],
                      column_names=["project", "run", "name", "user", "status", "tags", "world_size", "hosts",
                                    "started_at", "ended_at", "last_seen", "last_step", "config", "updated_at"])
        writer.insert("metric_points", [[seed.PROJECT, DONE, 0, seed.HOSTS[0], "loss", s, s / 10, 1 / (s + 1),
                                         started + timedelta(seconds=12 * s)] for s in range(100)],
                      column_names=["project", "run", "rank", "host", "name", "step", "epoch", "value", "time"])
    finally:
        writer.close()
    yield settings, seeded
    admin = connect(settings, database="default")
    admin.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
    admin.close()


@pytest.fixture
def history(history_db):
    from trainmon.history import History

    with History(history_db[0]) as opened:
        yield opened


@pytest.fixture
def run_page(history_db, monkeypatch):
    """The dashboard's run page of a run, on a tab, rendered by AppTest as the reader."""
    from streamlit.testing.v1 import AppTest

    settings, _ = history_db
    monkeypatch.delenv("TRAINMON_CONFIG", raising=False)
    for name, value in {"URL": settings.clickhouse, "DATABASE": settings.clickhouse_database}.items():
        monkeypatch.setenv(f"TRAINMON_CLICKHOUSE_{name}", value)
    monkeypatch.setenv("TRAINMON_DASHBOARD_CLICKHOUSE_USER", READER)
    monkeypatch.setenv("TRAINMON_DASHBOARD_REFRESH_S", "0")

    def open_page(run: str, tab: str = "Metrics", **state: object):
        at = AppTest.from_file(APP, default_timeout=60)
        at.run()
        at.query_params.update(project=seed.PROJECT, run=run)
        at.switch_page("views/run.py")
        at.run()
        # the page's widgets keep the run (a rerun does not read the URL again), then the tab and the rest
        for key, value in {"project": seed.PROJECT, "run": run, "tab": tab, **state}.items():
            at.session_state[key] = value
        at.run()
        assert_clean(at)
        return {title: data for title, data in zip(chart_titles(at), chart_data(at))}

    return open_page


def same_numbers(drawn: pd.DataFrame, read: pd.DataFrame, keys: list[str]) -> None:
    drawn, read = (f.sort_values(keys).reset_index(drop=True) for f in (drawn, read))
    assert len(drawn) == len(read) > 0
    for key in keys:
        assert list(drawn[key].astype(str)) == list(read[key].astype(str)), key
    for column in ("min", "max", "mean"):
        np.testing.assert_array_equal(drawn[column].to_numpy(float), read[column].to_numpy(float), column)


@pytest.mark.parametrize("x", ["step", "epoch"])
def test_metric_series_are_the_numbers_the_run_page_draws(run_page, history, x: str) -> None:
    drawn = run_page(seed.LIVE_RUN, x=x, metrics=["loss", "val_loss"])["Loss"]  # defaults: 500 points, all ranks
    read = history.metrics(seed.LIVE_RUN, ["loss", "val_loss"], x=x)
    assert read.groupby("name").size().max() <= 500 and set(read["name"]) == {"loss", "val_loss"}
    same_numbers(drawn.rename(columns={"metric": "name"}), read, ["name", "x"])


def test_hardware_is_what_the_hardware_tab_draws(run_page, history) -> None:
    drawn = run_page(DONE, tab="Hardware")["GPU utilisation"]
    read = history.hardware(DONE, ["util_percent"])
    assert read.attrs["source"] == "raw" and set(read["host"]) == {seed.HOSTS[0]}
    read = read[read["gpu"] >= 0].assign(device=lambda f: f["host"] + ":" + f["gpu"].astype(str))
    drawn = drawn.assign(x=pd.to_datetime(drawn["x"], utc=True))
    same_numbers(drawn, read.assign(x=pd.to_datetime(read["x"], utc=True)), ["device", "x"])


def test_it_reads_as_the_read_only_user_and_cannot_write(history) -> None:
    assert history.client.query("SELECT currentUser()").result_rows[0][0] == READER
    with pytest.raises(Exception, match="(?i)readonly|not enough privileges|ACCESS_DENIED"):
        history.client.command(f"INSERT INTO runs (project, run) VALUES ('{seed.PROJECT}', 'forged')")


def test_runs_run_config_and_summary(history, history_db) -> None:
    _, seeded = history_db
    runs = history.runs(project=seed.PROJECT, status="finished")
    assert set(runs["run"]) == {seed.DONE_RUN, DONE}
    record = history.run(seed.LIVE_RUN)  # the project is looked up from the run id
    assert (record["project"], record["status"], record["world_size"]) == (seed.PROJECT, "running", 4)
    assert history.config(seed.LIVE_RUN, flat=True)["optimizer.name"] == "adamw"
    summary = history.summary(DONE).set_index("name")
    assert summary.loc["loss", "last"] == 1 / 100 and summary.loc["loss", "step"] == 99
    from trainmon.history import RunNotFound

    with pytest.raises(RunNotFound, match="no run 'nope'"):
        history.run("nope")
    with pytest.raises(RunNotFound, match=f"it is in {seed.PROJECT}"):
        history.run(seed.LIVE_RUN, project=seed.OTHER_PROJECT)


def test_export_writes_every_raw_point_and_the_record(history, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    exported = history.export(seed.LIVE_RUN, tmp_path / "run.parquet")
    table = pq.read_table(exported.path)
    expected = history.client.query("SELECT count() FROM metric_points FINAL WHERE run = {r:String}",
                                    parameters={"r": seed.LIVE_RUN}).result_rows[0][0]
    assert exported.points == table.num_rows == expected and exported.metrics == len(seed.METRICS)
    frame = table.to_pandas()
    loss = frame[(frame["name"] == "loss") & (frame["rank"] == 0)]
    assert list(loss["step"]) == list(range(0, 1001, 10))
    record = json.loads(table.schema.metadata[b"trainmon.run"])
    assert record["config"]["batch_size"] == 256 and record["run"] == seed.LIVE_RUN


@pytest.fixture
def shell(history_db, monkeypatch, capsys):
    """`trainmon ...` in this process with the module's settings; returns (exit code, stdout, stderr)."""
    monkeypatch.delenv("TRAINMON_CONFIG", raising=False)
    for name, value in environment(history_db[0]).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TRAINMON_CLICKHOUSE_URL", history_db[0].clickhouse)

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_cli_runs_ls_in_json_csv_and_text(shell, history) -> None:
    code, out, _ = shell("runs", "ls", "--project", seed.PROJECT, "--json")
    listed = json.loads(out)
    assert code == 0 and {r["run"] for r in listed} == set(history.runs(project=seed.PROJECT)["run"])
    live = next(r for r in listed if r["run"] == seed.LIVE_RUN)
    assert live["tags"] == ["baseline", "resnet"] and live["started_at"].endswith("+00:00")
    code, out, _ = shell("runs", "ls", "--status", "failed", "--csv")
    frame = pd.read_csv(io.StringIO(out))
    assert code == 0 and list(frame["run"]) == [seed.FAILED_RUN]
    code, out, _ = shell("runs", "ls", "--project", seed.OTHER_PROJECT)
    assert code == 0 and seed.OTHER_RUN in out and seed.LIVE_RUN not in out


def test_cli_runs_show_prints_the_record_config_and_metrics(shell) -> None:
    code, out, _ = shell("runs", "show", DONE, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["run"]["config"] == {"lr": 0.5}
    assert {m["name"]: m["last"] for m in shown["metrics"]} == {"loss": 0.01}
    code, out, _ = shell("runs", "show", DONE)
    assert code == 0 and "finished" in out and "config.lr" in out and "loss" in out
    code, out, _ = shell("runs", "show", DONE, "--csv")
    rows = dict(line.split(",", 1) for line in out.splitlines()[1:])
    assert rows["config.lr"] == "0.5" and rows["metrics.loss.step"] == "99"


def test_cli_alerts_ls_since_and_run(shell, history, history_db) -> None:
    _, seeded = history_db
    code, out, _ = shell("alerts", "ls", "--since", "1h", "--run", seed.LIVE_RUN, "--json")
    listed = json.loads(out)
    assert code == 0 and [a["rule"] for a in listed] == [seed.FIRING_RUN_RULE]
    expected = history.alerts(since=seeded.now - timedelta(hours=1), run=seed.LIVE_RUN)
    assert [a["fingerprint"] for a in listed] == list(expected["fingerprint"])
    code, out, _ = shell("alerts", "ls", "--since", "1h", "--csv")
    fingerprints = set(pd.read_csv(io.StringIO(out))["fingerprint"])
    assert seeded.fingerprints[seed.FIRING_RULE] in fingerprints
    assert seeded.fingerprints[seed.RESOLVED_RULE] not in fingerprints  # resolved 70 minutes ago
    code, out, _ = shell("alerts", "incidents", "--json")
    assert code == 0 and seed.INCIDENT in {i["incident"] for i in json.loads(out)}


def test_cli_errors_are_one_line(shell) -> None:
    code, out, err = shell("runs", "show", "nope")
    assert (code, out) == (2, "") and err.startswith("trainmon: error: no run 'nope'") and err.count("\n") == 1
    assert shell("runs", "ls", "--order-by", "nonsense")[0] == 2
    with pytest.raises(SystemExit):
        shell("alerts", "ls", "--since", "last tuesday")
