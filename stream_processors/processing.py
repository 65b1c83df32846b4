"""What the Faust agents do with a batch, as plain synchronous code (run in one worker thread).

Per partition it keeps an alert engine and a run book (dropped when the partition is revoked); per
worker, the rolling windows, the ClickHouse sink and the route dispatcher. Everything that touches
that state runs in the same single thread, so no locks are needed and the event loop never blocks.
"""

from __future__ import annotations

import logging
import statistics
import time
import json
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from stream_processors.alerts import AlertBook
from stream_processors.config import PipelineConfig
from stream_processors.engine import Engine
from stream_processors.rules import build_rule
from stream_processors.runs import RunBook, raw_event_row
from stream_processors.sink import Batch, ClickHouseSink, utc
from stream_processors.windows import Windows
from trainmon.contract import (DLQ_DETAIL, DLQ_OFFSET, DLQ_PARTITION, DLQ_REASON, DLQ_TOPIC, ContractError,
                               decode)

log = logging.getLogger("trainmon.processors")

RUN_KINDS = frozenset({"run_start", "run_meta", "heartbeat", "run_end"})


@dataclass(frozen=True)
class Message:
    """The parts of a Kafka message the processing needs (Faust's own objects stay in the agents)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass
class Outcome:
    """What a batch asks the async side to send to Kafka afterwards."""

    dead_letters: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    run_hardware: list[dict] = field(default_factory=list)  # re-keyed by run, for the stall rule
    host_run_ends: list[dict] = field(default_factory=list)  # run_end re-keyed by host, for node rules


def run_hardware(event: Mapping[str, Any]) -> list[dict]:
    """System sample -> one GPU-busyness summary per run on the node, re-keyed by run (stall rule)."""
    gpus = [g["figures"]["util_percent"] for g in event.get("gpus") or () if "util_percent" in g["figures"]]
    if not gpus or not event.get("runs"):
        return []
    busy = statistics.fmean(gpus)
    return [{"kind": "run_hardware", "run": run, "host": event["host"], "time": event["time"],
             "gpu_util_percent": busy, "gpus": len(gpus)} for run in event["runs"]]


class Processing:
    def __init__(self, pipeline: PipelineConfig, sink: ClickHouseSink, dispatcher: Any,
                 deliveries: deque | None = None) -> None:
        self.pipeline = pipeline
        self.sink = sink
        self.dispatcher = dispatcher
        self.deliveries = deque() if deliveries is None else deliveries  # filled by the dispatcher's thread
        self.windows = Windows(pipeline.windows_s)
        self.engines: dict[tuple[str, int], Engine] = {}
        self.books: dict[int, RunBook] = {}
        self.counts: Counter[str] = Counter()

    def _engine(self, scope: str, partition: int) -> Engine:
        engine = self.engines.get((scope, partition))
        if engine is None:
            book = AlertBook(repeat_interval_s=self.pipeline.repeat_interval_s,
                             dashboard_url=self.pipeline.dashboard_url)
            engine = self.engines[(scope, partition)] = Engine([build_rule(s) for s in self.pipeline.rules], book)
        return engine

    # --- a batch from one topic ---------------------------------------------------------------------

    def handle(self, messages: Iterable[Message], source: str = "contract") -> Outcome:
        """A batch from one topic. source: `contract` (agents' topics), or the processors' own re-keyed
        internal topics `run_hardware` (by run) and `host_run_ends` (by host): trusted, not written."""
        outcome, batch, now = Outcome(), Batch(), time.time()
        internal = source != "contract"
        for message in messages:
            if source == "host_run_ends":
                outcome.alerts.extend(self._engine("host", message.partition).on_event(json.loads(message.value), now))
                continue
            if internal:
                event = json.loads(message.value)
            else:
                try:
                    event = decode(message.value)
                except ContractError as error:
                    outcome.dead_letters.append(_dead_letter(message, error))
                    self.counts[f"dead_letter.{error.reason.value}"] += 1
                    continue
            self.counts[event["kind"]] += 1
            write = not internal and not self.sink.skip(message.topic, message.partition, message.offset)
            self._route(event, message, batch, outcome, now, write=write)
        self.windows.add_metrics(batch.metric)
        self.windows.add_system(batch.system)
        self._alert_rows(batch, outcome.alerts)
        if batch:
            self.sink.write(batch)
        return outcome

    def _route(self, event: dict, message: Message, batch: Batch, outcome: Outcome, now: float, write: bool) -> None:
        kind, partition = event["kind"], message.partition
        if kind == "system":
            if write:
                batch.add_system(event, message.topic, partition, message.offset)
            outcome.run_hardware.extend(run_hardware(event))
            outcome.alerts.extend(self._engine("host", partition).on_event(event, now))
            return
        if kind in RUN_KINDS or kind == "metrics":
            self.books.setdefault(partition, RunBook()).observe(event)
            if write and kind == "metrics":
                batch.add_metrics(event, message.topic, partition, message.offset)
            elif write and kind != "heartbeat":
                batch.add("run_events", [raw_event_row(event)])
            if kind == "run_end":
                outcome.host_run_ends.append(event)
        outcome.alerts.extend(self._engine("run", partition).on_event(event, now))

    def _alert_rows(self, batch: Batch, alerts: list[dict]) -> None:
        for alert in alerts:
            self.dispatcher.submit(alert)
            self.counts[f"alert.{alert['state']}"] += 1
        batch.add("alerts", (alert_row(a) for a in alerts))

    # --- the clock ----------------------------------------------------------------------------------

    def tick(self) -> Outcome:
        """Time-based rules, window closing and run snapshots; about once a second."""
        outcome, batch, now = Outcome(), Batch(), time.time()
        for engine in self.engines.values():
            outcome.alerts.extend(engine.on_tick(now))
        self._alert_rows(batch, outcome.alerts)
        batch.add("window_aggregates", self.windows.close_due(now_watermark=now - 5.0))
        while self.deliveries:
            batch.add("alert_deliveries", [self.deliveries.popleft()])
        for book in self.books.values():
            runs, ranks = book.snapshots(now)
            batch.add("runs", runs)
            batch.add("run_ranks", ranks)
        if batch:
            self.sink.write(batch)
        return outcome

    def revoke(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Partitions moved to another worker: drop their state, re-read their watermark if they return."""
        partitions = list(partitions)
        for _topic, partition in partitions:
            self.engines.pop(("run", partition), None)
            self.engines.pop(("host", partition), None)
            self.books.pop(partition, None)
        self.sink.forget(partitions)

    def close(self) -> None:
        batch = Batch()
        batch.add("window_aggregates", self.windows.close_due(force=True))
        for book in self.books.values():
            runs, ranks = book.snapshots(time.time(), force=True)
            batch.add("runs", runs)
            batch.add("run_ranks", ranks)
        if batch:
            self.sink.write(batch)


def alert_row(alert: Mapping[str, Any]) -> dict[str, Any]:
    return {"fingerprint": alert["fingerprint"], "rule": alert["rule"], "state": alert["state"],
            "severity": alert["severity"], "project": alert.get("project") or "", "run": alert.get("run") or "",
            "labels": dict(alert["labels"]), "annotations": dict(alert.get("annotations") or {}),
            "values": {k: float(v) for k, v in (alert.get("values") or {}).items()},
            "starts_at": utc(alert["starts_at"]), "ends_at": utc(alert["ends_at"]) if alert.get("ends_at") else None,
            "time": utc(alert["time"])}


def _dead_letter(message: Message, error: ContractError) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    headers = [(DLQ_REASON, error.reason.value.encode()), (DLQ_DETAIL, str(error).encode()[:1000]),
               (DLQ_TOPIC, message.topic.encode()), (DLQ_PARTITION, str(message.partition).encode()),
               (DLQ_OFFSET, str(message.offset).encode())]
    return message.key, message.value, headers

