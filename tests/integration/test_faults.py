"""Faults a cluster meets every week, on the real broker, ClickHouse and worker processes, with exact
counts: a worker SIGKILLed mid-NaN episode, mid-plateau, with hardware rows held and with an insert in
flight (running in ClickHouse through the takeover, or lost with it), a worker frozen past its session
with hardware rows held or with the NaN step fetched, a 1 -> 3 -> 1 rebalance under load, a processing
outage longer than the silence timeouts, a training process SIGKILLed after its events were delivered
and then restarted, ClickHouse refusing one row of a batch, and a topic deleted and re-created under
the same name."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from trainmon.agent.publisher import Publisher
from trainmon.stream_processors.config import load_pipeline
from trainmon.stream_processors.processing import Message, Processing
from trainmon.stream_processors.sink import ClickHouseSink
from tests.clickhouse_proxy import HoldingProxy
from tests.integration.test_processors import (QUICK_WINDOWS, ROOT, lifecycle, metrics, pipeline_file, scalar,
                                               start_worker, stop, wait_until)
from tests.kafka_util import consume, read_all
from tests.receivers import Receiver
from tests.unit.test_partition_state import make
from tests.unit.test_processing import Dispatcher as UnitDispatcher
from tests.unit.test_processing import MemorySink
from trainmon.clickhouse import connect
from trainmon.contract import DLQ_REASON, Topic, decode, encode, envelope, topic_name
from trainmon.settings import env_name

pytestmark = pytest.mark.integration


def states(receiver: Receiver, run: str) -> list[str]:
    return [r.json()["state"] for r in list(receiver.requests) if r.json().get("run") == run]


def windows_off(client, runs: list[str]) -> list[tuple]:
    """The 10 s loss windows whose count is not the number of raw points in them."""
    return client.query(
        "SELECT w.run, w.window_start, w.count, r.n FROM (SELECT run, window_start, count FROM window_aggregates "
        "FINAL WHERE scope = 'run' AND window = '10s' AND name = 'loss' AND run IN {runs:Array(String)}) AS w "
        "LEFT JOIN (SELECT run, toStartOfInterval(time, INTERVAL 10 SECOND) AS start, count() AS n "
        "FROM metric_points FINAL WHERE name = 'loss' AND run IN {runs:Array(String)} GROUP BY run, start) AS r "
        "ON w.run = r.run AND toDateTime(w.window_start) = r.start WHERE w.count != r.n ORDER BY 1, 2",
        parameters={"runs": runs}).result_rows


FETCH_WAIT_S = 2.0  # the frozen worker's fetch wait: the NaN is sent well inside it

# What a kill around an alert's page must leave exact: raw rows, their rollup, the run's lifecycle event, the page.
PAGED_RUN = {"points": "SELECT count() FROM metric_points WHERE run = {r:String}",
             "rollup": "SELECT sum(count) FROM metric_rollup_1m WHERE run = {r:String}",
             "events": "SELECT count() FROM run_events WHERE run = {r:String}",
             "alerts": "SELECT count() FROM alerts WHERE run = {r:String} AND state = 'firing'"}


def counted(client, run: str) -> dict[str, int]:
    return {name: scalar(client, sql, r=run) for name, sql in PAGED_RUN.items()}


def assert_each_once(client, receiver: Receiver, run: str, points: int) -> None:
    """Once `points` raw rows are in and a doubled insert would have landed too: every row, the run's
    lifecycle event and the alert once, and the alert paged once."""
    wait_until(lambda: scalar(client, PAGED_RUN["points"], r=run) >= points, 90, "every row after the takeover")
    time.sleep(3)
    assert counted(client, run) == {"points": points, "rollup": points, "events": 1, "alerts": 1}
    assert states(receiver, run) == ["firing"]


def arrow_rows(body: bytes) -> int:
    """Rows in an insert's body (the sink's raw inserts are FORMAT Arrow)."""
    return pa.ipc.open_file(pa.py_buffer(body)).read_all().num_rows


def start_run(publisher: Publisher, run: str) -> None:
    publisher.publish(lifecycle("run_start", run, 0, world_size=1, config={"lr": 0.1}))


def publish_steps(publisher: Publisher, run: str, steps: range, nan_at: int | None = None) -> None:
    """These steps of the run, loss finite but at `nan_at`, delivered."""
    for step in steps:
        publisher.publish(metrics(run, 0, step, math.nan if step == nan_at else 1.0 / (step + 1)))
    assert publisher.flush(30)


def publish_nan_episode(publisher: Publisher, run: str) -> None:
    """A run's start and 101 steps, the last one's loss NaN: one loss_non_finite alert."""
    start_run(publisher, run)
    publish_steps(publisher, run, range(101), nan_at=100)


def end_nan_episode(publisher: Publisher, receiver: Receiver, run: str) -> None:
    """Steps 101-200 with finite loss end the episode: fired once, resolved once."""
    publish_steps(publisher, run, range(101, 201))
    wait_until(lambda: "resolved" in states(receiver, run), 90, "the resolve")
    time.sleep(3)  # a duplicate firing or resolve would arrive by now
    assert states(receiver, run) == ["firing", "resolved"]


def test_worker_sigkilled_mid_nan_episode_fires_once_and_resolves_once(own_topics, tmp_path):
    run, group = f"kill-{uuid.uuid4().hex[:6]}", f"kill-{uuid.uuid4().hex[:6]}"
    with Receiver([200] * 50) as receiver:
        pipeline = pipeline_file(tmp_path, receiver.url)
        first = start_worker(own_topics, pipeline, group, tmp_path / "first.log")
        second = None
        try:
            publisher = Publisher(own_topics, spool_dir=tmp_path / "spool")
            publish_nan_episode(publisher, run)
            wait_until(lambda: "firing" in states(receiver, run), 90, "the NaN alert")
            time.sleep(2.5)  # a checkpoint has covered the episode
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            second = start_worker(own_topics, pipeline, group, tmp_path / "second.log")
            end_nan_episode(publisher, receiver, run)
            client = connect(own_topics)
            where = {"r": run}
            # the page no longer waits for the raw rows' insert: they follow at the next flush (~2 s at rest)
            wait_until(lambda: scalar(client, "SELECT sum(count) FROM metric_rollup_1m WHERE run = {r:String}",
                                      **where) >= 201 * 2, 30, "every row")
            time.sleep(2)  # a doubled insert would land by now
            assert scalar(client, "SELECT count() FROM metric_points WHERE run = {r:String}", **where) == 201 * 2
            assert scalar(client, "SELECT sum(count) FROM metric_rollup_1m WHERE run = {r:String}", **where) == 201 * 2
            publisher.close()
        finally:
            stop(first)
            if second is not None:
                stop(second)
    assert "state restored from snapshot" in (tmp_path / "second.log").read_text()


def test_worker_frozen_past_its_session_with_the_nan_fetched_pages_it_once(own_topics, tmp_path):
    """A worker frozen (SIGSTOP: a paused VM, a swap storm) with a fetch in flight: the broker answers
    it with the NaN step while the worker sleeps, the group gives the partitions to a second worker,
    which pages. Resumed (SIGCONT), the frozen one reads that answer before a heartbeat tells it it is
    out, and would page the same alert a second time (and write the step's rows beside the new
    owner's): a zombie. Its fetches wait FETCH_WAIT_S here, so the one in flight at the freeze is
    still open when the NaN is sent."""
    run, group = f"zombie-{uuid.uuid4().hex[:6]}", f"zombie-{uuid.uuid4().hex[:6]}"
    slow_fetch = {"TRAINMON_PROCESSORS_FETCH_MAX_WAIT": str(FETCH_WAIT_S)}
    with Receiver([200] * 50) as receiver:
        pipeline = pipeline_file(tmp_path, receiver.url)
        first = start_worker(own_topics, pipeline, group, tmp_path / "first.log", **slow_fetch)
        second = None
        client = connect(own_topics)
        points = PAGED_RUN["points"]
        try:
            publisher = Publisher(own_topics, spool_dir=tmp_path / "spool")
            start_run(publisher, run)
            publish_steps(publisher, run, range(100))
            wait_until(lambda: scalar(client, points, r=run) == 200, 60, "the finite steps written")
            time.sleep(2.5)  # at rest: its next fetch is open (what a checkpoint has not covered is re-read)
            first.send_signal(signal.SIGSTOP)
            publish_steps(publisher, run, range(100, 101), nan_at=100)
            second = start_worker(own_topics, pipeline, group, tmp_path / "second.log", **slow_fetch)
            wait_until(lambda: "firing" in states(receiver, run), 90, "the NaN alert from the next owner")
            first.send_signal(signal.SIGCONT)
            time.sleep(FETCH_WAIT_S + 2)  # the frozen worker's read answer handled, its page sent if it were
            end_nan_episode(publisher, receiver, run)
            wait_until(lambda: scalar(client, points, r=run) >= 201 * 2, 60, "every row")
            time.sleep(2)  # a doubled insert would land by now (the frozen worker resumed 10 s ago)
            assert scalar(client, points, r=run) == 201 * 2
            publisher.close()
        finally:
            first.send_signal(signal.SIGCONT)
            stop(first)
            if second is not None:
                stop(second)
    assert "partitions [0, 1, 2, 3] lost" in (tmp_path / "first.log").read_text()


def test_worker_sigkilled_right_after_a_page_with_the_raw_rows_still_held_writes_each_row_once(own_topics, tmp_path):
    """An alert's checkpoint pages without waiting for the raw rows' insert: it writes the alert's row,
    snapshots (listing the held rows' offsets) and acks nothing. Killed after the page and before any
    insert or periodic checkpoint could write the raw rows (both a minute away here), the worker leaves
    them to the next one: every row once, the run's lifecycle event once, the alert paged once."""
    run, group = f"held-{uuid.uuid4().hex[:6]}", f"held-{uuid.uuid4().hex[:6]}"
    later = {"TRAINMON_PROCESSORS_INSERT_MAX_DELAY": "60", "TRAINMON_PROCESSORS_CHECKPOINT_INTERVAL": "60"}
    with Receiver([200] * 50) as receiver:
        pipeline = pipeline_file(tmp_path, receiver.url)
        first = start_worker(own_topics, pipeline, group, tmp_path / "first.log", **later)
        second = None
        try:
            client = connect(own_topics)
            publisher = Publisher(own_topics, spool_dir=tmp_path / "spool")
            publish_nan_episode(publisher, run)
            wait_until(lambda: "firing" in states(receiver, run), 60, "the NaN alert")
            held = counted(client, run)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            assert held == {"points": 0, "rollup": 0, "events": 0, "alerts": 1}, held  # paged, raw rows held
            second = start_worker(own_topics, pipeline, group, tmp_path / "second.log")
            assert_each_once(client, receiver, run, 202)
            publisher.close()
        finally:
            stop(first)
            if second is not None:
                stop(second)
    log = (tmp_path / "second.log").read_text()
    assert "state restored from snapshot" in log and "'rewritten': 102" in log, log[-3000:]


@pytest.mark.parametrize("fate", ["is_lost", "lands_after_the_takeover"])
def test_worker_sigkilled_with_an_insert_in_flight_writes_each_row_once(own_topics, tmp_path, fate):
    """The raw rows' insert runs on a thread of its own (write_behind.py) while the worker pages and
    checkpoints. Here a proxy holds that insert; the worker pages an alert and checkpoints with it in
    flight, and is SIGKILLed. The insert is running in ClickHouse at the kill (ClickHouse has half its body):
    either it ends with nothing written (lost with its sender), or it ends with its rows only after the next
    owner took over. Either way the next owner writes every row once: it rewrites what the snapshot lists
    as unwritten unless ClickHouse has it, and reads the offset watermark only once that insert ended
    (unfenced, it wrote the held steps again, and the insert then doubled them, rollups included). An
    insert that lands before the takeover (the case this test had apart until the fence) meets the same
    watermark, read later."""
    run, group = f"flight-{uuid.uuid4().hex[:6]}", f"flight-{uuid.uuid4().hex[:6]}"
    client = connect(own_topics)
    with Receiver([200] * 50) as receiver, HoldingProxy(own_topics.clickhouse) as proxy:
        pipeline = pipeline_file(tmp_path, receiver.url)
        first = start_worker(own_topics.replace(clickhouse_url=proxy.url), pipeline, group, tmp_path / "first.log")
        second = None
        try:
            publisher = Publisher(own_topics, spool_dir=tmp_path / "spool")
            start_run(publisher, run)
            publish_steps(publisher, run, range(100))
            wait_until(lambda: scalar(client, PAGED_RUN["points"], r=run) == 200, 60, "the first 100 steps written")
            proxy.hold("metric_points")
            publish_steps(publisher, run, range(100, 150))
            assert proxy.held.wait(30), "no insert of the next steps"
            # the last loss NaN: one alert, whose checkpoint lists the steps in flight
            publish_steps(publisher, run, range(150, 201), nan_at=200)
            wait_until(lambda: "firing" in states(receiver, run), 60, "the NaN alert, paged with the insert in flight")
            time.sleep(2.5)  # the steps after it are handed to the inserts too, queued behind the held one
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            # nothing after the held insert is written: the inserts land in order
            assert counted(client, run) == {"points": 200, "rollup": 200, "events": 1, "alerts": 1}
            if fate == "is_lost":
                proxy.drop()
                assert scalar(client, PAGED_RUN["points"], r=run) == 200
            landed = arrow_rows(proxy.body) // 2 if fate == "lands_after_the_takeover" else 0  # steps it had
            second = start_worker(own_topics, pipeline, group, tmp_path / "second.log")
            wait_until(lambda: "state restored from snapshot" in (tmp_path / "second.log").read_text(), 60,
                       "the takeover")
            if fate == "lands_after_the_takeover":
                time.sleep(5)  # unfenced, the next owner had written the held steps again by now
                assert counted(client, run)["points"] == 200, "the next owner wrote before the running insert ended"
                assert proxy.land() == 200
            assert_each_once(client, receiver, run, 402)
            publisher.close()
        finally:
            stop(first)
            if second is not None:
                stop(second)
    log = (tmp_path / "second.log").read_text()
    if fate == "lands_after_the_takeover":
        assert "1 insert(s) of its rows still running in ClickHouse" in log and "ended after" in log, log[-3000:]
        assert 0 < landed < 101
    processed = re.search(r"processed (\{.*?\});", log)
    # every step after the first 100 is written again by the next owner unless the held insert landed it
    assert ast.literal_eval(processed[1]).get("rewritten", 0) == 101 - landed, processed[0]


def test_rebalance_one_three_one_under_load_keeps_runs_and_windows_exact(own_topics, tmp_path):
    group = f"rebal-{uuid.uuid4().hex[:6]}"
    runs = [f"rb-{uuid.uuid4().hex[:6]}-{i}" for i in range(6)]
    steps = 1000  # about 25 s of load: past the second rebalance (3 -> 1 workers) at 16-20 s
    with Receiver([200] * 100) as receiver:
        pipeline = pipeline_file(tmp_path, receiver.url)
        workers = [start_worker(own_topics, pipeline, group, tmp_path / "w0.log", **QUICK_WINDOWS)]
        try:
            publisher = Publisher(own_topics, spool_dir=tmp_path / "spool")
            for run in runs:
                publisher.publish(lifecycle("run_start", run, 0, world_size=1, name=f"name-{run}",
                                            config={"lr": 0.1, "batch": 64}))

            def publish() -> None:
                for step in range(steps):
                    for run in runs:
                        publisher.publish(metrics(run, 0, step, 1.0 / (step + 1)))
                    time.sleep(0.02)

            producer = threading.Thread(target=publish)
            producer.start()
            time.sleep(6)
            workers += [start_worker(own_topics, pipeline, group, tmp_path / f"w{i}.log", **QUICK_WINDOWS)
                        for i in (1, 2)]
            time.sleep(10)
            for worker in workers[1:]:
                stop(worker)  # SIGTERM: hand the partitions back
            producer.join()
            for run in runs:
                publisher.publish(lifecycle("run_end", run, 0, status="finished"))
            assert publisher.flush(60)
            publisher.close()
            client = connect(own_topics)
            expected = steps * len(runs) * 2
            args = {"runs": runs}
            wait_until(lambda: scalar(client, "SELECT count() FROM metric_points WHERE run IN ({runs:Array(String)})",
                                      **args) >= expected, 120, "every row")
            windowed = ("SELECT sum(count) FROM window_aggregates FINAL WHERE scope = 'run' AND window = '10s' "
                        "AND name = 'loss' AND run IN ({runs:Array(String)})")
            seen: list[int] = []
            try:
                wait_until(lambda: seen.append(scalar(client, windowed, **args)) or seen[-1] == steps * len(runs),
                           60, "window counts equal to a run without rebalance")
            except AssertionError:
                raise AssertionError(f"window counts {seen[-3:]}, expected {steps * len(runs)}; windows off: "
                                     f"{windows_off(client, runs)}") from None
            rows = client.query("SELECT run, name, config, status FROM runs FINAL WHERE run IN ({runs:Array(String)})",
                                parameters=args).result_rows
            wait_until(lambda: {r[0]: r[3] for r in client.query(
                "SELECT run, name, config, status FROM runs FINAL WHERE run IN ({runs:Array(String)})",
                parameters=args).result_rows} == {run: "finished" for run in runs}, 30, "finished runs")
            rows = client.query("SELECT run, name, config FROM runs FINAL WHERE run IN ({runs:Array(String)})",
                                parameters=args).result_rows
            assert sorted(rows) == sorted((run, f"name-{run}", json.dumps({"batch": 64, "lr": 0.1},
                                                                            separators=(",", ":"))) for run in runs)
            assert scalar(client, "SELECT count() FROM metric_points WHERE run IN ({runs:Array(String)})",
                          **args) == expected
            assert receiver.requests == [], "a clean load fires nothing"
        finally:
            for worker in workers:
                stop(worker)
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(3)]
    assert sum(log.count("state restored from snapshot") for log in logs) > 0, "partitions changed hands with their state"
    assert not any("assigned without" in log for log in logs), "a partition's topics went to different workers"
    generations: dict[int, list[set[int]]] = {}
    for log in logs:
        for partitions, generation in re.findall(r"partitions \[([\d, ]*)\] assigned \(generation (\d+)\)", log):
            generations.setdefault(int(generation), []).append({int(p) for p in partitions.split(",") if p.strip()})
    assert any(sum(1 for got in owners if got) == 3 for owners in generations.values()), \
        f"no generation had three workers with partitions: {generations}"
    for generation, owners in generations.items():
        assert sum(map(len, owners)) == len(set().union(*owners)), f"generation {generation}: one partition, two owners"


def test_clickhouse_refusing_one_row_writes_the_rest_and_dead_letters_it(migrated):
    """A real refusal (a CHECK constraint on the table) in the middle of a batch."""
    client = connect(migrated)
    poison = f"poison_{uuid.uuid4().hex[:6]}"
    client.command(f"ALTER TABLE metric_points ADD CONSTRAINT {poison} CHECK name != '{poison}'")
    try:
        proc, _ = make()
        proc.sink = ClickHouseSink(migrated)
        run = f"poison-{uuid.uuid4().hex[:6]}"
        base = dict(project="p", run=run, rank=0, host="h")
        events = [envelope("metrics", **base, step=i, time=time.time(), values={"loss": 1.0, **(
            {poison: 1.0} if i == 37 else {})}) for i in range(100)]
        topic = f"t-{run}.metrics"  # its own offset watermark: the session database is shared
        messages = [Message(topic, 0, i, run.encode(), encode(e)) for i, e in enumerate(events)]
        assert proc.handle(messages).dead_letters == []  # rows held: nothing refused yet
        proc.flush()  # what the next tick or checkpoint does
        (key, value, headers), = proc.take_refused()  # sent by the checkpoint, before the acks
        assert dict(headers)[DLQ_REASON] == b"rejected" and json.loads(value)["step"] == 37
        assert scalar(client, "SELECT count() FROM metric_points WHERE run = {r:String}", r=run) == 99
        notice, = proc.tick().alerts  # the pipeline's own alert, once
        assert (notice["rule"], notice["state"], notice["labels"]["table"], notice["values"]) == (
            "clickhouse_rows_refused", "firing", "metric_points", {"refused": 1})
        assert proc.tick().alerts == []
    finally:
        client.command(f"ALTER TABLE metric_points DROP CONSTRAINT {poison}")


def recreate(settings, *topics: Topic) -> None:
    """Delete the topics and make them again under the same names (Kafka rebuilt, ClickHouse kept)."""
    from confluent_kafka.admin import AdminClient

    from trainmon.deploy.topics import create_topics

    names = [topic_name(t, settings.kafka_topic_prefix) for t in topics]
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    for future in admin.delete_topics(names, operation_timeout=30).values():
        future.result(30)
    wait_until(lambda: not set(names) & set(admin.list_topics(timeout=10).topics), 30, "the topics gone")
    wait_until(lambda: create_topics(settings, progress=lambda message: None) or True, 60, "the topics re-made")


def test_a_topic_deleted_and_recreated_is_read_from_its_start_and_nothing_is_skipped(own_topics, tmp_path):
    """The new topic's offsets start at 0, below the old topic's watermark and the state's applied
    offsets: keyed by topic id, none of its events is taken for a replay."""
    group, tag = f"recreate-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:6]
    before, after = [f"old-{tag}-{i}" for i in range(8)], [f"new-{tag}-{i}" for i in range(8)]
    client = connect(own_topics)

    def send(runs: list[str], steps: int) -> None:
        publisher = Publisher(own_topics, spool_dir=tmp_path / f"spool-{runs[0]}")
        for run in runs:
            publisher.publish(lifecycle("run_start", run, 0, world_size=1))
            for step in range(steps):
                publisher.publish(metrics(run, 0, step, 1.0 / (step + 1)))
        assert publisher.flush(60)
        publisher.close()

    def points(runs: list[str]) -> int:
        return scalar(client, "SELECT count() FROM metric_points WHERE run IN ({r:Array(String)})", r=runs)

    def starts(runs: list[str]) -> int:
        return scalar(client, "SELECT count() FROM run_events FINAL WHERE kind = 'run_start' AND run IN "
                              "({r:Array(String)})", r=runs)

    with Receiver([200] * 10) as receiver:
        pipeline = pipeline_file(tmp_path, receiver.url)
        worker = start_worker(own_topics, pipeline, group, tmp_path / "first.log")
        try:
            send(before, 100)
            wait_until(lambda: points(before) == 8 * 100 * 2, 90, "the first topic's rows")
            time.sleep(2)  # a checkpoint covers them: the state topic holds their applied offsets
        finally:
            stop(worker)
        old_marks = dict(client.query("SELECT partition, max(offset) FROM ingest_offsets WHERE topic LIKE "
                                      "{t:String} GROUP BY partition", parameters={
                                          "t": topic_name(Topic.METRICS, own_topics.kafka_topic_prefix) + "%"}
                                      ).result_rows)
        recreate(own_topics, Topic.METRICS, Topic.RUNS)
        worker = start_worker(own_topics, pipeline, group, tmp_path / "second.log")
        try:
            send(after, 50)
            wait_until(lambda: points(after) == 8 * 50 * 2 and starts(after) == 8, 90, "the new topic's rows")
        finally:
            stop(worker)
    assert points(before) == 8 * 100 * 2 and starts(before) == 8
    assert min(old_marks.values()) >= 50, "the old watermark lies above the new offsets: a name key would skip"


def plateau_pipeline(directory: Path, webhook_url: str, patience: int) -> Path:
    path = directory / "plateau.yml"
    path.write_text(textwrap.dedent(f"""
        windows: [10s]
        alerting: {{repeat_interval: 1h, dashboard_url: "http://127.0.0.1:8501"}}
        rules:
          - name: loss_plateau
            kind: plateau
            severity: warning
            selector: {{metric: loss, rank: 0}}
            params: {{mode: min, patience: {patience}}}
        routes:
          - {{name: oncall, kind: webhook, url: "{webhook_url}", params: {{secret: s}}, timeout_s: 2, retries: 3}}
    """))
    return path


def test_worker_sigkilled_mid_plateau_fires_at_the_step_it_would_have_and_resolves_once(own_topics, tmp_path):
    """The reference is the same events through one in-process Processing that is never killed: the
    real worker is SIGKILLed with the plateau half counted (its rows written, its snapshot maybe not)."""
    run, group, patience = f"plat-{uuid.uuid4().hex[:6]}", f"plat-{uuid.uuid4().hex[:6]}", 150
    t0 = time.time()
    losses = [1.0 / (s + 1) for s in range(100)] + [1.0] * 250 + [1e-4] * 5  # improve, stall, improve
    events = [lifecycle("run_start", run, 0, world_size=1)] + [
        envelope("metrics", project="e2e", run=run, rank=0, host="node-0", step=s, time=t0 + s * 0.01,
                 values={"loss": loss}) for s, loss in enumerate(losses)]
    with Receiver([200] * 20) as receiver:
        pipeline = plateau_pipeline(tmp_path, receiver.url, patience)
        reference = Processing(load_pipeline(pipeline), MemorySink(), UnitDispatcher())
        expected = [(a["state"], a["starts_at"], a["values"].get("steps"))
                    for i, e in enumerate(events) for a in reference.handle(
                        [Message("t.metrics" if e["kind"] == "metrics" else "t.runs", 0, i, b"k", encode(e))]).alerts]
        fires_at = t0 + 155 * 0.01  # the window (40 % of the run, at least 150 values) 55 steps into the stall
        assert [(s, round(t, 6)) for s, t, _ in expected] == [("firing", round(fires_at, 6)),
                                                              ("resolved", round(fires_at, 6))]
        first = start_worker(own_topics, pipeline, group, tmp_path / "first.log")
        second = None
        try:
            publisher = Publisher(own_topics, spool_dir=tmp_path / "spool")
            killed_at = 130  # mid-plateau: 30 stale values counted, 25 steps before it fires
            for event in events[:killed_at + 2]:
                publisher.publish(event)
            assert publisher.flush(30)
            client = connect(own_topics)
            wait_until(lambda: scalar(client, "SELECT count() FROM metric_points WHERE run = {r:String}",
                                      r=run) == killed_at + 1, 90, "the first half of the plateau written")
            first.send_signal(signal.SIGKILL)  # no pause: the last checkpoint may lag the written rows
            first.wait(10)
            assert receiver.requests == [], "nothing fired before the kill"
            second = start_worker(own_topics, pipeline, group, tmp_path / "second.log")
            for event in events[killed_at + 2:]:
                publisher.publish(event)
            assert publisher.flush(30)
            wait_until(lambda: "resolved" in states(receiver, run), 90, "the plateau's resolve after the takeover")
            time.sleep(3)  # a duplicate firing or resolve would arrive by now
            got = [(r.json()["state"], r.json()["starts_at"], r.json()["values"].get("steps"))
                   for r in list(receiver.requests) if r.json().get("run") == run]
            assert [(s, round(t, 6), n) for s, t, n in got] == [(s, round(t, 6), n) for s, t, n in expected]
            # the page no longer waits for the raw rows' insert: they follow at the next flush (~2 s at rest)
            wait_until(lambda: scalar(client, "SELECT sum(count) FROM metric_rollup_1m WHERE run = {r:String}",
                                      r=run) >= len(losses), 30, "every row")
            time.sleep(2)  # a doubled insert would land by now
            assert scalar(client, "SELECT count() FROM metric_points WHERE run = {r:String}", r=run) == len(losses)
            assert scalar(client, "SELECT sum(count) FROM metric_rollup_1m WHERE run = {r:String}", r=run) == len(
                losses)
            publisher.close()
        finally:
            stop(first)
            if second is not None:
                stop(second)


# The outage is 3x the rules' timeouts here (the issue's 5 minutes against the shipped 1 minute is 5x),
# scaled down to keep the suite short. TRAINMON_FAULT_OUTAGE_S=300 TRAINMON_FAULT_TIMEOUT_S=60 runs it
# full size (with pytest --timeout 900).
OUTAGE_S = int(os.environ.get("TRAINMON_FAULT_OUTAGE_S", "15"))
TIMEOUT_S = int(os.environ.get("TRAINMON_FAULT_TIMEOUT_S", "5"))
LIVE_S = 8  # live before the outage and after the restart (the simulator's heartbeats are 1 s apart)


def silence_pipeline(directory: Path, webhook_url: str) -> Path:
    """The shipped time-based rules, their timeouts cut to TIMEOUT_S so that a short outage is long."""
    path = directory / "silence.yml"
    path.write_text(textwrap.dedent(f"""
        windows: [10s]
        alerting: {{repeat_interval: 1h, dashboard_url: "http://127.0.0.1:8501"}}
        rules:
          - {{name: rank_heartbeat_lost, kind: heartbeat_lost, severity: critical, selector: {{scope: rank}},
              params: {{timeout_s: {TIMEOUT_S}}}}}
          - {{name: node_silent, kind: heartbeat_lost, severity: critical, selector: {{scope: node}},
              params: {{timeout_s: {TIMEOUT_S}}}}}
          - {{name: run_stalled, kind: stalled, severity: critical, params: {{stall_s: {TIMEOUT_S}, busy_percent: 50}}}}
          - {{name: gpu_idle, kind: idle_gpu, severity: warning, for: {TIMEOUT_S}s, params: {{below: 10}}}}
          - {{name: loss_non_finite, kind: non_finite, severity: critical, selector: {{metrics: [loss, val_loss]}}}}
        routes:
          - {{name: oncall, kind: webhook, url: "{webhook_url}", params: {{secret: s}}, timeout_s: 2, retries: 3}}
    """))
    return path


def test_processing_outage_then_catch_up_pages_nothing_false_and_real_silence_still_pages(own_topics, tmp_path):
    """A simulated cluster trains through a worker outage several times the silence timeouts; the
    restarted worker catches up on the backlog. Nothing may page for that; a node that really dies
    afterwards must. The restarted worker is ready about 3 s after its start and reads the backlog in
    under 2 s, so the node dies LIVE_S after the restart, with every silence rule live again (a slower
    start would not change the verdict: silence is judged by the events' time)."""
    tag = uuid.uuid4().hex[:6]
    project, group, dead_at = f"outage-{tag}", f"outage-{tag}", LIVE_S + OUTAGE_S + LIVE_S
    env = {**os.environ, "PYTHONPATH": str(ROOT), env_name("kafka_bootstrap_servers"): own_topics.bootstrap_servers,
           env_name("kafka_topic_prefix"): own_topics.kafka_topic_prefix}
    with Receiver([200] * 100) as receiver:
        pipeline = silence_pipeline(tmp_path, receiver.url)
        worker = start_worker(own_topics, pipeline, group, tmp_path / "first.log")
        restarted = simulator = None
        try:
            wait_until(lambda: "Executing _on_partitions_assigned" in (tmp_path / "first.log").read_text(), 60,
                       "the worker's assignment")
            began = time.time()
            simulator = subprocess.Popen(
                [sys.executable, "-m", "trainmon.cli", "simulate", "--nodes", "2", "--gpus", "2", "--runs", "1",
                 "--heartbeat", "1", "--step-interval", "0.1", "--project", project, "--prefix", f"o{tag}",
                 "--spool-dir", str(tmp_path / "spool"), "--duration", str(dead_at + 2 * TIMEOUT_S + 5),
                 "--fault", f"dead_node@node-2:{dead_at}"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
            time.sleep(LIVE_S)  # live, with every silence rule armed
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            time.sleep(OUTAGE_S)
            restarted = start_worker(own_topics, pipeline, group, tmp_path / "second.log")
            _, err = simulator.communicate(timeout=dead_at + 2 * TIMEOUT_S + 60)
            assert simulator.returncode == 0, err
            wait_until(lambda: any(r.json()["rule"] == "node_silent" for r in list(receiver.requests)), 60,
                       "node_silent for the node that died")
            time.sleep(5)  # late or duplicate pages would arrive by now
            fired = [r.json() for r in list(receiver.requests) if r.json()["state"] == "firing"]
        finally:
            if simulator is not None and simulator.poll() is None:
                simulator.kill()
            stop(worker)
            if restarted is not None:
                stop(restarted)
    dead_host = f"o{tag}-node-02"  # the simulator pads node numbers
    false = [(a["rule"], a["labels"], a["starts_at"] - began) for a in fired if a["starts_at"] < began + dead_at]
    assert false == [], "paged for silence that was only the outage"
    assert {a["labels"].get("host") for a in fired if a["rule"] in ("node_silent", "rank_heartbeat_lost")} == {
        dead_host}
    assert len({a["fingerprint"] for a in fired}) == len(fired), "a page sent twice"

    values = sum(len(decode(m.value())["values"]) for m in read_all(
        own_topics, [topic_name(Topic.METRICS, own_topics.kafka_topic_prefix)]))
    client = connect(own_topics)
    wait_until(lambda: scalar(client, "SELECT count() FROM metric_points WHERE project = {p:String}",
                              p=project) >= values, 60, "every value written")
    assert scalar(client, "SELECT count() FROM metric_points WHERE project = {p:String}", p=project) == values


TRAINER = textwrap.dedent("""
    import sys, time, trainmon
    from trainmon.settings import Settings
    spool, prefix, servers, run_id, first, n, then = sys.argv[1:8]
    first, n = int(first), int(n)
    settings = Settings(kafka_bootstrap_servers=servers, kafka_topic_prefix=prefix)
    run = trainmon.init(project="e2e", run_id=run_id, spool_dir=spool, settings=settings, heartbeat_s=3600)
    publisher = run._publisher
    replayed = publisher.stats["replayed"]
    for step in range(first, first + n):
        run.log({"loss": 1.0 / (step + 1)}, step=step)
        if step % 10 == 0:
            time.sleep(0.001)  # a fast training loop, well inside the SDK's queue
    deadline = time.monotonic() + 60
    while publisher.stats["delivered"] < n + 1 + replayed and time.monotonic() < deadline:
        time.sleep(0.001)  # run_start + n metrics acknowledged by Kafka
    if then == "hang":
        print("delivered", publisher.stats["delivered"], flush=True)
        time.sleep(60)  # SIGKILLed here
    print("replayed", replayed, "flushed", publisher.flush(60), flush=True)
    run.finish()
""")


def test_trainer_sigkilled_after_100k_delivered_then_restarted_counts_every_event_once(own_topics, tmp_path):
    """Killed after Kafka acknowledged 100,000 events, before the spool's durable watermark caught up:
    the restarted process re-sends the tail, byte for byte; every table and rollup counts it once."""
    n, more, run_id = 100_000, 1_000, f"trainer-{uuid.uuid4().hex[:6]}"
    spool = tmp_path / "spools"

    def trainer(first: int, count: int, then: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", TRAINER, str(spool), own_topics.kafka_topic_prefix,
                                 own_topics.bootstrap_servers, run_id, str(first), str(count), then],
                                cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})

    with Receiver([200] * 10) as receiver:
        worker = start_worker(own_topics, pipeline_file(tmp_path, receiver.url), f"trainer-{run_id}",
                              tmp_path / "worker.log", **QUICK_WINDOWS)
        try:
            killed = trainer(0, n, "hang")
            try:
                line = killed.stdout.readline().split()
                assert line[:1] == ["delivered"] and int(line[1]) >= n + 1, line
            finally:
                killed.send_signal(signal.SIGKILL)
                killed.wait(10)
            restarted = trainer(n, more, "finish")
            out, _ = restarted.communicate(timeout=120)
            assert restarted.returncode == 0
            words = out.split()
            resent = int(words[1])
            assert 0 < resent <= n + 1, "the durable watermark lagged the deliveries: a tail was re-sent"
            assert words[2:] == ["flushed", "True"]
            assert not list(spool.rglob("*.seg")), "the spool drained"
            client = connect(own_topics)
            args = {"r": run_id}
            wait_until(lambda: scalar(client, "SELECT count() FROM run_events WHERE run = {r:String} AND kind = "
                                              "'run_end'", **args) == 1, 90, "the restarted run's end")
            wait_until(lambda: scalar(client, "SELECT count() FROM metric_points WHERE run = {r:String}", **args)
                       >= n + more, 60, "every point")
            time.sleep(3)  # a re-sent event written again would be in by now
            assert scalar(client, "SELECT count() FROM metric_points WHERE run = {r:String}", **args) == n + more
            assert scalar(client, "SELECT uniqExact(step) FROM metric_points WHERE run = {r:String}", **args) == n + more
            for rollup in ("metric_rollup_1m", "metric_rollup_1h"):
                assert scalar(client, f"SELECT sum(count) FROM {rollup} WHERE run = {{r:String}}", **args) == n + more
            assert sorted(client.query("SELECT kind, count() FROM run_events WHERE run = {r:String} GROUP BY kind",
                                       parameters=args).result_rows) == [("run_end", 1), ("run_start", 2)]
            windowed = ("SELECT sum(count) FROM window_aggregates FINAL WHERE scope = 'run' AND window = '10s' "
                        "AND name = 'loss' AND run = {r:String}")
            wait_until(lambda: scalar(client, windowed, **args) == n + more, 60, "window counts of every event once")
        finally:
            stop(worker)


@pytest.mark.parametrize("fate", ["sigkilled", "stalled_past_its_session"])
def test_worker_gone_with_hardware_rows_held_loses_and_doubles_no_sample(fate, own_topics, tmp_path):
    """Hardware rows wait up to hardware_insert_max_delay (4.5 s) while the training rows of the same
    fetches are written every 2 s. A worker killed in between leaves them to the next owner: every
    sample once. Samples sent on the metrics topic are dead-lettered (wrong_topic), each one, and
    written never: beside the metrics, whose inserts move that partition's offset watermark, a worker
    killed between the two inserts would lose them (as CI once did, before check_topic).
    stalled_past_its_session: the worker is frozen (SIGSTOP: a paused VM, a swap storm) until the group
    has given its partitions to the next worker, then resumes (SIGCONT) with those rows still held: a
    zombie, which must not write them beside the new owner."""
    from confluent_kafka import Producer

    run, group, tag = f"hw-{uuid.uuid4().hex[:6]}", f"hw-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:6]
    hosts, stray = [f"hw-{tag}-{i}" for i in range(3)], f"hw-{tag}-stray"
    metrics_topic = topic_name(Topic.METRICS, own_topics.kafka_topic_prefix)
    rows = "SELECT count() FROM system_samples WHERE host IN {h:Array(String)}"
    steps = "SELECT count() FROM metric_points WHERE run = {r:String}"

    def sample(host: str) -> dict:
        return envelope("system", host=host, time=time.time(), figures={"cpu_percent": 5.0},
                        gpus=[{"index": 0, "uuid": f"GPU-{host}", "figures": {"util_percent": 90.0}}])

    with Receiver([200] * 50) as receiver:
        pipeline = pipeline_file(tmp_path, receiver.url)
        first = start_worker(own_topics, pipeline, group, tmp_path / "first.log")
        second = None
        publisher = Publisher(own_topics, spool_dir=tmp_path / "spool")
        raw = Producer({"bootstrap.servers": own_topics.bootstrap_servers, "partitioner": "murmur2_random"})
        client = connect(own_topics)
        sent, done = [0], threading.Event()

        def send() -> None:  # every 0.25 s: a sample per host, one on the metrics topic, a step of the run
            while not done.is_set():
                for host in hosts:
                    publisher.publish(sample(host))
                raw.produce(metrics_topic, key=run.encode(), value=encode(sample(stray)))
                publisher.publish(metrics(run, 0, sent[0], 1.0))
                sent[0] += 1
                raw.poll(0)
                time.sleep(0.25)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            # Killed once training rows are written past the hardware rows of the same rounds: samples
            # are held then (2 rows a step; 2 rows a sample, a sample per host a step).
            wait_until(lambda: scalar(client, steps, r=run) // 2 > scalar(client, rows, h=hosts) // (2 * len(hosts)),
                       60, "training rows written while hardware rows are held")
            if fate == "sigkilled":
                first.send_signal(signal.SIGKILL)
                first.wait(10)
                second = start_worker(own_topics, pipeline, group, tmp_path / "second.log")
                time.sleep(2)
            else:
                first.send_signal(signal.SIGSTOP)
                second = start_worker(own_topics, pipeline, group, tmp_path / "second.log")
                wait_until(lambda: " assigned (generation" in (tmp_path / "second.log").read_text(), 60,
                           "the next worker's takeover, once the frozen one's session expired")
                first.send_signal(signal.SIGCONT)  # its held rows are overdue: its next tick would write them
        finally:
            first.send_signal(signal.SIGCONT)
            done.set()
            sender.join()
        try:
            assert raw.flush(10) == 0
            assert publisher.flush(30)
            publisher.close()
            every = 2 * sent[0] * len(hosts)  # cpu_percent and util_percent per sample
            try:
                wait_until(lambda: scalar(client, rows, h=hosts) >= every, 120, "every sample after the takeover")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {scalar(client, rows, h=hosts)} rows of {every}") from None
            time.sleep(7)  # a doubled write would land by now (hardware rows go every 6 s at rest)
            assert scalar(client, rows, h=hosts) == every
            assert scalar(client, "SELECT sum(count) FROM system_rollup_1m WHERE host IN {h:Array(String)}",
                          h=hosts) == every
            assert scalar(client, steps, r=run) == 2 * sent[0]
            assert scalar(client, rows, h=[stray]) == 0
            # Dead letters go out before the checkpoint, so the takeover may send some twice: each at least once.
            dead = consume(own_topics, topic_name(Topic.DEADLETTER, own_topics.kafka_topic_prefix), sent[0],
                           timeout_s=30, settle_s=1)
            assert {dict(m.headers())[DLQ_REASON] for m in dead} == {b"wrong_topic"}
            assert len({m.value() for m in dead}) == sent[0], "every stray sample dead-lettered"
        finally:
            stop(first)
            if second is not None:
                stop(second)
