"""A run's alerts, followed from the alerts topic and handed to the training thread.

`run.on_alert` starts one `AlertFollower` per run, on first use: a run that never asks pays for no
consumer. Its thread reads the alerts topic and keeps the alerts that concern this rank: those of
its run, and those about its host that name no run (a GPU's hardware error, the node's memory,
disk). Each new transition is appended to `inbox`, which the training thread drains at its next
`run.log` (docs/sdk.md, "Alerts back into training"); the follower never calls user code itself.

The alerts topic is keyed by fingerprint, not run (one alert's transitions stay ordered), so a run's
alerts can be on any partition: the follower assigns every partition itself (no group membership,
so no rebalance of anyone, no offsets committed) from the offsets of the moment it started, and
skips other runs' alerts on their bytes before decoding them. A repeat of a firing alert (the
lifecycle re-sends it every `repeat_interval`) and a second copy after a worker's restart are not
new transitions; a resolve whose firing came before the follower started is not either.

Kafka unreachable or the topic missing: the follower retries every few seconds with the same start
time, so nothing sent meanwhile is skipped; training never waits for it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from trainmon.contract import SEVERITIES, ContractError, Topic, decode, topic_name

log = logging.getLogger("trainmon.sdk")

POLL_S = 0.2  # the longest the thread sleeps in librdkafka before it looks at its stop flag
BATCH = 500  # messages taken at once after the first
RETRY_S = 5.0  # between attempts while Kafka or the alerts topic is not there
CLOCK_SLACK_S = 1.0  # start this much before the registration: a worker's clock may run a little behind
METADATA_TIMEOUT_S = 5.0

# (settings, since, stop) -> batches of raw alert values, until stop is set. Swapped in unit tests.
Source = Callable[[Any, float, threading.Event], Iterator[list[bytes]]]


def _needle(field: str, value: str) -> bytes:
    """The bytes `"field":"value"` as contract.encode writes them (compact separators, no ASCII escapes)."""
    return f'"{field}":{json.dumps(value, ensure_ascii=False)}'.encode()


@dataclass(frozen=True)
class Subscription:
    """One `run.on_alert` registration: which transitions its callback is called with."""

    callback: Callable[[dict[str, Any]], Any]
    rules: frozenset[str] | None = None  # None: every rule
    least_severity: int = 0  # index in SEVERITIES: "warning" also takes "critical"
    resolved: bool = False  # also resolves, not only firings

    def wants(self, alert: dict[str, Any]) -> bool:
        return ((self.resolved or alert["state"] == "firing")
                and (self.rules is None or alert["rule"] in self.rules)
                and SEVERITIES.index(alert["severity"]) >= self.least_severity)


class AlertFollower:
    """This rank's alerts: the transitions not yet delivered (`inbox`) and those firing now (`firing`)."""

    def __init__(self, settings: Any, *, project: str, run: str, host: str, source: Source | None = None) -> None:
        self._settings = settings
        self._project, self._run, self._host = project, run, host
        self._needles = (_needle("run", run), _needle("host", host))
        self._source = source or kafka_alerts
        self.inbox: deque[dict[str, Any]] = deque()  # appended here, drained by the training thread
        # fingerprint -> the firing transition. Replaced whole, never changed in place: the training
        # thread reads it without a lock (one reference read is atomic in CPython).
        self._firing: dict[str, dict[str, Any]] = {}
        self._seen: set[tuple[str, str, float]] = set()  # (fingerprint, state, starts_at) already taken
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.since = 0.0

    def start(self) -> None:
        """Follow from now on, on a daemon thread; returns at once."""
        self.since = time.time() - CLOCK_SLACK_S
        self._thread = threading.Thread(target=self._follow, name=f"trainmon-alerts-{self._run}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop following (finish); waits at most timeout_s for the consumer to close."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def firing(self) -> list[dict[str, Any]]:
        return list(self._firing.values())

    def _follow(self) -> None:
        report = log.warning  # once; then at debug, not every RETRY_S in the training job's output
        while not self._stop.is_set():
            try:
                for batch in self._source(self._settings, self.since, self._stop):
                    for raw in batch:
                        self.take(raw)
            except Exception as exc:  # Kafka away, no topic, bad settings: try again, never die
                report("trainmon: cannot follow alerts yet (%s); retrying every %.0f s", exc, RETRY_S)
                report = log.debug
                self._stop.wait(RETRY_S)

    def take(self, raw: bytes) -> None:
        """One message of the alerts topic: a new transition of this rank's alerts joins the inbox."""
        if not any(needle in raw for needle in self._needles):
            return  # another run's, another host's: most of the topic, not worth decoding
        try:
            alert = decode(raw)
        except ContractError as exc:
            log.debug("trainmon: alert not understood (%s)", exc)
            return
        if not self._concerns(alert):
            return
        key = (alert["fingerprint"], alert["state"], alert["starts_at"])
        if key in self._seen:
            return  # a repeat notification, or a copy sent again after a worker restart
        fingerprint, firing = alert["fingerprint"], dict(self._firing)
        if alert["state"] == "firing":
            if alert.get("ends_at") is None:  # a final verdict (run_lost) comes with ends_at and no resolve
                firing[fingerprint] = alert
        elif firing.pop(fingerprint, None) is None:
            return  # its firing was before we started: the callbacks never heard of it
        self._seen.add(key)
        self._firing = firing
        self.inbox.append(alert)

    def _concerns(self, alert: dict[str, Any]) -> bool:
        """Of this run (in this project), or about this host and no run at all."""
        run = alert.get("run") or alert["labels"].get("run")
        if run is not None:
            project = alert.get("project") or alert["labels"].get("project", self._project)
            return run == self._run and project == self._project
        return alert["labels"].get("host") == self._host


def kafka_alerts(settings: Any, since: float, stop: threading.Event) -> Iterator[list[bytes]]:
    """Raw values of the alerts topic from `since` (unix s) on, in batches, until `stop` is set.

    Every partition is assigned by hand; the group id is this consumer's own and nothing is
    committed, so no group ever rebalances. Security comes from kafka_client.config like every
    other client's. Raises if Kafka or the topic is not there (the caller retries)."""
    from confluent_kafka import Consumer, TopicPartition

    from trainmon import kafka_client
    from trainmon.settings import load

    settings = settings or load()
    topic = topic_name(Topic.ALERTS, settings.kafka_topic_prefix)
    consumer = Consumer(kafka_client.config(settings, **{
        "group.id": f"trainmon-alerts-{os.urandom(8).hex()}", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "auto.offset.reset": "latest",
        "client.id": "trainmon-sdk-alerts", "log_level": 0}))
    try:
        metadata = consumer.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise RuntimeError(f"topic {topic} not found ({metadata.error if metadata else 'no metadata'})")
        partitions = sorted(metadata.partitions)
        # Each partition's end first, then the first offset at or after `since`: where no message is
        # that recent yet, the end as it was before that lookup, so nothing produced in between is lost.
        ends = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=METADATA_TIMEOUT_S)[1]
                for p in partitions]
        found = consumer.offsets_for_times([TopicPartition(topic, p, int(since * 1000)) for p in partitions],
                                           timeout=METADATA_TIMEOUT_S)
        consumer.assign([TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else end)
                         for tp, end in zip(found, ends)])
        log.debug("trainmon: following %s (%d partitions) from %.3f", topic, len(partitions), since)
        while not stop.is_set():
            # poll returns at the first message (consume(n, timeout) would wait out its timeout for n),
            # waiting in librdkafka without the GIL; then whatever else is there already.
            first = consumer.poll(POLL_S)
            if first is None:
                continue
            batch = [m.value() for m in (first, *consumer.consume(BATCH, 0)) if m.error() is None and m.value()]
            if batch:
                yield batch
    finally:
        consumer.close()
