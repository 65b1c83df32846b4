"""Sending alerts to their routes without ever holding up the stream. See docs/routes.md.

The dispatcher owns one background thread running its own asyncio event loop with aiohttp (installed
with faust). Why that and not a thread pool: a delivery spends nearly all its life waiting (on the
receiver, on a timeout, on a backoff of up to 30 s); as coroutines those waits cost nothing, so a
route that hangs or backs off cannot use up workers that other routes need. A separate loop, not
Faust's, keeps slow receivers from ever delaying stream processing, and lets sync code call submit().

Guarantees:
- `submit()` never blocks: it matches routes, bumps a counter and hands the alert to the loop; a
  route whose queue of unfinished deliveries is full drops the new one (counted, logged).
- Routes are independent: each has its own queue bound and its own in-flight limit.
- Per route, deliveries of one fingerprint go out in submission order: a resolve waits until its
  firing is delivered or has failed for good. Different fingerprints proceed concurrently.
- Every attempt is recorded with the columns of ClickHouse table `alert_deliveries`.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

import aiohttp

from trainmon.stream_processors.routes.base import Route

MAX_BACKOFF_S = 30.0  # cap of the exponential backoff between attempts
MAX_RETRY_AFTER_S = 300.0  # a receiver's Retry-After is honoured up to this
MAX_IN_FLIGHT = 8  # concurrent requests per route
ERROR_BODY_BYTES = 200  # of a refusing receiver's answer, kept in the record's error
DROP_LOG_INTERVAL_S = 10.0
MATCH_FIELDS = ("severity", "rule")  # other match keys are alert labels
COUNTER_OF_OUTCOME = {"delivered": "delivered", "retrying": "retried", "failed": "failed"}

log = logging.getLogger(__name__)

Record = dict[str, Any]


def matches(match: Mapping[str, Any], alert: Mapping[str, Any]) -> bool:
    """Every key must fit: `severity` and `rule` against the alert's fields, any other key against the
    label of that name; a value is one allowed string or a list of them. An empty match takes all."""
    for key, expected in match.items():
        actual = alert.get(key) if key in MATCH_FIELDS else alert["labels"].get(key)
        allowed = expected if isinstance(expected, (list, tuple)) else (expected,)
        if actual not in allowed:
            return False
    return True


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def backoff_s(base_s: float, attempt: int, retry_after: float | None) -> float:
    """Delay after failed attempt n: base * 2^(n-1), capped; never shorter than the receiver asked."""
    delay = min(base_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
    return max(delay, min(retry_after, MAX_RETRY_AFTER_S)) if retry_after is not None else delay


def utc(unix_s: float) -> datetime:
    return datetime.fromtimestamp(unix_s, tz=timezone.utc)


@dataclass(frozen=True)
class DeliveryStats:
    """Counters since start; a delivery is one alert to one matching route."""

    accepted: int
    dropped: int  # refused: the route's queue was full, or the dispatcher was closed
    delivered: int
    failed: int  # gave up: a refusal that is not worth retrying, retries exhausted, or closed
    retried: int  # attempts that ended in 'retrying'
    pending: int  # accepted, neither delivered nor failed yet


class _Answer(NamedTuple):
    status: int  # 0 when no HTTP answer came
    error: str  # "" when delivered
    retryable: bool
    retry_after: float | None = None


@dataclass
class _Lane:
    """One route's share of the dispatcher: its queue count, in-flight limit, connections, order."""

    route: Route
    pending: int = 0
    slots: asyncio.Semaphore | None = None
    session: aiohttp.ClientSession | None = None
    tails: dict[str, asyncio.Task] = field(default_factory=dict)  # fingerprint -> its latest delivery


