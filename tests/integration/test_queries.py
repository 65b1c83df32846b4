"""dashboard.queries on the real ClickHouse, read as the read-only user `reader`.

Rows are seeded into the real tables by the default (writer) user, under a project and hosts of
this module's own, so data other modules write to the session database does not matter.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from trainmon.dashboard import queries
from trainmon.dashboard.queries import MAX_POINTS, Queries
from trainmon.deploy.migrate import migrate
from trainmon.clickhouse import connect

pytestmark = pytest.mark.integration

TAG = uuid.uuid4().hex[:6]
P = f"qproj-{TAG}"
OTHER = f"qother-{TAG}"
H1, H2, H3 = (f"qhost-{TAG}-{i}" for i in (1, 2, 3))
NOW = datetime.now(timezone.utc).replace(microsecond=0)
T0 = NOW - timedelta(hours=6)  # metric time of step 0
SPIKE_STEP, NAN_STEP, INF_STEP = 5_000, 7_000, 7_001
LONG_STEPS = 300_000  # more raw points than RAW_ROWS_MAX: read from the 1-minute rollup
NO_SETTINGS = {"async_insert": 0}

RUN_COLUMNS = ["project", "run", "name", "user", "status", "tags", "world_size", "hosts", "started_at", "ended_at",
               "last_seen", "last_step", "config", "datasets", "model", "code", "environment", "updated_at"]
POINT_COLUMNS = ["project", "run", "rank", "host", "name", "step", "epoch", "value", "time"]
SAMPLE_COLUMNS = ["host", "gpu", "gpu_uuid", "name", "value", "time"]

NASTY = [
    "x' OR 1=1 --",
    "'; DROP TABLE runs; --",
    "\\' OR '1'='1",
    "Robert'); DROP TABLE alerts; --",
    "') UNION ALL SELECT * FROM system.users --",
    "{p0:String}",
    "%s %(x)s {x}",
    "é漢字🙂\u202e",
    "\x00\t\n\\",
    "a" * 100_000,
]


def _run_row(run, status, *, user, tags, config, updated, ended=None, world=2, last_step=9_999):
    return [P, run, f"name of {run}", user, status, tags, world, [H1, H2], T0, ended, updated, last_step,
            json.dumps(config), json.dumps([{"name": "cifar", "version": "v2"}]), json.dumps({"params": 1000}),
            json.dumps({"commit": "abc123"}), json.dumps({"python": "3.11"}), updated]


def _seed(writer) -> None:
    later = NOW - timedelta(minutes=1)
    runs = [
        _run_row("r-a", "running", user="alice", tags=["baseline", "big"], updated=NOW - timedelta(hours=1),
                 config={"lr": 0.001, "optimizer": {"name": "adam", "beta": 0.9}, "layers": [1, 2]}),
        _run_row("r-a", "finished", user="alice", tags=["baseline", "big"], updated=later, ended=later,
                 config={"lr": 0.001, "optimizer": {"name": "adam", "beta": 0.9}, "layers": [1, 2]}),
        _run_row("r-b", "running", user="bob", tags=["baseline"], updated=later,
                 config={"lr": 0.01, "optimizer": {"name": "adam", "beta": 0.9}, "layers": [1, 2, 3]}),
        _run_row("r-c", "failed", user="alice", tags=["small"], updated=later, ended=later, world=1,
                 config={"lr": 0.1, "optimizer": {"name": "sgd"}}),
        _run_row("r-long", "finished", user="carol", tags=["long"], updated=later, ended=later, world=1,
                 config={"lr": 0.001}, last_step=LONG_STEPS - 1),
    ]
    other = list(runs[2])
    other[0] = OTHER
    writer.insert("runs", runs + [other], column_names=RUN_COLUMNS, settings=NO_SETTINGS)
    writer.insert("run_ranks", [
        [P, "r-a", 0, 0, H1, "running", T0, NOW - timedelta(hours=1), 5_000, NOW - timedelta(hours=1)],
        [P, "r-a", 0, 0, H1, "finished", T0, later, 9_999, later],
        [P, "r-a", 1, 0, H2, "finished", T0, later, 9_999, later],
    ], column_names=["project", "run", "rank", "local_rank", "host", "status", "started_at", "last_seen", "last_step",
                     "updated_at"], settings=NO_SETTINGS)

    # Training points: r-a ranks 0 and 1 (loss = 1 / (step + 1), rank 1 twice as high), a spike, a NaN
    # and an Inf on rank 0; r-b 5,000 steps; all 10 steps a second from T0.
    def loss(rank, step):
        if rank == 0 and step == SPIKE_STEP:
            return 100.0
        if rank == 0 and step == NAN_STEP:
            return math.nan
        if rank == 0 and step == INF_STEP:
            return math.inf
        return (1 + rank) / (step + 1)

    points = [[P, "r-a", rank, (H1, H2)[rank], "loss", s, s / 1000, loss(rank, s), T0 + timedelta(seconds=s / 10)]
              for rank in (0, 1) for s in range(10_000)]
    points += [[P, "r-a", 0, H1, "accuracy", s, s / 1000, s / 10_000, T0 + timedelta(seconds=s / 10)]
               for s in range(0, 10_000, 10)]
    points += [[P, "r-b", 0, H1, "loss", s, s / 1000, 2 / (s + 1), T0 + timedelta(seconds=s / 10)] for s in range(5_000)]
    points += [[P, "r-c", 0, H1, "loss", s, 0.0, 0.5, T0 + timedelta(seconds=s)] for s in range(10)]
    points += [[OTHER, "r-b", 0, H1, "loss", s, 0.0, -50.0, T0 + timedelta(seconds=s)] for s in range(10)]
    writer.insert("metric_points", points, column_names=POINT_COLUMNS, settings=NO_SETTINGS)
    # A long run (one step a second for 300,000 s, ~3.5 days) generated by ClickHouse; one spike.
    start = int((NOW - timedelta(seconds=LONG_STEPS)).timestamp())
    writer.command(
        "INSERT INTO metric_points (project, run, rank, host, name, step, epoch, value, time) "
        f"SELECT '{P}', 'r-long', 0, '{H1}', 'loss', number, number / 1000, "
        f"if(number = 123457, 1000.0, 1 / (number + 1)), toDateTime64({start} + number, 6, 'UTC') "
        f"FROM numbers({LONG_STEPS})", settings=NO_SETTINGS)

    # System samples: H1 and H2 with two GPUs each, the last 10 minutes at 1 Hz; H3 went silent 5 minutes ago.
    samples = []
    for host, until in ((H1, NOW), (H2, NOW), (H3, NOW - timedelta(minutes=5))):
        for second in range(600):
            at = until - timedelta(seconds=599 - second)
            samples.append([host, -1, "", "cpu_percent", 10.0 + second % 7, at])
            for gpu in (0, 1):
                temperature = 99.0 if (host, gpu, second) == (H1, 0, 300) else 60.0 + gpu
                samples += [
                    [host, gpu, f"GPU-{gpu}", "util_percent", 90.0 - 10 * gpu, at],
                    [host, gpu, f"GPU-{gpu}", "mem_used_bytes", 40e9 + gpu * 1e9, at],
                    [host, gpu, f"GPU-{gpu}", "mem_total_bytes", 80e9, at],
                    [host, gpu, f"GPU-{gpu}", "temperature_c", temperature, at],
                    [host, gpu, f"GPU-{gpu}", "power_w", 300.0 + gpu, at],
                ]
    writer.insert("system_samples", samples, column_names=SAMPLE_COLUMNS, settings=NO_SETTINGS)
    writer.insert("gpus", [[host, gpu, f"GPU-{gpu}", "H100", "", NOW] for host in (H1, H2) for gpu in (0, 1)],
                  column_names=["host", "gpu", "gpu_uuid", "gpu_name", "last_error", "last_seen"], settings=NO_SETTINGS)

    def alert(fp, rule, state, severity, run, labels, starts, time, values=None, ends=None):
        return [fp, rule, state, severity, P, run, {**labels, "alertname": rule, "severity": severity},
                {"summary": f"{rule} on {run or labels.get('host')}"}, values or {}, starts, ends, time]

    straggler_labels = {"project": P, "run": "r-a", "rank": "1", "host": H2}
    writer.insert("alerts", [
        alert(f"{TAG}-f1", "straggler", "firing", "warning", "r-a", straggler_labels, NOW - timedelta(minutes=5),
              NOW - timedelta(minutes=5), {"value": 3.0, "median": 1.0, "ratio": 3.0}),
        alert(f"{TAG}-f2", "gpu_temperature_high", "firing", "warning", "", {"host": H1, "gpu": "0"},
              NOW - timedelta(hours=2), NOW - timedelta(hours=2), {"value": 90.0}),
        alert(f"{TAG}-f2", "gpu_temperature_high", "resolved", "warning", "", {"host": H1, "gpu": "0"},
              NOW - timedelta(hours=2), NOW - timedelta(hours=1), {"value": 90.0}, ends=NOW - timedelta(hours=1)),
        alert(f"{TAG}-f3", "loss_non_finite", "firing", "critical", "r-b", {"project": P, "run": "r-b"},
              NOW - timedelta(minutes=30), NOW - timedelta(minutes=30)),
        alert(f"{TAG}-f3", "loss_non_finite", "firing", "critical", "r-b", {"project": P, "run": "r-b"},
              NOW - timedelta(minutes=30), NOW - timedelta(minutes=10)),  # the hourly repeat: same episode
    ], column_names=["fingerprint", "rule", "state", "severity", "project", "run", "labels", "annotations", "values",
                     "starts_at", "ends_at", "time"], settings=NO_SETTINGS)
    delivery = ["straggler", "firing", "alertmanager", "alertmanager"]
    writer.insert("alert_deliveries", [
        [f"{TAG}-f1", *delivery, 1, "retrying", 503, "unavailable", 12.5, NOW - timedelta(minutes=5),
         NOW - timedelta(minutes=5)],
        [f"{TAG}-f1", *delivery, 2, "delivered", 200, "", 3.0, NOW - timedelta(minutes=5),
         NOW - timedelta(minutes=4)],
    ], column_names=["fingerprint", "rule", "state", "route", "kind", "attempt", "outcome", "http_status", "error",
                     "latency_ms", "notified_at", "time"], settings=NO_SETTINGS)
    writer.insert("window_aggregates", [
        ["ranks", "1m", P, "r-b", -1, "", -1, "step_time_s", NOW - timedelta(minutes=3), NOW - timedelta(minutes=2),
         4, 1.5, 1.0, 3.0, 1.0, 0.8, 1.0, NOW],
    ], column_names=["scope", "window", "project", "run", "rank", "host", "gpu", "name", "window_start", "window_end",
                     "count", "mean", "min", "max", "last", "stddev", "median", "updated_at"], settings=NO_SETTINGS)


@pytest.fixture(scope="module")
def writer(stack):
    global NOW, T0  # "now" is when the data is seeded, not when the module was collected minutes earlier
    NOW = datetime.now(timezone.utc).replace(microsecond=0)
    T0 = NOW - timedelta(hours=6)
    migrate(stack, progress=lambda message: None)
    client = connect(stack)
    _seed(client)
    yield client
    client.close()


@pytest.fixture(scope="module")
def reader_client(stack, writer):
    client = connect(stack.replace(clickhouse_user="reader"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def q(reader_client) -> Queries:
    return Queries(reader_client)


def _table_counts(writer) -> dict[str, int]:
    """Every table of the database, with exact row counts of those a statement could drop rows from."""
    tables = {name: -1 for (name,) in writer.query("SHOW TABLES").result_rows}
    for table in ("runs", "run_ranks", "alerts", "alert_deliveries", "gpus"):
        tables[table] = writer.query(f"SELECT count() FROM {table} FINAL").result_rows[0][0]
    tables["users"] = writer.query("SELECT count() FROM system.users WHERE name IN ('default', 'reader')").result_rows[0][0]
    return tables


# --- the reader -------------------------------------------------------------------------------------


def test_the_dashboard_reads_as_the_read_only_user(reader_client):
    assert reader_client.query("SELECT currentUser(), getSetting('readonly')").result_rows == [("reader", 1)]
    with pytest.raises(Exception, match="(?i)readonly"):
        reader_client.command("INSERT INTO runs (project, run) VALUES ('x', 'y')")


# --- runs ---------------------------------------------------------------------------------------------


def test_runs_lists_the_newest_snapshot_with_best_value_and_firing_alerts(q):
    runs = q.runs(project=P, metric="loss", order_by="run", descending=False)
    assert list(runs["run"]) == ["r-a", "r-b", "r-c", "r-long"]
    assert list(runs.columns) == ["project", "run", "name", "status", "user", "tags", "started_at", "ended_at",
                                  "duration_s", "world_size", "hosts", "last_step", "last_seen",
                                  "events_dropped", "best", "alerts_firing"]
    a = runs.set_index("run").loc["r-a"]
    assert a["status"] == "finished"  # FINAL: the newer snapshot
    assert a["tags"] == ["baseline", "big"] and a["hosts"] == [H1, H2] and a["world_size"] == 2
    assert a["best"] == pytest.approx(1 / 10_000)  # the NaN / Inf excluded
    assert a["duration_s"] == pytest.approx((timedelta(hours=6) - timedelta(minutes=1)).total_seconds())
    assert dict(zip(runs["run"], runs["alerts_firing"])) == {"r-a": 1, "r-b": 1, "r-c": 0, "r-long": 0}
    assert str(runs["started_at"].dt.tz) == "UTC"


def test_runs_filters_and_sorts(q):
    assert list(q.runs(project=P, user="alice", order_by="run", descending=False)["run"]) == ["r-a", "r-c"]
    assert list(q.runs(project=P, status=["failed", "finished"], order_by="run", descending=False)["run"]) == [
        "r-a", "r-c", "r-long"]
    assert list(q.runs(project=P, tag="baseline", order_by="run", descending=False)["run"]) == ["r-a", "r-b"]
    assert list(q.runs(project=P, tag=["baseline", "big"])["run"]) == ["r-a"]
    assert list(q.runs(project=P, search="NAME OF R-C")["run"]) == ["r-c"]
    assert set(q.runs(search=TAG)["project"]) == set()  # project names are not searched
    both = q.runs(project=[P, OTHER], user="bob")
    assert sorted(both["project"]) == sorted([P, OTHER])
    by_best = q.runs(project=P, metric="loss", order_by="best", descending=False)
    assert list(by_best["run"]) == ["r-long", "r-a", "r-b", "r-c"]  # 1/300000 < 1/10000 < 2/5000 < 0.5
    worst_first = q.runs(project=P, metric="loss", metric_mode="max", order_by="best")
    assert worst_first["run"].iloc[0] == "r-long" and worst_first["best"].iloc[0] == 1000.0
    by_alerts = q.runs(project=P, metric="loss", order_by="alerts_firing")
    assert list(by_alerts["alerts_firing"]) == [1, 1, 0, 0] and set(by_alerts["run"][:2]) == {"r-a", "r-b"}
    assert by_alerts.set_index("run").loc["r-b", "best"] == pytest.approx(2 / 5_000)
    page = q.runs(project=P, order_by="run", descending=False, limit=2, offset=1)
    assert list(page["run"]) == ["r-b", "r-c"]
    assert q.runs(project=P, metric="accuracy", metric_mode="last", order_by="run").set_index("run")["best"].dropna()\
        .to_dict() == {"r-a": pytest.approx(0.999)}
    with pytest.raises(ValueError, match="order_by"):
        q.runs(order_by="started_at; DROP TABLE runs")


def test_run_record_parses_its_documents_and_lists_ranks(q):
    record = q.run(P, "r-a")
    assert record["status"] == "finished" and record["user"] == "alice"
    assert record["config"] == {"lr": 0.001, "optimizer": {"name": "adam", "beta": 0.9}, "layers": [1, 2]}
    assert record["datasets"] == [{"name": "cifar", "version": "v2"}]
    assert record["code"] == {"commit": "abc123"} and record["environment"] == {"python": "3.11"}
    assert [(r["rank"], r["host"], r["status"], r["last_step"]) for r in record["ranks"]] == [
        (0, H1, "finished", 9_999), (1, H2, "finished", 9_999)]
    assert q.run(P, "nope") is None
    ranks = q.ranks(P, "r-a")
    assert list(ranks.columns) == ["rank", "host", "local_rank", "status", "started_at", "last_seen", "last_step",
                                   "events_dropped"]
    assert len(ranks) == 2


def test_lists_for_filters(q):
    assert P in q.projects() and OTHER in q.projects()
    assert q.users(P) == ["alice", "bob", "carol"]
    assert q.tags(P) == ["baseline", "big", "long", "small"]
    assert q.metric_names(P, "r-a") == ["accuracy", "loss"]
    assert {"finished", "running", "failed"} <= set(q.statuses())


# --- training series ---------------------------------------------------------------------------------


def test_series_downsamples_by_step_and_keeps_the_spike(q):
    frame = q.series(P, ["r-a", "r-b"], "loss", points=100, rank=0)
    assert list(frame.columns) == ["run", "x", "min", "max", "mean", "last", "count", "non_finite"]
    assert frame.attrs["sources"] == {"r-a": "raw", "r-b": "raw"}
    a, b = frame[frame["run"] == "r-a"], frame[frame["run"] == "r-b"]
    assert len(a) == 100 and len(b) == 100
    assert a["count"].sum() == 10_000 and b["count"].sum() == 5_000
    assert a["max"].max() == 100.0  # the single spike survives downsampling 100:1
    spike = a[a["max"] == 100.0].iloc[0]
    assert spike["x"] <= SPIKE_STEP < spike["x"] + 100
    assert a["non_finite"].sum() == 2 and not a["max"].isna().any()
    bad = a[a["non_finite"] > 0].iloc[0]
    assert bad["x"] == 7_000 and bad["count"] == 100 and math.isfinite(bad["mean"])
    assert a.iloc[0]["x"] == 0 and a.iloc[0]["max"] == 1.0 and a.iloc[0]["min"] == pytest.approx(1 / 100)
    assert a.iloc[-1]["last"] == pytest.approx(1 / 10_000)  # the value at the bucket's highest step


def test_series_pools_ranks_or_reads_one_and_handles_ranges(q):
    pooled = q.series(P, "r-a", "loss", points=10)
    assert len(pooled) == 10 and pooled["count"].sum() == 20_000
    assert pooled.iloc[0]["max"] == 2.0  # rank 1's first value
    one = q.series(P, "r-a", "loss", points=10, rank=1)
    assert one["count"].sum() == 10_000 and one["max"].max() == 2.0
    zoom = q.series(P, "r-a", "loss", points=50, rank=0, start=4_000, end=5_999)
    assert len(zoom) == 50 and zoom["x"].min() == 4_000 and zoom["count"].sum() == 2_000
    assert zoom["max"].max() == 100.0
    assert q.series(P, "r-a", "loss", points=10, rank=-1)["count"].sum() == 20_000  # negative: all ranks
    assert q.series(P, "r-a", "loss", points=10, rank=0, start=-5, end=99)["count"].sum() == 100
    late = q.series(P, "r-a", "loss", x="time", points=20, rank=0, start=T0 + timedelta(seconds=500.5))
    assert late["count"].sum() == 10_000 - 5_005 and late["x"].min() >= T0 + timedelta(seconds=500)
    every = q.series(P, "r-a", "loss", points=MAX_POINTS * 10, rank=0)
    assert len(every) == MAX_POINTS  # points is capped
    assert q.series(P, ["nope"], "loss").empty and q.series(P, [], "loss").empty


@pytest.mark.parametrize("points", [50, 1_000])
@pytest.mark.parametrize("rank", [None, 0])
@pytest.mark.parametrize("absent", [0, 10])
def test_the_whole_run_plan_from_the_hourly_rollup_is_the_minute_rollups(q, points, rank, absent):
    """The 1h rollup plans whole runs (60x fewer rows at a billion points); its plan must be exactly the
    one the 1m rollup gives: table, bounds and bucket width per run. Runs asked for but absent still
    share the raw budget: with 10 of them r-a's 20,000 points pooled are past its share, and its 17
    minutes decide between the 1m rollup and raw points."""
    runs = ["r-a", "r-b", "r-long"] + [f"absent-{i}" for i in range(absent)]
    hourly = q._hourly_step_plan(P, runs, "loss", points=points, rank=rank, source="auto")
    minute = q._minute_plan(P, runs, "loss", x="step", points=points, rank=rank, start=None, end=None, source="auto")
    assert hourly == minute
    assert hourly[0]["r-long"][0] == ("1h" if points == 50 else "1m")  # 84 hours: enough for 50 points only
    if absent and rank is None:
        assert hourly[0]["r-a"][0] == ("1m" if points == 50 else "raw")  # 17 x 4 >= 50 buckets, < 1,000


def test_series_by_time(q):
    frame = q.series(P, ["r-a"], "loss", x="time", points=60, rank=0)
    assert 30 <= len(frame) <= 60 and frame["count"].sum() == 10_000
    assert str(frame["x"].dt.tz) == "UTC"
    assert frame["x"].min() <= T0 and frame["x"].max() <= T0 + timedelta(seconds=1_000)
    assert frame["max"].max() == 100.0


def test_series_by_epoch(q, writer):
    frame = q.series(P, ["r-a", "r-b"], "loss", x="epoch", points=100, rank=0)
    a, b = frame[frame["run"] == "r-a"], frame[frame["run"] == "r-b"]
    assert len(a) == 100 and len(b) == 100  # the step buckets, x converted
    assert list(a["x"]) == pytest.approx([s / 1000 for s in range(0, 10_000, 100)])
    assert a["count"].sum() == 10_000 and a["max"].max() == 100.0  # the spike survives
    by_step = q.series(P, "r-long", "loss", points=1_000)
    long = q.series(P, "r-long", "loss", x="epoch", points=1_000)
    assert long.attrs["sources"] == {"r-long": "1m"}  # rollup buckets are mapped too
    assert list(long["x"]) == pytest.approx(list(by_step["x"] / 1000)) and long["count"].sum() == LONG_STEPS
    # 50 points: the run's 84 hours plan it from the 1h rollup, and its epochs come from metric_epochs_1h,
    # one row an hour (exact wherever a later hour's point follows; a last bucket that starts after the
    # last hour's first step takes that hour's epoch, at most an hour of steps early).
    by_step, hourly = q.series(P, "r-long", "loss", points=50), q.series(P, "r-long", "loss", x="epoch", points=50)
    assert hourly.attrs["sources"] == {"r-long": "1h"} and hourly["count"].sum() == LONG_STEPS
    assert list(hourly["x"])[:-1] == pytest.approx(list(by_step["x"] / 1000)[:-1])
    assert 0 <= by_step["x"].iloc[-1] / 1000 - hourly["x"].iloc[-1] <= 3.6
    epochs = q.epoch_map(P, ["r-long"], "loss", plan=by_step.attrs["plan"])
    start = int((NOW - timedelta(seconds=LONG_STEPS)).timestamp())  # r-long logs step n at start + n s
    assert len(epochs) == 50 and all((start + step) % 3600 == 0 for step in epochs["step"].iloc[1:])  # hours
    # A run that never logged an epoch has no epoch axis: left out, not plotted at epoch 0.
    writer.insert("metric_points", [[OTHER, "r-noepoch", 0, H1, "loss", s, math.nan, 1.0, T0] for s in range(50)],
                  column_names=POINT_COLUMNS, settings=NO_SETTINGS)
    assert not q.series(OTHER, "r-noepoch", "loss", x="step").empty
    assert q.series(OTHER, "r-noepoch", "loss", x="epoch").empty
    with pytest.raises(ValueError, match="epoch"):
        q.series(P, "r-a", "loss", x="wallclock")


def test_a_sessionless_client_reads_the_epoch_map_beside_the_buckets(stack, q):
    """The dashboard's client has no session (dashboard/components.py), so an epoch overlay sends its map
    query beside the buckets' on a second connection; the frame is the one read one after the other."""
    client = connect(stack.replace(clickhouse_user="reader"), autogenerate_session_id=False)
    try:
        beside = Queries(client)
        for points in (50, 1_000):
            expected = q.series(P, ["r-a", "r-b", "r-long"], "loss", x="epoch", points=points)
            pd.testing.assert_frame_equal(beside.series(P, ["r-a", "r-b", "r-long"], "loss", x="epoch", points=points),
                                          expected)
        assert "epochs" in beside.series(P, ["r-a", "r-long"], "loss", _with_epochs=True).attrs  # read beside
        assert "epochs" not in q.series(P, ["r-a", "r-long"], "loss", _with_epochs=True).attrs  # a session: after
    finally:
        client.close()


