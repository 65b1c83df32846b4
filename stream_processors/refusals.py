"""The pipeline's own alert when ClickHouse refuses rows for good.

A refused row is dead-lettered and the rest of its batch is written (sink.py), so nothing else stops;
but data is missing from the tables until someone looks, so on-call must hear of it: one alert per
table, then at most one more every `notice_interval_s` while refusals go on, each with the number
refused since the previous one. It is a notice, not a condition: it never resolves (like `run_lost`),
and its state is the worker's, not a partition's, so a restarted worker may notify once more.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

from trainmon.stream_processors.alerts import AlertBook
from trainmon.stream_processors.rules.base import Condition, RuleSpec

ROWS_REFUSED = RuleSpec(
    name="clickhouse_rows_refused", kind="clickhouse_rows_refused", severity="warning",
    annotations={"summary": "ClickHouse refused {refused} row(s) for table {table} for good; they are in the "
                            "dead-letter topic with reason 'rejected', the rest of their batches was written",
                 "next_step": "ClickHouse's reason is in the trainmon-dlq-detail header of those messages (the "
                              "<prefix>deadletter topic) and in the worker's log; run `trainmon db migrate` if "
                              "the schema is behind, else fix what produced the value"})


class RefusalNotices:
    def __init__(self, book: AlertBook, notice_interval_s: float = 300.0) -> None:
        self.book = book
        self.notice_interval_s = notice_interval_s
        self.noticed: Counter[str] = Counter()  # table -> refusals already in an alert
        self.noticed_at: dict[str, float] = {}

    def due(self, refused: Mapping[str, int], now: float) -> list[dict[str, Any]]:
        """Alerts for tables with refusals not yet notified, unless one was sent within the interval.
        refused: table -> rows refused since the worker started (the sink's count)."""
        out = []
        for table, total in refused.items():
            new = total - self.noticed[table]
            if new > 0 and now - self.noticed_at.get(table, float("-inf")) >= self.notice_interval_s:
                out.append(self.book.once(ROWS_REFUSED, Condition({"table": table}, True, now, {"refused": new}), now))
                self.noticed[table], self.noticed_at[table] = total, now
        return out
