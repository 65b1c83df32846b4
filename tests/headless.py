"""Headless Chromium driven over the DevTools protocol, and a `trainmon dashboard` started for it.

Used by tests/integration/test_dashboard_browser.py and bench/page_load.py. Streamlit renders in the
browser over a websocket after the page loads, so a plain `chromium --screenshot` catches a blank
page: here the page counts as rendered when the app's script has finished (`data-test-script-state`
is `notRunning`), its text holds what is expected, no element is still a loading skeleton and every
chart has drawn. Needs Debian's `chromium` (apt-get install -y chromium); the `websockets` client
comes with Streamlit.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
    "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
    "--mute-audio", "--hide-scrollbars", "--window-size=1400,1000", "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]

# Evaluated in the page: what the page shows and whether Streamlit has finished drawing it.
PROBE = """(() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const state = app ? app.getAttribute('data-test-script-state') : null;
  if (state !== 'notRunning') return JSON.stringify({state: state});  // cheap while it still runs
  const charts = [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')];
  return JSON.stringify({
    state: state,
    connection: app.getAttribute('data-test-connection-state'),
    text: document.body.innerText,
    skeletons: document.querySelectorAll('[data-testid="stSkeleton"]').length,
    charts: charts.length,
    drawn: charts.filter(c => c.querySelector('canvas, svg.marks')).length,
    exceptions: document.querySelectorAll('[data-testid="stException"]').length,
    errors: [...document.querySelectorAll('[data-testid="stAlertContentError"]')].map(e => e.innerText),
  });
})()"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            # Debian's /usr/bin/chromium is a shell wrapper; the binary beside it skips its checks.
            real = Path("/usr/lib/chromium/chromium")
            return str(real) if name == "chromium" and real.exists() else path
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Rendered:
    url: str
    ms: float  # navigation start to fully rendered
    text: str
    exceptions: int
    errors: list[str]
    charts: int
    screenshot: Path | None = None


class Chromium:
    """One headless Chromium and one tab, over the DevTools protocol."""

    def __init__(self, binary: str | None = None) -> None:
        from websockets.sync.client import connect

        binary = binary or find_chromium()
        if not binary:
            raise RuntimeError("no Chromium found: apt-get install -y chromium")
        self.profile = tempfile.mkdtemp(prefix="trainmon-chromium-")
        self.process = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"Chromium did not open its DevTools port ({binary})")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        deadline = time.monotonic() + 10
        while True:
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5))
                page = next(t for t in targets if t.get("type") == "page")
                break
            except (OSError, StopIteration):
                if time.monotonic() > deadline:
                    self.close()
                    raise
                time.sleep(0.1)
        # entered by hand: works with websockets 12 to 17 (17.1 warns on a connect() not entered)
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20, open_timeout=10).__enter__()
        self.ids = itertools.count(1)
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, timeout: float = 30, **params: Any) -> dict:
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def probe(self) -> dict:
        result = self.send("Runtime.evaluate", expression=PROBE, returnByValue=True)
        return json.loads(result["result"]["value"])

    def load(self, url: str, expect: list[str], timeout: float = 30, settle_s: float = 0.0, charts: int = 0
             ) -> Rendered:
        """Navigate and wait until the page is fully rendered, shows every string of `expect` and has drawn
        at least `charts` charts (a chart's element appears only once its code has loaded: without
        this, a page can look finished before its charts exist)."""
        self.send("Page.navigate", url="about:blank")
        started = time.perf_counter()
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        seen: dict = {}
        while time.monotonic() < deadline:
            try:
                seen = self.probe()
            except RuntimeError:  # the document was replaced while evaluating
                time.sleep(0.02)
                continue
            done = (seen.get("state") == "notRunning" and not seen["skeletons"] and seen["drawn"] >= seen["charts"]
                    and seen["drawn"] >= charts and all(text in seen["text"] for text in expect))
            if done or seen.get("exceptions"):
                break
            time.sleep(0.03)
        else:
            missing = [t for t in expect if t not in seen.get("text", "")]
            raise TimeoutError(f"{url} not rendered in {timeout} s: state={seen.get('state')} missing={missing} "
                               f"charts={seen.get('drawn')}/{seen.get('charts')} skeletons={seen.get('skeletons')}")
        ms = (time.perf_counter() - started) * 1000
        if settle_s:
            time.sleep(settle_s)
            seen = self.probe()
        return Rendered(url=url, ms=ms, text=seen["text"], exceptions=seen["exceptions"], errors=seen["errors"],
                        charts=seen["charts"])

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        # let the sidebar's slide-in (and chart transitions) finish
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            left = self.send("Runtime.evaluate", returnByValue=True, expression=(
                "(() => { const s = document.querySelector('[data-testid=\"stSidebar\"]');"
                " return s ? s.getBoundingClientRect().left : 0; })()"))["result"].get("value", 0)
            if left >= 0:
                break
            time.sleep(0.1)
        time.sleep(0.3)
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            # Streamlit scrolls inside its main section, not the document: measure that.
            height = self.send("Runtime.evaluate", returnByValue=True, expression=(
                "Math.max(document.body.scrollHeight, ...[...document.querySelectorAll("
                "'[data-testid=\"stMain\"], section.main, [data-testid=\"stAppViewContainer\"]')]"
                ".map(e => e.scrollHeight))"))["result"]["value"]
            height = int(min(max(1000, height), 8000))
            self.send("Emulation.setDeviceMetricsOverride", width=1400, height=height, deviceScaleFactor=1,
                      mobile=False)
            time.sleep(0.6)  # the viewport is the whole page now: no captureBeyondViewport (it re-lays out)
        data = self.send("Page.captureScreenshot", **params)["data"]
        if full_page:
            self.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(5)
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Dashboard:
    """`trainmon dashboard` on a free loopback port, in its own process group, with `env` added."""

    def __init__(self, env: Mapping[str, str], port: int | None = None, log: Path | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log or Path(tempfile.mkstemp(prefix="trainmon-dashboard-", suffix=".log")[1])
        command = [sys.executable, "-m", "trainmon.cli", "dashboard", "--port", str(self.port)]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = self.log.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"trainmon dashboard did not come up on {self.url}:\n{output}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)

    def __enter__(self) -> "Dashboard":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