def test_long_runs_read_the_rollup_and_keep_peaks(q):
    auto = q.series(P, "r-long", "loss", points=1_000)
    assert auto.attrs["sources"] == {"r-long": "1m"}
    assert 250 <= len(auto) <= 1_000 and auto["count"].sum() == LONG_STEPS
    assert auto["max"].max() == 1000.0 and auto["min"].min() == pytest.approx(1 / LONG_STEPS)
    raw = q.series(P, "r-long", "loss", points=1_000, source="raw")
    assert len(raw) == 1_000 and raw["max"].max() == 1000.0 and raw["count"].sum() == LONG_STEPS
    hourly = q.series(P, "r-long", "loss", points=50)
    assert hourly.attrs["sources"] == {"r-long": "1h"} and len(hourly) <= 50 and hourly["max"].max() == 1000.0
    by_time = q.series(P, "r-long", "loss", x="time", points=500)
    assert len(by_time) <= 500 and by_time["max"].max() == 1000.0 and by_time["count"].sum() == LONG_STEPS


def _write_in_pieces(writer, run: str, pieces: int) -> None:
    """2,000 steps of `split` on ranks 0 and 1, one every 7 s (3.9 h), in `pieces` inserts of
    consecutive steps. 7 s: minutes and hours then straddle the step buckets' edges, so a partial row
    starting at a piece's first step can fall in a later step bucket than its merged row would."""
    start = (T0 + timedelta(days=1)).replace(second=0)  # clear of the other runs' hours
    edges = [2_000 * piece // pieces for piece in range(pieces + 1)]
    for first, end in zip(edges, edges[1:]):
        rows = [[P, run, rank, H1, "split", s, s / 500, (1 + rank) / (s + 1), start + timedelta(seconds=7 * s)]
                for s in range(first, end) for rank in (0, 1)]
        writer.insert("metric_points", rows, column_names=POINT_COLUMNS, settings=NO_SETTINGS)


@pytest.mark.parametrize("rank", [0, None])
def test_rollup_reads_do_not_depend_on_how_far_the_merges_got(q, writer, monkeypatch, rank):
    """A rollup holds one partial row per key and insert until the merges catch up, each with the
    step_min of its own insert; read as it stands, the answer would depend on the merge state (a
    cluster's shards, merged differently, gave 11 buckets where one node gave 10). The same points
    written in 10 unmerged inserts and in one must read the same."""
    def read(run: str) -> dict[str, pd.DataFrame]:
        frames = {f"{source} {points}": q.series(P, [run], "split", points=points, source=source, rank=rank
                                                  ).drop(columns="run")
                  for source in ("1m", "1h") for points in (3, 40)}
        monkeypatch.setattr(queries, "RAW_ROWS_MAX", 0)  # the spread from the rollups too (auto: raw here)
        for points in (3, 40):  # 3: from the 1h rollup (4 hours), 40: from the 1m one
            frames[f"spread {points}"] = q.rank_spread(P, run, "split", points=points)
            frames[f"epochs {points}"] = q.epoch_map(P, [run], "split", points=points).drop(columns="run")
        monkeypatch.undo()
        return frames

    rollups = {"metric_rollup_1m": "rank, bucket", "metric_rollup_1h": "rank, bucket",
               "metric_epochs_1m": "bucket", "metric_epochs_1h": "bucket"}  # table: its key after (project, run)
    for table in rollups:
        writer.command(f"SYSTEM STOP MERGES {table}")
    try:
        _write_in_pieces(writer, f"r-pieces-{rank}", 10)
        _write_in_pieces(writer, f"r-whole-{rank}", 1)
        for table, key in rollups.items():  # the case under test: partial rows, more than one per key
            rows, keys = writer.query(f"SELECT count(), uniqExact({key}) FROM {table} "
                                      f"WHERE project = '{P}' AND run = 'r-pieces-{rank}'").result_rows[0]
            assert rows > keys, table
        pieces, whole = read(f"r-pieces-{rank}"), read(f"r-whole-{rank}")
    finally:
        for table in rollups:
            writer.command(f"SYSTEM START MERGES {table}")
    assert whole["spread 3"].attrs["source"] == "1h" and whole["spread 40"].attrs["source"] == "1m"
    for name, frame in whole.items():
        assert len(frame) > 1, name
        pd.testing.assert_frame_equal(pieces[name], frame, obj=name)


def test_rank_spread(q):
    spread = q.rank_spread(P, "r-a", "loss", points=20)
    assert list(spread.columns) == ["x", "min", "median", "max", "mean", "ranks"]
    assert len(spread) == 20 and set(spread["ranks"]) == {2}
    assert (spread["max"] >= spread["min"]).all()
    first = spread.iloc[1]  # steps 500..999: rank 1's mean is twice rank 0's
    assert first["max"] == pytest.approx(2 * first["min"])


def test_config_diff_and_final_metrics(q):
    diff = q.config_diff(P, ["r-a", "r-b", "r-c"])
    assert list(diff.columns) == ["key", "r-a", "r-b", "r-c"]
    assert list(diff["key"]) == ["layers", "lr", "optimizer.beta", "optimizer.name"]
    rows = diff.set_index("key")
    assert rows.loc["lr"].tolist() == [0.001, 0.01, 0.1]
    assert rows.loc["layers"].tolist() == ["[1,2]", "[1,2,3]", None]
    assert rows.loc["optimizer.beta", "r-c"] is None
    same = q.config_diff(P, ["r-a", "r-a"])
    assert same.empty
    final = q.final_metrics(P, ["r-a", "r-b", "r-c"], "loss").set_index("run")
    assert final.loc["r-b", "final"] == pytest.approx(2 / 5_000) and final.loc["r-b", "lr"] == 0.01
    assert final.loc["r-a", "max"] == 100.0 and final.loc["r-a", "optimizer.name"] == "adam"
    assert final.loc["r-c", "step"] == 9


# --- hosts and GPUs -------------------------------------------------------------------------------------


def test_host_series_downsamples_raw_samples_and_keeps_the_spike(q):
    frame = q.host_series([H1], ["temperature_c", "util_percent"], NOW - timedelta(minutes=10), NOW, points=50)
    assert frame.attrs["source"] == "raw"
    assert list(frame.columns) == ["host", "gpu", "name", "x", "min", "max", "mean", "last", "count"]
    lines = frame.groupby(["gpu", "name"]).size()
    assert set(lines.index) == {(0, "temperature_c"), (1, "temperature_c"), (0, "util_percent"), (1, "util_percent")}
    assert (lines <= 50).all()
    hot = frame[(frame["gpu"] == 0) & (frame["name"] == "temperature_c")]
    assert hot["max"].max() == 99.0 and hot["count"].sum() == 600 and hot["min"].min() == 60.0
    one_gpu = q.host_series([H1, H2], "power_w", NOW - timedelta(minutes=10), NOW, gpu=1, points=10)
    assert set(one_gpu["host"]) == {H1, H2} and set(one_gpu["gpu"]) == {1} and set(one_gpu["last"]) == {301.0}


def test_host_series_reads_rollups_for_long_ranges(q):
    week = q.host_series([H1], ["temperature_c"], NOW - timedelta(days=3), NOW, gpu=0, points=100)
    assert week.attrs["source"] == "1m" and len(week) <= 100
    assert week["max"].max() == 99.0 and week["count"].sum() == 600
    month = q.host_series([H1], ["temperature_c"], NOW - timedelta(days=30), NOW, gpu=0, points=100)
    assert month.attrs["source"] == "1h" and len(month) <= 100 and month["max"].max() == 99.0
    # A source is skipped once its TTL has dropped the range: raw keeps 30 days, the 1-minute rollup a year.
    old_day = q.host_series([H1], ["temperature_c"], NOW - timedelta(days=31), NOW - timedelta(days=31, hours=-1))
    assert old_day.attrs["source"] == "1m" and old_day.empty
    old_year = q.host_series([H1], ["temperature_c"], NOW - timedelta(days=400), NOW - timedelta(days=399))
    assert old_year.attrs["source"] == "1h" and old_year.empty


def test_cluster_heatmap(q):
    cluster = q.cluster(minutes=15)
    assert list(cluster.columns) == ["host", "gpu", "util_percent", "mem_used_percent", "temperature_c", "power_w",
                                     "last_seen"]
    mine = cluster[cluster["host"].isin([H1, H2, H3])].set_index(["host", "gpu"])
    assert len(mine) == 6
    assert mine.loc[(H1, 0), "util_percent"] == 90.0 and mine.loc[(H1, 1), "util_percent"] == 80.0
    assert mine.loc[(H1, 1), "mem_used_percent"] == pytest.approx(100 * 41e9 / 80e9)
    assert mine.loc[(H1, 0), "temperature_c"] == 60.0  # the latest value, not the spike
    assert mine.loc[(H2, 1), "power_w"] == 301.0
    assert mine.loc[(H1, 0), "last_seen"] == NOW and mine.loc[(H3, 1), "last_seen"] == NOW - timedelta(minutes=5)
    assert {H1, H2, H3} <= set(q.hosts(minutes=15)) and H3 not in q.hosts(minutes=2)
    assert q.cluster(minutes=2)["host"].isin([H1, H2]).sum() == 4  # H3 is older than that


def test_silent_nodes(q):
    silent = q.silent_nodes(seconds=60)
    assert list(silent.columns) == ["host", "last_seen", "silent_s"]
    mine = silent[silent["host"].isin([H1, H2, H3])]
    assert list(mine["host"]) == [H3]
    assert mine.iloc[0]["last_seen"] == NOW - timedelta(minutes=5)
    assert 300 <= mine.iloc[0]["silent_s"] < 900


def test_stragglers(q):
    frame = q.stragglers(minutes=15)
    mine = frame[frame["project"] == P]
    alert = mine[mine["source"] == "alert"].iloc[0]
    assert (alert["run"], alert["rank"], alert["host"], alert["ratio"], bool(alert["firing"])) == ("r-a", 1, H2, 3.0, True)
    window = mine[mine["source"] == "window"].iloc[0]
    assert (window["run"], window["rank"], window["metric"], window["ratio"]) == ("r-b", -1, "step_time_s", 3.0)


# --- alerts -----------------------------------------------------------------------------------------------


def test_alerts_history_firing_and_filters(q):
    history = q.alerts(project=P)
    mine = history[history["fingerprint"].str.startswith(TAG)]
    assert dict(zip(mine["fingerprint"], mine["state"])) == {
        f"{TAG}-f1": "firing", f"{TAG}-f2": "resolved", f"{TAG}-f3": "firing"}  # one row per episode
    f3 = mine.set_index("fingerprint").loc[f"{TAG}-f3"]
    assert f3["updated_at"] == NOW - timedelta(minutes=10) and f3["severity"] == "critical"
    assert f3["summary"] == "loss_non_finite on r-b" and f3["labels"]["run"] == "r-b"
    firing = q.alerts(firing_only=True, project=P)
    assert set(firing["fingerprint"]) == {f"{TAG}-f1", f"{TAG}-f3"}
    assert list(q.alerts(host=H1)["fingerprint"]) == [f"{TAG}-f2"]
    assert q.alerts(host=H1).iloc[0]["gpu"] == "0"
    assert list(q.alerts(project=P, severity="critical")["rule"]) == ["loss_non_finite"]
    assert list(q.alerts(project=P, rule=["straggler"], run="r-a")["rank"]) == ["1"]
    recent = q.alerts(project=P, since=NOW - timedelta(minutes=45))
    assert set(recent["fingerprint"]) == {f"{TAG}-f1", f"{TAG}-f3"}  # f2 resolved an hour ago
    assert len(q.alerts(project=P, limit=1)) == 1


def test_deliveries(q):
    frame = q.deliveries(fingerprint=f"{TAG}-f1")
    assert list(frame["attempt"]) == [2, 1] and list(frame["outcome"]) == ["delivered", "retrying"]
    assert frame.iloc[1]["http_status"] == 503
    assert list(q.deliveries(fingerprint=f"{TAG}-f1", outcome="delivered")["attempt"]) == [2]


# --- injection ---------------------------------------------------------------------------------------------


def _every_filter(q: Queries, text: str) -> dict[str, int]:
    """Rows each query returns with `text` in one filter; every call must succeed."""
    rows = {
        "runs.project": len(q.runs(project=text)),
        "runs.status": len(q.runs(status=text)),
        "runs.tag": len(q.runs(tag=text)),
        "runs.user": len(q.runs(user=text)),
        "runs.search": len(q.runs(project=P, search=text)),
        "runs.metric": int(q.runs(project=P, metric=text)["best"].notna().sum()),
        "runs.metric_best": int(q.runs(project=P, metric=text, order_by="best")["best"].notna().sum()),
        "runs.by_alerts": len(q.runs(project=text, order_by="alerts_firing")),
        "run": 0 if q.run(text, "r-a") is None else 1,
        "run.run": 0 if q.run(P, text) is None else 1,
        "ranks": len(q.ranks(P, text)),
        "metric_names": len(q.metric_names(text, "r-a")) + len(q.metric_names(P, text)),
        "series.project": len(q.series(text, ["r-a"], "loss")),
        "series.runs": len(q.series(P, [text, text + "2"], "loss")),
        "series.metric": len(q.series(P, ["r-a"], text)),
        "rank_spread": len(q.rank_spread(P, text, "loss")) + len(q.rank_spread(P, "r-a", text)),
        "host_series.hosts": len(q.host_series([text], ["util_percent"], NOW - timedelta(minutes=10), NOW)),
        "host_series.names": len(q.host_series([H1], [text], NOW - timedelta(minutes=10), NOW)),
        "users": len(q.users(text)),
        "tags": len(q.tags(text)),
        "alerts.rule": len(q.alerts(rule=text)),
        "alerts.project": len(q.alerts(project=text)),
        "alerts.run": len(q.alerts(run=text)),
        "alerts.host": len(q.alerts(host=text)),
        "alerts.severity": len(q.alerts(severity=text)),
        "deliveries.fingerprint": len(q.deliveries(fingerprint=text)),
        "deliveries.outcome": len(q.deliveries(outcome=text)),
        "config_diff": len(q.config_diff(P, [text, "r-a"])) + len(q.config_diff(text, ["r-a", "r-b"])),
        "final_metrics": int(q.final_metrics(P, ["r-a", text], text)["final"].notna().sum()),
        "stragglers.rules": int((q.stragglers(rules=[text])["source"] == "alert").sum()),
        "stragglers.window": int((q.stragglers(window=text)["source"] == "window").sum()),
    }
    return rows


@pytest.mark.parametrize("text", NASTY, ids=[repr(t[:24]) + (f"x{len(t)}" if len(t) > 24 else "") for t in NASTY])
def test_injection_attempts_through_every_filter_are_inert(q, writer, text):
    before = _table_counts(writer)
    rows = _every_filter(q, text)
    assert rows == {name: 0 for name in rows}, {name: n for name, n in rows.items() if n}
    assert _table_counts(writer) == before  # nothing dropped or written
    assert len(q.runs(project=P)) == 4  # and the real rows are still there


def test_a_filter_value_with_quotes_matches_itself_exactly(q, writer):
    """The value reaches ClickHouse as data: a project literally named like an attack is found."""
    name = f"{P}' OR 1=1 --"
    row = _run_row("r-q", "running", user="mallory'; --", tags=["t'ag"], config={}, updated=NOW)
    row[0] = name
    writer.insert("runs", [row], column_names=RUN_COLUMNS, settings=NO_SETTINGS)
    assert list(q.runs(project=name)["run"]) == ["r-q"]
    assert list(q.runs(project=P, user="mallory'; --")["run"]) == []
    assert list(q.runs(user="mallory'; --", tag="t'ag")["project"]) == [name]
    assert q.run(name, "r-q")["user"] == "mallory'; --"
