"""A local HTTP receiver standing in for Slack, PagerDuty, webhooks and Alertmanager's own webhook.

It records every request as it arrives (before any delay, so a test can see a request whose answer
it made hang) and answers from a scripted sequence: e.g. [503, 503, 200] to exercise retries, or
Reply(200, delay_s=5) to exercise timeouts. The last reply repeats. Binds 127.0.0.1 only.
Also here: the sample alert event and the delivery-record collector that route tests share.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from trainmon import contract


class LoopbackServer(ThreadingHTTPServer):
    """A threaded HTTP server for a test's local endpoints (the receiver here, tests/clickhouse_proxy.py)."""

    daemon_threads = True
    request_queue_size = 128  # the default 5 drops concurrent connects, which then wait 1 s to retry


@dataclass(frozen=True)
class Reply:
    status: int = 200
    delay_s: float = 0.0  # wait this long before answering
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: Mapping[str, str]  # as sent; look up with the exact case, or use header()
    body: bytes
    at: float  # time.monotonic() on arrival
    wall: float  # time.time() on arrival: compared with event times for latency

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """`with Receiver([503, 200]) as r: ... r.url ... r.wait_for(2)`."""

    def __init__(self, replies: Sequence[int | Reply] = (200,)) -> None:
        self._replies = [r if isinstance(r, Reply) else Reply(r) for r in replies] or [Reply()]
        self._cond = threading.Condition()
        self.requests: list[Received] = []
        self._server = LoopbackServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="receiver", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "Receiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """The first `count` requests, waiting up to timeout seconds; AssertionError if fewer came."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"receiver got {len(self.requests)} requests in {timeout}s, expected {count}")
            return self.requests[:count]

    def _arrived(self, received: Received) -> Reply:
        with self._cond:
            reply = self._replies[min(len(self.requests), len(self._replies) - 1)]
            self.requests.append(received)
            self._cond.notify_all()
        return reply

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                reply = receiver._arrived(
                    Received(self.command, self.path, dict(self.headers.items()), body, time.monotonic(), time.time())
                )
                time.sleep(reply.delay_s)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a timeout test)
                    pass

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


# --- what route and delivery tests send, and what they record --------------------------------------

T0 = 1_764_230_400.0  # 2025-11-27T08:00:00Z
DASHBOARD = "http://127.0.0.1:8501/?project=p&run=r1"


def sample_alert(state: str = "firing", fingerprint: str = "fp-1", **changes: Any) -> dict[str, Any]:
    """A valid contract alert event (NaN loss in run r1), firing at T0 or resolved 192.5 s later."""
    event = contract.envelope(
        "alert",
        rule="nan_loss",
        fingerprint=fingerprint,
        state=state,
        severity="critical",
        labels={"project": "p", "run": "r1", "rank": "0", "host": "node-1", "metric": "train/loss"},
        annotations={
            "summary": "train/loss is NaN in run r1",
            "description": "rank 0 logged NaN at step 1200",
            "dashboard_url": DASHBOARD,
        },
        values={"step": 1200},
        starts_at=T0,
        ends_at=T0 + 192.5 if state == "resolved" else None,
        time=T0 + 192.5 if state == "resolved" else T0 + 0.25,
        project="p",
        run="r1",
    )
    event.update(changes)
    return contract.validate(event)


class Recorder:
    """The dispatcher's `record` callback for tests: keeps the alert_deliveries rows it is given."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, row: dict[str, Any]) -> None:
        with self._lock:
            self.rows.append(row)

    def of(self, route: str) -> list[tuple[int, str, int]]:
        """(attempt, outcome, http_status) of one route's rows, in arrival order."""
        with self._lock:
            return [(r["attempt"], r["outcome"], r["http_status"]) for r in self.rows if r["route"] == route]
