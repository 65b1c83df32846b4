"""The pipeline's own alert on rows ClickHouse refuses: heard of at once, never a storm."""

from __future__ import annotations

from collections import Counter

from trainmon.stream_processors.alerts import AlertBook
from trainmon.stream_processors.refusals import RefusalNotices


def test_the_first_refusal_alerts_at_once_then_at_most_once_per_interval_with_the_count_since() -> None:
    notices, refused = RefusalNotices(AlertBook(), notice_interval_s=300), Counter()
    assert notices.due(refused, 1000.0) == []
    refused["metric_points"] += 1
    first, = notices.due(refused, 1000.0)
    assert (first["rule"], first["state"], first["severity"]) == ("clickhouse_rows_refused", "firing", "warning")
    assert first["labels"]["table"] == "metric_points" and first["values"] == {"refused": 1}
    assert "1 row(s) for table metric_points" in first["annotations"]["summary"]
    refused["metric_points"] += 40
    assert notices.due(refused, 1299.0) == []  # refusals go on: no storm
    second, = notices.due(refused, 1300.0)
    assert second["values"] == {"refused": 40} and second["fingerprint"] == first["fingerprint"]
    assert notices.due(refused, 2000.0) == []  # nothing new: nothing to say


def test_each_table_is_its_own_notice() -> None:
    notices = RefusalNotices(AlertBook(), notice_interval_s=300)
    alerts = notices.due(Counter({"metric_points": 2, "runs": 1}), 10.0)
    assert sorted((a["labels"]["table"], a["values"]["refused"]) for a in alerts) == [("metric_points", 2), ("runs", 1)]
    assert len({a["fingerprint"] for a in alerts}) == 2