class Dispatcher:
    """Deliver alerts to routes in the background; see the module docstring for the guarantees.

    `record` is called from the dispatcher's thread, once per attempt, with a dict holding exactly the
    columns of `alert_deliveries`; it must be thread-safe and quick (e.g. append to the sink's buffer).
    """

    def __init__(self, routes: Sequence[Route], record: Callable[[Record], None], *, max_queue: int = 10000) -> None:
        self._lanes = [_Lane(route) for route in routes]
        self._record_fn = record
        self._max_queue = max_queue
        self._lock = threading.Lock()
        self._counts = dict(accepted=0, dropped=0, delivered=0, failed=0, retried=0)
        self._closed = False
        self._last_drop_log = 0.0
        self._tasks: set[asyncio.Task] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="trainmon-delivery", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()

    async def _open(self) -> None:
        for lane in self._lanes:
            lane.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
            # trust_env=False: no proxy from the environment; redirects are refused per request.
            lane.session = aiohttp.ClientSession(trust_env=False)

    # --- the caller's side: never blocks ---------------------------------------------------------

    def submit(self, alert: Mapping[str, Any]) -> None:
        """Queue the alert for every route whose match fits it; returns at once. The dispatcher keeps
        the alert as given: do not change it afterwards."""
        accepted: list[_Lane] = []
        with self._lock:
            for lane in self._lanes:
                if not matches(lane.route.spec.match, alert):
                    continue
                if self._closed or lane.pending >= self._max_queue:
                    self._counts["dropped"] += 1
                    self._note_drop(lane)
                    continue
                lane.pending += 1
                self._counts["accepted"] += 1
                accepted.append(lane)
            if accepted:  # under the lock: close() then always finds this hand-over queued before its drain
                self._loop.call_soon_threadsafe(self._start, accepted, alert, utc(alert["time"]))

    def _note_drop(self, lane: _Lane) -> None:
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            why = "dispatcher closed" if self._closed else f"{lane.pending} deliveries queued (max {self._max_queue})"
            log.warning(
                "alert delivery dropped for route %s: %s; %d dropped in all",
                lane.route.spec.name, why, self._counts["dropped"],
            )

    @property
    def stats(self) -> DeliveryStats:
        with self._lock:
            return DeliveryStats(**self._counts, pending=sum(lane.pending for lane in self._lanes))

    def close(self, timeout_s: float = 10.0) -> int:
        """Stop accepting, wait up to timeout_s for queued deliveries, abandon the rest (each recorded
        as failed). Returns how many were abandoned. Call it before closing the sink `record` feeds."""
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
        abandoned = asyncio.run_coroutine_threadsafe(self._drain(timeout_s), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        return abandoned

    # --- the loop's side -----------------------------------------------------------------------

    def _start(self, lanes: list[_Lane], alert: Mapping[str, Any], notified_at: datetime) -> None:
        fingerprint = alert["fingerprint"]
        for lane in lanes:
            task = self._loop.create_task(self._deliver(lane, alert, notified_at, lane.tails.get(fingerprint)))
            lane.tails[fingerprint] = task
            self._tasks.add(task)
            task.add_done_callback(lambda done, lane=lane: self._finished(lane, fingerprint, done))

    def _finished(self, lane: _Lane, fingerprint: str, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if lane.tails.get(fingerprint) is task:
            del lane.tails[fingerprint]
        with self._lock:
            lane.pending -= 1

    async def _drain(self, timeout_s: float) -> int:
        pending: set[asyncio.Task] = set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for lane in self._lanes:
            assert lane.session is not None
            await lane.session.close()
        return len(pending)

    async def _deliver(
        self, lane: _Lane, alert: Mapping[str, Any], notified_at: datetime, previous: asyncio.Task | None
    ) -> None:
        """All attempts of one delivery, after the same fingerprint's previous one on this route."""
        spec = lane.route.spec
        attempt = 1  # the attempt in flight, or the next one while waiting
        try:
            if previous is not None:
                await asyncio.wait([previous])
            while True:
                assert lane.slots is not None
                async with lane.slots:
                    started = time.monotonic()
                    answer = await self._attempt(lane, alert)
                    latency_ms = (time.monotonic() - started) * 1000.0
                if answer.error == "":
                    outcome = "delivered"
                elif answer.retryable and attempt <= spec.retries:
                    outcome = "retrying"
                else:
                    outcome = "failed"
                self._record(lane, alert, notified_at, attempt, outcome, answer.status, answer.error, latency_ms)
                if outcome != "retrying":
                    return
                await asyncio.sleep(backoff_s(spec.backoff_s, attempt, answer.retry_after))
                attempt += 1
        except asyncio.CancelledError:
            self._record(lane, alert, notified_at, attempt, "failed", 0, "dispatcher closed before delivery", 0.0)
            raise

    async def _attempt(self, lane: _Lane, alert: Mapping[str, Any]) -> _Answer:
        """One HTTP request. Connection errors, timeouts, 5xx and 429 are worth retrying; other answers not."""
        spec = lane.route.spec
        try:
            request = lane.route.request(alert)
        except (KeyError, TypeError, ValueError) as exc:  # an alert the route cannot render: no retry helps
            return _Answer(0, f"bad alert for this route: {type(exc).__name__}: {exc}", retryable=False)
        assert lane.session is not None
        try:
            async with lane.session.post(
                request.url,
                data=request.body,
                headers=dict(request.headers),
                timeout=aiohttp.ClientTimeout(total=spec.timeout_s),
                allow_redirects=False,  # a redirect must not carry an alert somewhere unconfigured
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    return _Answer(status, "", retryable=False)
                body = (await response.content.read(ERROR_BODY_BYTES)).decode(errors="replace").strip()
                return _Answer(
                    status,
                    f"HTTP {status}" + (f": {body}" if body else ""),
                    retryable=status == 429 or status >= 500,
                    retry_after=retry_after_s(response.headers.get("Retry-After")),
                )
        except TimeoutError:
            return _Answer(0, f"timeout after {spec.timeout_s:g}s", retryable=True)
        except aiohttp.ClientError as exc:
            return _Answer(0, f"{type(exc).__name__}: {exc}", retryable=True)
        except Exception as exc:  # unforeseen: record it rather than lose the delivery's trail
            log.exception("route %s: unexpected error sending an alert", spec.name)
            return _Answer(0, f"{type(exc).__name__}: {exc}", retryable=False)

    def _record(
        self, lane: _Lane, alert: Mapping[str, Any], notified_at: datetime, attempt: int,
        outcome: str, status: int, error: str, latency_ms: float,
    ) -> None:
        spec = lane.route.spec
        with self._lock:
            self._counts[COUNTER_OF_OUTCOME[outcome]] += 1
        row: Record = {
            "fingerprint": alert["fingerprint"],
            "rule": alert["rule"],
            "state": alert["state"],
            "route": spec.name,
            "kind": spec.kind,
            "attempt": attempt,
            "outcome": outcome,
            "http_status": status,
            "error": error,
            "latency_ms": latency_ms,
            "notified_at": notified_at,
            "time": datetime.now(timezone.utc),
        }
        try:
            self._record_fn(row)
        except Exception:  # the record is for the audit trail; losing one must not stop delivery
            log.exception("recording an alert delivery for route %s failed", spec.name)
