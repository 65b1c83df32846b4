"""Faults the processors meet every week, on the real broker, ClickHouse and worker processes, with
exact counts: a worker SIGKILLed mid-episode, a 1 -> 3 -> 1 rebalance under load, ClickHouse
refusing one row of a batch, and a topic deleted and re-created under the same name."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
import uuid

import pytest

from agent.publisher import Publisher
from stream_processors.processing import Message
from stream_processors.sink import ClickHouseSink
from tests.integration.test_processors import (lifecycle, metrics, pipeline_file, scalar, start_worker, stop,
                                               wait_until)
from tests.receivers import Receiver
from tests.unit.test_partition_state import make
from trainmon.clickhouse import connect
from trainmon.contract import DLQ_REASON, Topic, encode, envelope, topic_name

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


def test_worker_sigkilled_mid_nan_episode_fires_once_and_resolves_once(own_topics, tmp_path):
    run, group = f"kill-{uuid.uuid4().hex[:6]}", f"kill-{uuid.uuid4().hex[:6]}"
    with Receiver([200] * 50) as receiver:
        pipeline = pipeline_file(tmp_path, receiver.url)
        first = start_worker(own_topics, pipeline, group, tmp_path / "first.log")
        second = None
        try:
            publisher = Publisher(own_topics, spool_dir=tmp_path / "spool")
            publisher.publish(lifecycle("run_start", run, 0, world_size=1, config={"lr": 0.1}))
            for step in range(101):
                publisher.publish(metrics(run, 0, step, math.nan if step == 100 else 1.0 / (step + 1)))
            assert publisher.flush(30)
            wait_until(lambda: "firing" in states(receiver, run), 90, "the NaN alert")
            time.sleep(2.5)  # a checkpoint has covered the episode
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            second = start_worker(own_topics, pipeline, group, tmp_path / "second.log")
            for step in range(101, 201):  # loss finite again: the episode ends
                publisher.publish(metrics(run, 0, step, 1.0 / (step + 1)))
            assert publisher.flush(30)
            wait_until(lambda: "resolved" in states(receiver, run), 90, "the resolve after the takeover")
            time.sleep(3)  # a duplicate firing or resolve would arrive by now
            assert states(receiver, run) == ["firing", "resolved"]
            client = connect(own_topics)
            where = {"r": run}
            assert scalar(client, "SELECT count() FROM metric_points WHERE run = {r:String}", **where) == 201 * 2
            assert scalar(client, "SELECT sum(count) FROM metric_rollup_1m WHERE run = {r:String}", **where) == 201 * 2
            publisher.close()
        finally:
            stop(first)
            if second is not None:
                stop(second)
    assert "state restored from snapshot" in (tmp_path / "second.log").read_text()


def test_rebalance_one_three_one_under_load_keeps_runs_and_windows_exact(own_topics, tmp_path):
    group = f"rebal-{uuid.uuid4().hex[:6]}"
    runs = [f"rb-{uuid.uuid4().hex[:6]}-{i}" for i in range(6)]
    steps = 1500
    with Receiver([200] * 100) as receiver:
        pipeline = pipeline_file(tmp_path, receiver.url)
        workers = [start_worker(own_topics, pipeline, group, tmp_path / "w0.log")]
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
            time.sleep(8)
            workers += [start_worker(own_topics, pipeline, group, tmp_path / f"w{i}.log") for i in (1, 2)]
            time.sleep(12)
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
    restored = sum((tmp_path / f"w{i}.log").read_text().count("state restored from snapshot") for i in range(3))
    assert restored > 0, "partitions changed hands with their state"


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
        outcome = proc.handle(messages)
        (key, value, headers), = outcome.dead_letters
        assert dict(headers)[DLQ_REASON] == b"rejected" and json.loads(value)["step"] == 37
        assert scalar(client, "SELECT count() FROM metric_points WHERE run = {r:String}", r=run) == 99
    finally:
        client.command(f"ALTER TABLE metric_points DROP CONSTRAINT {poison}")


def recreate(settings, *topics: Topic) -> None:
    """Delete the topics and make them again under the same names (Kafka rebuilt, ClickHouse kept)."""
    from confluent_kafka.admin import AdminClient

    from deploy.topics import create_topics

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
