"""An HTTP proxy in front of the real ClickHouse that can hold one insert in flight.

A worker killed while its insert is on the wire leaves one of two outcomes, and a test cannot time a
SIGKILL into a few milliseconds of a real insert: here the proxy takes the whole request from the worker and
answers nothing. ClickHouse gets the request and the first half of its body at once, so the insert is
running there (in system.processes), and the test decides after the kill whether it ends with its rows
written (`land`: the rest of the body, an insert that outlives its sender) or with none (`drop`: the
connection closed mid-body, the insert lost with its sender). Every other request passes straight
through. Binds 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import re
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote_plus, urlsplit

from tests.receivers import LoopbackServer

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class HoldingProxy:
    """`with HoldingProxy(url) as proxy: proxy.hold("metric_points"); ... proxy.held.wait(); kill; proxy.land()`."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 8123)
        self._target: re.Pattern | None = None
        self._lock = threading.Lock()
        self.held = threading.Event()  # set once a request is held
        self._decided = threading.Event()
        self._forward = False
        self._answered = threading.Event()
        self.landed = 0  # ClickHouse's status for the held request, once `land` sent the rest
        self.body = b""  # the held request's body
        self._server = LoopbackServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="clickhouse-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def hold(self, table: str) -> None:
        """Hold the next INSERT into `table` (the first one after this call; later ones pass)."""
        with self._lock:
            self._target = re.compile(rf"INSERT INTO\s+[`\"]?(\w+[`\"]?\.)?[`\"]?{table}\b", re.IGNORECASE)

    def land(self, timeout_s: float = 30) -> int:
        """Hand ClickHouse the rest of the held request, as if it had arrived whole before its sender died: its
        status."""
        self._forward = True
        self._decided.set()
        if not self._answered.wait(timeout_s):
            raise AssertionError("ClickHouse did not answer the held insert")
        return self.landed

    def drop(self) -> None:
        """Close the held request's connection mid-body, as if it had been lost with its sender: ClickHouse
        ends the insert with nothing written."""
        self._decided.set()

    def _take(self, query: str) -> bool:
        with self._lock:
            if self._target is None or self.held.is_set() or not self._target.search(query):
                return False
            self.held.set()
            return True

    def _send(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        upstream = http.client.HTTPConnection(*self._upstream, timeout=120)
        try:
            upstream.request(method, path, body=body, headers={**headers, "Content-Length": str(len(body))})
            response = upstream.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            upstream.close()

    def _send_held(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        """The request and half its body to ClickHouse now, the rest once decided (or the connection closed).
        ClickHouse reads up to max_query_size of the body before it starts a query (256 KiB by default, more
        than a test's insert): at 1 KiB the insert starts on the first half and waits for the rest, up to
        http_receive_timeout, set past any test's wait."""
        upstream = http.client.HTTPConnection(*self._upstream, timeout=300)
        try:
            settings = "max_query_size=1024&http_receive_timeout=300"
            upstream.putrequest(method, f"{path}{'&' if '?' in path else '?'}{settings}")
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                upstream.putheader(name, value)
            upstream.endheaders(body[:len(body) // 2])
            self._decided.wait()
            if self._forward:
                upstream.send(body[len(body) // 2:])
                self.landed = upstream.getresponse().status
                self._answered.set()
        finally:
            upstream.close()

    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _relay(self) -> None:
                body = self._body()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                query = unquote_plus(self.path) + " " + body[:200].decode("utf-8", "replace")  # URL or body
                if proxy._take(query):
                    proxy.body = body
                    proxy._send_held(self.command, self.path, headers, body)
                    self.close_connection = True  # the sender is gone: nothing to answer
                    return
                status, reply_headers, data = proxy._send(self.command, self.path, headers, body)
                self.send_response(status)
                for name, value in reply_headers:
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _relay

            def log_message(self, format: str, *args) -> None:
                pass

        return Handler

    def __enter__(self) -> "HoldingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._decided.set()
        self._server.shutdown()
        self._server.server_close()
