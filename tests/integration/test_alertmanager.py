"""The alertmanager route against a real Alertmanager (Debian's prometheus-alertmanager) started by
AlertmanagerService on free loopback ports under a temporary home; its webhook receiver is a local
Receiver. A firing alert and then its resolve must come out of Alertmanager as notifications.
Under CI=true a missing binary fails the test; elsewhere it is skipped with the reason."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainmon.deploy.services.alertmanager import AlertmanagerService, find_binary
from trainmon.deploy.services.base import ServiceError, pid_alive
from trainmon.deploy.services.clickhouse import DIRECT_HTTP
from trainmon.stream_processors.delivery import Dispatcher
from trainmon.stream_processors.routes import RouteSpec, build_route
from tests.conftest import IN_CI
from tests.receivers import DASHBOARD, Receiver, Recorder
from tests.receivers import sample_alert as alert
from trainmon.settings import Settings

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[AlertmanagerService, Receiver]]:
    """A running Alertmanager whose only receiver is a local Receiver; stopped by PID afterwards."""
    try:
        find_binary()
        missing = ""
    except ServiceError as exc:
        missing = str(exc)
    if missing and IN_CI:
        pytest.fail(f"CI=true and Alertmanager is unavailable: {missing}", pytrace=False)
    if missing:
        pytest.skip(missing)

    with Receiver() as receiver:
        settings = Settings(
            services_home=str(tmp_path / "home"),
            services_alertmanager_port=free_port(),
            services_alertmanager_webhook_url=f"{receiver.url}/alertmanager",
        )
        service = AlertmanagerService(settings)
        status = service.start(progress=print)
        try:
            assert status.healthy and status.detail.startswith("Alertmanager 0."), status
            yield service, receiver
        finally:
            service.stop(progress=print)
            assert status.pid is not None and not pid_alive(status.pid)


def test_firing_then_resolved_come_out_of_alertmanager(alertmanager: tuple[AlertmanagerService, Receiver]) -> None:
    service, receiver = alertmanager
    assert service.config_file.read_text().count(receiver.url) == 1
    recorder = Recorder()
    route = build_route(RouteSpec(name="oncall", kind="alertmanager", url=service.address, retries=1))
    dispatcher = Dispatcher([route], recorder)
    try:
        dispatcher.submit(alert("firing"))
        (fired,) = receiver.wait_for(1, timeout=15)
        with DIRECT_HTTP.open(f"{service.address}/api/v2/alerts", timeout=2) as response:
            (active,) = json.load(response)
        dispatcher.submit(alert("resolved"))
        resolved = receiver.wait_for(2, timeout=15)[1]
    finally:
        abandoned = dispatcher.close(5)
    assert abandoned == 0

    assert active["labels"]["alertname"] == "nan_loss" and active["status"]["state"] == "active"
    assert fired.method == "POST" and fired.path == "/alertmanager"
    note = fired.json()
    assert (note["version"], note["status"]) == ("4", "firing")
    (sent,) = note["alerts"]
    assert sent["status"] == "firing"
    assert sent["labels"] == {"alertname": "nan_loss", "severity": "critical", "project": "p", "run": "r1",
                              "rank": "0", "host": "node-1", "metric": "train/loss"}
    assert sent["annotations"]["summary"] == "train/loss is NaN in run r1"
    assert sent["generatorURL"] == DASHBOARD
    assert sent["startsAt"].startswith("2025-11-27T08:00:00")

    note = resolved.json()
    assert note["status"] == "resolved"
    (sent,) = note["alerts"]
    assert sent["status"] == "resolved" and sent["labels"]["alertname"] == "nan_loss"
    assert sent["endsAt"].startswith("2025-11-27T08:03:12.5")

    assert [(r["state"], r["attempt"], r["outcome"], r["http_status"]) for r in recorder.rows] == [
        ("firing", 1, "delivered", 200), ("resolved", 1, "delivered", 200)
    ]
