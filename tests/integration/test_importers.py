"""`trainmon import` into the real ClickHouse, read back with trainmon.history as the read-only user.

A TensorBoard log written by tensorboardX and MLflow stores round-trip: every step, wall time, value
and parameter comes back. An import cut short and run again counts every point once, rollups included.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.unit.test_history_import import file_store, needs_tensorboardx, sqlite_store
from trainmon import cli
from trainmon.settings import Settings, environment

pytestmark = pytest.mark.integration

READER = os.environ.get("TRAINMON_TEST_DASHBOARD_USER", "reader")
STEPS = 300
# 30 days ago: old history, but inside metric_points' 730-day TTL (older points are dropped by ClickHouse)
T0 = float(int(time.time()) - 30 * 86400)
T_MS = int(T0 * 1000)


@pytest.fixture
def target(migrated: Settings, monkeypatch) -> Iterator[Settings]:
    """The session's database, the CLI pointed at it, reads as the reader; a project per test."""
    settings = migrated.replace(dashboard_clickhouse_user=READER)
    monkeypatch.delenv("TRAINMON_CONFIG", raising=False)
    for name, value in environment(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TRAINMON_CLICKHOUSE_URL", settings.clickhouse)
    yield settings


@pytest.fixture
def history(target: Settings):
    from trainmon.history import History

    with History(target) as opened:
        yield opened


def points(history, run: str):
    frame = history.client.query_df(
        "SELECT name, step, toFloat64(toUnixTimestamp64Micro(time)) / 1e6 AS time, value FROM metric_points FINAL "
        "WHERE run = {r:String} ORDER BY name, step", parameters={"r": run})
    return {(row.name, row.step): (row.time, row.value) for row in frame.itertuples()}


def test_a_tensorboardx_log_round_trips(target: Settings, history, tmp_path: Path, capsys) -> None:
    needs_tensorboardx()
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams

    project, wrote = f"tb-{uuid.uuid4().hex[:6]}", {}
    with SummaryWriter(str(tmp_path / "logs" / "lr0.1")) as writer:
        for step in range(STEPS):
            for tag, value in (("train/loss", 2.0 / (step + 1)), ("lr", 0.1 * 0.99 ** step)):
                value = math.nan if (tag, step) == ("train/loss", 200) else value
                when = T0 + step * 1.25 + (0.5 if tag == "lr" else 0.0)
                writer.add_scalar(tag, value, step, walltime=when)
                wrote[(tag, step)] = (when, float(np.float32(value)))  # TensorBoard keeps float32
        for summary in hparams({"lr": 0.1, "optimizer": "adam", "layers": 12}, {}):
            writer.file_writer.add_summary(summary, walltime=T0)
    assert cli.main(["import", "tensorboard", str(tmp_path / "logs"), "--project", project]) == 0
    assert f"{STEPS * 2:,} points of 2 metric(s), steps 0..{STEPS - 1}" in capsys.readouterr().out

    (run,) = history.runs(project=project)["run"]
    record = history.run(run)
    assert (record["status"], record["name"], record["last_step"]) == ("finished", "lr0.1", STEPS - 1)
    assert record["config"] == {"lr": 0.1, "optimizer": "adam", "layers": 12}
    assert record["started_at"].timestamp() == T0
    assert record["ended_at"].timestamp() == T0 + (STEPS - 1) * 1.25 + 0.5
    read = points(history, run)
    assert read.keys() == wrote.keys()
    for key, (when, value) in wrote.items():
        assert read[key][0] == pytest.approx(when, abs=1e-6), key  # microseconds: the column's precision
        assert read[key][1] == value or (math.isnan(value) and math.isnan(read[key][1])), key
    series = history.metrics(run, "train/loss", points=STEPS)  # raw buckets of one step: the exact values
    assert int(series["non_finite"].sum()) == 1 and series["max"].max() == pytest.approx(2.0)

    assert cli.main(["import", "tensorboard", str(tmp_path / "logs"), "--project", project]) == 0
    assert "skipped" in capsys.readouterr().out  # a second import writes nothing
    assert len(points(history, run)) == len(wrote)


@pytest.mark.parametrize("store", ["files", "sqlite"])
def test_mlflow_runs_round_trip(target: Settings, history, tmp_path: Path, store: str, capsys) -> None:
    project, mlflow_id = f"mlf-{store}-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex  # run ids are unique in trainmon
    uri = (sqlite_store(tmp_path / "mlflow.db", mlflow_id, T_MS) if store == "sqlite"
           else str(file_store(tmp_path / "mlruns", mlflow_id, T_MS)))
    assert cli.main(["import", "mlflow", uri, "--project", project, "--run-id", mlflow_id]) == 0
    assert "imported mlflow-" in capsys.readouterr().out
    run = f"mlflow-{mlflow_id}"
    record = history.run(run, project=project)
    assert (record["status"], record["name"], record["user"]) == ("finished", "r1", "alice")
    assert record["started_at"].timestamp() == T_MS / 1000 and record["ended_at"].timestamp() == T_MS / 1000 + 9
    assert record["config"]["lr"] == 0.001 and record["config"]["opt/name"] == "adam"
    assert "team=vision" in record["tags"] and record["code"]["mlflow_run_id"] == mlflow_id
    read = points(history, run)
    assert [read[("train/loss", s)] for s in range(5)] == [((T_MS + s) / 1000, 1 / (s + 1)) for s in range(5)]
    assert math.isnan(read[("val_loss", 4)][1])


def test_an_import_cut_short_and_run_again_counts_every_point_once(target: Settings, history, monkeypatch) -> None:
    from trainmon.agent.importers import load
    from trainmon.agent.importers.run import ImportedRun
    from trainmon.stream_processors.sink import ClickHouseSink

    class Dies(ClickHouseSink):
        """Writes its first batch, then the process dies."""

        def write(self, batch):
            if getattr(self, "wrote", False):
                raise KeyboardInterrupt
            self.wrote = True
            return super().write(batch)

    monkeypatch.setattr(load, "CHUNK_VALUES", 1000)
    run = ImportedRun(project=f"cut-{uuid.uuid4().hex[:6]}", run=f"cut-{uuid.uuid4().hex[:6]}", source="test",
                      started=T0, status="finished",
                      points=[(name, s, T0 + s, float(s)) for s in range(2500) for name in ("a", "b")])
    with pytest.raises(KeyboardInterrupt):
        load.load(target, run, sink_factory=Dies)
    assert history.runs(project=run.project).empty  # not listed: its run row comes last
    assert load.load(target, run).state == "imported"
    counted = history.client.query(
        "SELECT (SELECT count() FROM metric_points WHERE run = {r:String}), "
        "(SELECT sum(count) FROM metric_rollup_1m WHERE run = {r:String}), "
        "(SELECT sum(count) FROM metric_rollup_1h WHERE run = {r:String})", parameters={"r": run.run}).result_rows[0]
    assert tuple(counted) == (5000, 5000, 5000)  # the first chunk, sent twice, was dropped as a duplicate
    assert load.load(target, run).state == "exists"
