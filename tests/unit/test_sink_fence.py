"""The next owner of a partition reads its offset watermark only after the inserts naming that partition
which were still running in ClickHouse when it took over have ended (sink.py, FENCE_WAIT_S)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from trainmon.settings import Settings
from trainmon.stream_processors import sink as sink_module
from trainmon.stream_processors.sink import ClickHouseSink, fence_query_id, fenced_partitions


class Server:
    """ClickHouse at the sink's boundary: the inserts running (query id -> how many more looks at
    system.processes still list it), and every partition's watermark."""

    def __init__(self, running: dict[str, int], watermark: int = 41) -> None:
        self.running, self.watermark, self.log = dict(running), watermark, []

    def query(self, sql: str, parameters: dict) -> SimpleNamespace:
        if "system.processes" in sql:
            self.log.append("processes")
            rows = [(q,) for q in self.running if q.startswith(parameters["p"])]
            self.running = {q: n - 1 for q, n in self.running.items() if n > 1}
            return SimpleNamespace(result_rows=rows)
        self.log.append(f"watermark {parameters['t']}")
        return SimpleNamespace(result_rows=[(self.watermark, 1)])


def sink_for(server: Server, group: str = "g") -> ClickHouseSink:
    return ClickHouseSink(Settings(processors_group=group), client_factory=lambda settings: server)


def previous_owner_id(partitions: list[int], group: str = "g") -> str:
    return fence_query_id(sink_for(Server({}), group)._fence_prefix, [("t", p, 7) for p in partitions])


def test_an_insert_names_its_group_and_partitions_and_a_retry_is_another_query() -> None:
    sink = sink_for(Server({}))
    sources = [("t", 3, 10), ("t", 1, 11), ("u", 3, 12)]
    settings = sink._insert_settings("metric_points", sources)
    assert settings["query_id"].startswith(sink._fence_prefix + ".")
    assert fenced_partitions(settings["query_id"]) == {1, 3}
    assert sink._insert_settings("metric_points", sources)["query_id"] != settings["query_id"]
    assert settings["insert_deduplication_token"] == sink._insert_settings("metric_points", sources)[
        "insert_deduplication_token"]  # the same rows: deduplicated, whatever the query id
    assert "query_id" not in sink._insert_settings("windows", [None, ("t", 1, 11)])  # no watermark counts them
    assert sink_for(Server({}), "other")._fence_prefix != sink._fence_prefix


def test_the_watermark_is_read_once_the_previous_owners_insert_of_the_partition_ended(caplog) -> None:
    server = Server({previous_owner_id([2, 5]): 3,  # naming partition 5: waited for
                     previous_owner_id([4]): 50,  # another partition: not waited for
                     previous_owner_id([5], group="other"): 50})  # another group: not even listed
    sink = sink_for(server)
    with caplog.at_level(logging.INFO, logger="trainmon.processors"):
        assert sink.skip("t", 5, 41) and not sink.skip("t", 5, 42)
    assert server.log == ["processes"] * 4 + ["watermark t"]  # listed by three looks, gone at the fourth
    assert "1 insert(s) of its rows still running" in caplog.text and "ended after" in caplog.text

    assert sink.skip("u", 5, 3)  # another topic of the partition: its watermark, no second wait
    assert server.log[-2:] == ["watermark t", "watermark u"]
    sink.forget([5])  # revoked; assigned again later: waited for again
    sink.skip("t", 5, 1)
    assert server.log[-2:] == ["processes", "watermark t"]


def test_an_insert_that_never_ends_is_waited_for_a_bounded_time(monkeypatch, caplog) -> None:
    monkeypatch.setattr(sink_module, "FENCE_WAIT_S", 0.5)
    monkeypatch.setattr(sink_module, "FENCE_POLL_S", 0.05)
    stuck = previous_owner_id([0])
    sink = sink_for(Server({stuck: 10_000}))
    with caplog.at_level(logging.ERROR, logger="trainmon.processors"):
        assert not sink.skip("t", 0, 42)
    assert "may be written twice" in caplog.text and stuck in caplog.text


@pytest.mark.parametrize("sources", [[], [None]])
def test_rows_without_a_source_get_no_fence_id(sources) -> None:
    assert "query_id" not in sink_for(Server({}))._insert_settings("windows", sources)
