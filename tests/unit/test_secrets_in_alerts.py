"""trainmon's own credentials never leave in an alert: with every password setting set, the shipped
pipeline (its example routes on) makes a real alert, and no route's request nor any log line carries
one of them."""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest

from trainmon.settings import Settings, env_name
from trainmon.stream_processors import processing as processing_module
from trainmon.stream_processors.config import DEFAULT_PIPELINE, load_pipeline
from trainmon.stream_processors.processing import Message, Processing
from trainmon.stream_processors.routes import build_route
from tests.unit.alert_streams import metrics
from tests.unit.test_processing import Dispatcher, MemorySink
from trainmon.contract import encode

T = 1_764_230_400.0
SECRETS = {env_name(f.name): f"s3cret-{i}-{f.name}" for i, f in enumerate(dataclasses.fields(Settings))
           if "password" in f.name}


def test_no_route_request_or_log_line_carries_a_trainmon_password(tmp_path, monkeypatch, caplog) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    text = re.sub(r"(?m)^  # (  |- )", r"  \1", DEFAULT_PIPELINE.read_text())  # the example routes, on
    (tmp_path / "pipeline.yml").write_text(text)
    environ = {**SECRETS, "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/x",
               "PAGERDUTY_ROUTING_KEY": "k" * 32, "TRAINMON_WEBHOOK_SECRET": "route-secret"}
    pipeline = load_pipeline(tmp_path / "pipeline.yml", environ=environ)
    monkeypatch.setattr(processing_module.time, "time", lambda: T + 5)
    caplog.set_level(logging.DEBUG)
    processing = Processing(pipeline, MemorySink(), Dispatcher())
    processing.assign([0])
    processing.handle([Message("t.metrics", 0, step, b"r1", encode(metrics(step, T + step, loss="NaN" if step else 1.0)))
                       for step in range(3)])
    processing.tick()
    alerts, _ = processing.release()
    assert [a["rule"] for a in alerts] == ["loss_non_finite"]
    requests = [build_route(spec).request(alert) for spec in pipeline.routes for alert in alerts]
    assert len(requests) == 4
    seen = " ".join([repr(r) for r in requests] + [r.getMessage() for r in caplog.records])
    leaked = [name for name, value in SECRETS.items() if value in seen]
    assert not leaked, leaked
