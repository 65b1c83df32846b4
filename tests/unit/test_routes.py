"""Alert routes and the dispatcher: each route's documented payload field by field, the webhook
signature, and delivery (retries, timeouts, independence, ordering, never blocking) against local
HTTP receivers. Nothing here leaves 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import threading
import time
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from trainmon.stream_processors.delivery import Dispatcher, backoff_s, matches, retry_after_s
from trainmon.stream_processors.routes import ROUTE_KINDS, RouteSpec, build_route
from trainmon.stream_processors.routes.alertmanager import AlertmanagerRoute
from trainmon.stream_processors.routes.pagerduty import EVENTS_URL
from trainmon.stream_processors.routes.slack import COLORS
from tests.receivers import DASHBOARD, T0, Receiver, Recorder, Reply
from tests.receivers import sample_alert as alert
from trainmon import contract

ROOT = Path(__file__).resolve().parents[2]
def spec(kind: str = "webhook", url: str = "http://127.0.0.1:9/", **changes: Any) -> RouteSpec:
    """A fast-retrying spec; the port-9 default is never sent to (only request() is called on it)."""
    params = {"webhook": {"secret": "s3cret"}, "pagerduty": {"routing_key": "R0UT1NG"}}.get(kind, {})
    fields: dict[str, Any] = dict(name=f"{kind}-1", kind=kind, url=url, params=params, timeout_s=2.0,
                                  retries=2, backoff_s=0.01)
    fields.update(changes)
    return RouteSpec(**fields)


def payload(kind: str, event: dict[str, Any], **changes: Any) -> Any:
    return json.loads(build_route(spec(kind, **changes)).request(event).body)


# --- registry and validation ------------------------------------------------------------------


def test_every_kind_is_registered_under_its_name() -> None:
    assert set(ROUTE_KINDS) == {"alertmanager", "slack", "pagerduty", "webhook"}
    assert all(cls.kind == kind for kind, cls in ROUTE_KINDS.items())


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(kind="email"), r"^kind: unknown route kind 'email' \(known: alertmanager, slack, pagerduty, webhook\)"),
        (dict(url="127.0.0.1:9000"), r"^url: expected an absolute http:// or https:// URL"),
        (dict(url="ftp://127.0.0.1/"), r"^url: expected an absolute"),
        (dict(params={}), r"^secret: required"),
        (dict(params={"secret": ""}), r"^secret: must be a non-empty string"),
        (dict(params={"secret": "x", "secert": "y"}), r"^secert: unknown parameter \(known: secret\)"),
        (dict(timeout_s=0), r"^timeout_s: must be > 0"),
        (dict(retries=-1), r"^retries: must be >= 0"),
        (dict(match={"severity": []}), r"^match.severity: expected a non-empty string or a non-empty list"),
        (dict(match={"host": 3}), r"^match.host: expected"),
    ],
)
def test_bad_specs_are_refused_naming_the_key(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_route(spec(**{"kind": "webhook", **changes}))


def test_pagerduty_needs_a_routing_key_and_defaults_to_the_public_endpoint() -> None:
    with pytest.raises(ValueError, match="^routing_key: required"):
        build_route(spec("pagerduty", params={}))
    assert build_route(spec("pagerduty", url="")).request(alert()).url == EVENTS_URL  # built, never sent


# --- alertmanager -------------------------------------------------------------------------------


def test_alertmanager_firing_payload() -> None:
    route = build_route(spec("alertmanager", url="http://127.0.0.1:9094/"))
    request = route.request(alert())
    assert request.url == "http://127.0.0.1:9094/api/v2/alerts"
    assert request.headers == {"Content-Type": "application/json"}
    (entry,) = json.loads(request.body)
    assert entry == {
        "labels": {
            "alertname": "nan_loss",
            "severity": "critical",
            "project": "p",
            "run": "r1",
            "rank": "0",
            "host": "node-1",
            "metric": "train/loss",
        },
        "annotations": {
            "summary": "train/loss is NaN in run r1",
            "description": "rank 0 logged NaN at step 1200",
            "dashboard_url": DASHBOARD,
        },
        "startsAt": "2025-11-27T08:00:00.000Z",
        "endsAt": entry["endsAt"],  # checked below: sending time + the 2 h firing TTL
        "generatorURL": DASHBOARD,
    }
    assert abs(parse_rfc3339(entry["endsAt"]) - (time.time() + 7200)) < 60


def test_alertmanager_firing_ttl_is_configurable_and_checked() -> None:
    route = build_route(spec("alertmanager", url="http://127.0.0.1:9094/", params={"firing_ttl_s": 600}))
    ends = parse_rfc3339(json.loads(route.request(alert()).body)[0]["endsAt"])
    assert abs(ends - (time.time() + 600)) < 60
    with pytest.raises(ValueError, match="^firing_ttl_s: expected a positive number"):
        build_route(spec("alertmanager", url="http://127.0.0.1:9094/", params={"firing_ttl_s": "soon"}))


def test_alertmanager_resolved_payload_ends_at_the_resolve_time() -> None:
    (entry,) = payload("alertmanager", alert("resolved"))
    assert entry["startsAt"] == "2025-11-27T08:00:00.000Z"
    assert entry["endsAt"] == "2025-11-27T08:03:12.500Z"
    (without_end,) = payload("alertmanager", alert("resolved", ends_at=None))
    assert without_end["endsAt"] == "2025-11-27T08:03:12.500Z"  # the time the resolve was decided


def test_alertmanager_label_names_are_made_valid_and_the_link_is_optional() -> None:
    event = alert(labels={"gpu.index": "3", "0th": "x", "empty": ""}, annotations={"summary": "hot"}, run=None)
    (entry,) = payload("alertmanager", event)
    assert entry["labels"] == {"gpu_index": "3", "_0th": "x", "project": "p", "alertname": "nan_loss",
                               "severity": "critical"}
    assert "generatorURL" not in entry
    with pytest.raises(ValueError, match="^foo: unknown parameter"):
        AlertmanagerRoute(spec("alertmanager", params={"foo": "bar"}))


# --- slack -----------------------------------------------------------------------------------------


def test_slack_firing_message() -> None:
    message = payload("slack", alert(), url="http://127.0.0.1:9/hooks/T/B/X", params={"channel": "#oncall"})
    assert message["text"] == "[FIRING] nan_loss: train/loss is NaN in run r1"
    assert message["channel"] == "#oncall"
    (attachment,) = message["attachments"]
    assert attachment["color"] == COLORS["critical"] == "#e01e5a"
    main, fields, context = attachment["blocks"]
    assert main == {"type": "section", "text": {"type": "mrkdwn", "text": (
        "*FIRING (critical): nan_loss*\ntrain/loss is NaN in run r1\nrank 0 logged NaN at step 1200\n"
        f"<{DASHBOARD}|Open the run in the dashboard>"
    )}}
    assert fields == {"type": "section", "fields": [
        {"type": "mrkdwn", "text": f"*{k}*\n{v}"}
        for k, v in [("host", "node-1"), ("metric", "train/loss"), ("project", "p"), ("rank", "0"), ("run", "r1")]
    ]}
    assert context["type"] == "context"
    assert context["elements"][0]["text"].startswith(f"<!date^{int(T0)}^Since ")
    assert "|Since 2025-11-27T08:00:00.000Z>" in context["elements"][0]["text"]


def test_slack_resolved_message_is_green_and_says_how_long() -> None:
    message = payload("slack", alert("resolved"))
    assert message["text"] == "[RESOLVED] nan_loss: train/loss is NaN in run r1"
    assert "channel" not in message
    (attachment,) = message["attachments"]
    assert attachment["color"] == COLORS["resolved"]
    text = attachment["blocks"][0]["text"]["text"]
    assert text.startswith("*RESOLVED: nan_loss*\n")
    assert "Resolved after 3m 12s." in text


@pytest.mark.parametrize("severity", ["critical", "warning", "info"])
def test_slack_colour_follows_severity(severity: str) -> None:
    assert payload("slack", alert(severity=severity))["attachments"][0]["color"] == COLORS[severity]


def test_slack_escapes_its_control_characters() -> None:
    message = payload("slack", alert(annotations={"summary": "loss <0 & rising > 1"}))
    assert message["text"] == "[FIRING] nan_loss: loss &lt;0 &amp; rising &gt; 1"
    assert "loss &lt;0 &amp; rising &gt; 1" in message["attachments"][0]["blocks"][0]["text"]["text"]


# --- pagerduty -----------------------------------------------------------------------------------


def test_pagerduty_trigger_event() -> None:
    event = payload("pagerduty", alert(), url="http://127.0.0.1:9/v2/enqueue")
    assert event == {
        "routing_key": "R0UT1NG",
        "event_action": "trigger",
        "dedup_key": "fp-1",
        "payload": {
            "summary": "train/loss is NaN in run r1",
            "source": "node-1",
            "severity": "critical",
            "timestamp": "2025-11-27T08:00:00.000Z",
            "class": "nan_loss",
            "group": "p",
            "custom_details": {
                "labels": {"project": "p", "run": "r1", "rank": "0", "host": "node-1", "metric": "train/loss"},
                "annotations": {"summary": "train/loss is NaN in run r1",
                                "description": "rank 0 logged NaN at step 1200", "dashboard_url": DASHBOARD},
                "values": {"step": 1200},
            },
        },
        "client": "trainmon",
        "client_url": DASHBOARD,
        "links": [{"href": DASHBOARD, "text": "Run in the trainmon dashboard"}],
    }


def test_pagerduty_resolve_event_is_the_documented_minimum() -> None:
    assert payload("pagerduty", alert("resolved")) == {
        "routing_key": "R0UT1NG", "dedup_key": "fp-1", "event_action": "resolve"
    }


@pytest.mark.parametrize("severity, expected", [("critical", "critical"), ("warning", "warning"), ("info", "info")])
def test_pagerduty_severity_mapping(severity: str, expected: str) -> None:
    assert payload("pagerduty", alert(severity=severity))["payload"]["severity"] == expected


def test_pagerduty_source_falls_back_to_the_run_and_summary_is_cut() -> None:
    event = payload("pagerduty", alert(labels={"metric": "loss"}, annotations={"summary": "x" * 2000}))
    assert event["payload"]["source"] == "r1"
    assert len(event["payload"]["summary"]) == 1024
    assert "links" not in event and "client_url" not in event


# --- webhook -------------------------------------------------------------------------------------


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: float = 300) -> bool:
    """The receiver's side, exactly as docs/routes.md tells users to write it."""
    timestamp = headers["X-Trainmon-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(timestamp)) <= tolerance_s
    return fresh and hmac.compare_digest(expected, headers["X-Trainmon-Signature"])


def test_webhook_sends_the_alert_event_signed() -> None:
    event = alert()
    request = build_route(spec("webhook", url="http://127.0.0.1:9/hook")).request(event)
    assert request.url == "http://127.0.0.1:9/hook"
    assert request.body == contract.encode(event)
    assert contract.decode(request.body) == event
    headers = dict(request.headers)
    assert headers["Content-Type"] == "application/json"
    assert abs(int(headers["X-Trainmon-Timestamp"]) - time.time()) < 5
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", headers["X-Trainmon-Signature"])
    assert verify("s3cret", headers, request.body)


def test_webhook_signature_fails_for_another_secret_body_timestamp_or_an_old_request() -> None:
    request = build_route(spec("webhook")).request(alert())
    headers = dict(request.headers)
    assert not verify("other", headers, request.body)
    assert not verify("s3cret", headers, request.body.replace(b"nan_loss", b"nan_lost"))
    replayed = {**headers, "X-Trainmon-Timestamp": str(int(headers["X-Trainmon-Timestamp"]) + 1)}
    assert not verify("s3cret", replayed, request.body)  # the timestamp is signed too
    old = dict(headers)
    assert not verify("s3cret", old, request.body, tolerance_s=-1)  # stale: refused even if the MAC is right


# --- matching, backoff -----------------------------------------------------------------------------


def test_match_on_severity_rule_and_labels() -> None:
    event = alert()
    assert matches({}, event)
    assert matches({"severity": ["critical", "warning"], "rule": "nan_loss", "host": "node-1"}, event)
    assert not matches({"severity": ["warning"]}, event)
    assert not matches({"rule": ["plateau"]}, event)
    assert not matches({"host": "node-2"}, event)
    assert not matches({"gpu": "0"}, event)  # a label the alert lacks never matches


def test_backoff_doubles_caps_and_honours_retry_after() -> None:
    assert [backoff_s(0.5, n, None) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_s(0.5, 10, None) == 30.0
    assert backoff_s(0.5, 1, 7.0) == 7.0
    assert backoff_s(0.5, 1, 10_000.0) == 300.0
    assert retry_after_s("12") == 12.0
    soon = datetime.fromtimestamp(time.time() + 60, tz=timezone.utc)
    assert 55 < retry_after_s(format_datetime(soon, usegmt=True)) <= 60  # type: ignore[operator]
    assert retry_after_s("soon") is None and retry_after_s(None) is None


# --- the dispatcher ----------------------------------------------------------------------------------


def table_columns(table: str) -> list[str]:
    sql = (ROOT / "deploy/clickhouse/migrations/0001_schema_v1.sql").read_text()
    body = re.search(rf"CREATE TABLE IF NOT EXISTS {table}\s*\((.*?)\n\)", sql, re.S)
    assert body, table
    lines = [line.strip() for line in body.group(1).splitlines()]
    return [line.split()[0] for line in lines if line and not line.startswith("--")]


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def dispatcher(*specs: RouteSpec, max_queue: int = 10_000) -> tuple[Dispatcher, Recorder]:
    recorder = Recorder()
    return Dispatcher([build_route(s) for s in specs], recorder, max_queue=max_queue), recorder


def test_delivered_record_has_exactly_the_alert_deliveries_columns() -> None:
    with Receiver([200]) as receiver:
        d, rec = dispatcher(spec("webhook", url=receiver.url + "/hook"))
        d.submit(alert())
        (got,) = receiver.wait_for(1)
        assert d.close(5) == 0
    assert got.method == "POST" and got.path == "/hook"
    assert got.json() == alert()
    (row,) = rec.rows
    assert list(row) == table_columns("alert_deliveries")
    assert row["fingerprint"] == "fp-1" and row["rule"] == "nan_loss" and row["state"] == "firing"
    assert (row["route"], row["kind"], row["attempt"], row["outcome"]) == ("webhook-1", "webhook", 1, "delivered")
    assert row["http_status"] == 200 and row["error"] == "" and 0 < row["latency_ms"] < 2000
    assert row["notified_at"] == datetime.fromtimestamp(T0 + 0.25, tz=timezone.utc)
    assert row["time"].tzinfo is timezone.utc and abs(row["time"].timestamp() - time.time()) < 5
    assert d.stats.delivered == 1 and d.stats.pending == 0


def test_5xx_is_retried_then_delivered() -> None:
    with Receiver([503, 503, 200]) as receiver:
        d, rec = dispatcher(spec("slack", url=receiver.url))
        d.submit(alert())
        receiver.wait_for(3)
        d.close(5)
    assert rec.of("slack-1") == [(1, "retrying", 503), (2, "retrying", 503), (3, "delivered", 200)]
    assert rec.rows[0]["error"] == "HTTP 503"
    assert len({r["notified_at"] for r in rec.rows}) == 1  # one notification, three attempts
    stats = d.stats
    assert (stats.accepted, stats.delivered, stats.retried, stats.failed) == (1, 1, 2, 0)


def test_429_waits_as_long_as_retry_after_says() -> None:
    with Receiver([Reply(429, headers={"Retry-After": "1"}), 200]) as receiver:
        d, rec = dispatcher(spec("pagerduty", url=receiver.url, backoff_s=0.01))
        d.submit(alert())
        first, second = receiver.wait_for(2)
        d.close(5)
    assert second.at - first.at >= 0.95
    assert rec.of("pagerduty-1") == [(1, "retrying", 429), (2, "delivered", 200)]


def test_other_4xx_is_not_retried() -> None:
    with Receiver([Reply(400, body=b"invalid routing key")]) as receiver:
        d, rec = dispatcher(spec("pagerduty", url=receiver.url))
        d.submit(alert())
        wait_until(lambda: rec.rows)
        d.close(5)
        assert len(receiver.requests) == 1
    assert rec.of("pagerduty-1") == [(1, "failed", 400)]
    assert rec.rows[0]["error"] == "HTTP 400: invalid routing key"


def test_redirects_are_not_followed() -> None:
    with Receiver([Reply(302, headers={"Location": "http://192.0.2.1/elsewhere"})]) as receiver:
        d, rec = dispatcher(spec("webhook", url=receiver.url))
        d.submit(alert())
        wait_until(lambda: rec.rows)
        d.close(5)
    assert rec.of("webhook-1") == [(1, "failed", 302)]


def test_timeout_is_retried_then_fails() -> None:
    with Receiver([Reply(200, delay_s=1.0)]) as receiver:
        d, rec = dispatcher(spec("webhook", url=receiver.url, timeout_s=0.2, retries=2))
        d.submit(alert())
        wait_until(lambda: len(rec.rows) == 3)
        d.close(5)
    assert rec.of("webhook-1") == [(1, "retrying", 0), (2, "retrying", 0), (3, "failed", 0)]
    assert {r["error"] for r in rec.rows} == {"timeout after 0.2s"}
    assert all(150 < r["latency_ms"] < 2000 for r in rec.rows)
    assert d.stats.failed == 1


def test_connection_refused_is_retried_then_fails() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # bound, never listening: connections are refused
        d, rec = dispatcher(spec("alertmanager", url=f"http://127.0.0.1:{closed_port}", retries=1))
        d.submit(alert())
        wait_until(lambda: len(rec.rows) == 2)
        d.close(5)
    assert rec.of("alertmanager-1") == [(1, "retrying", 0), (2, "failed", 0)]
    assert "ClientConnectorError" in rec.rows[0]["error"]


def test_a_hanging_route_does_not_delay_another() -> None:
    with Receiver([Reply(200, delay_s=3.0)]) as slow, Receiver([200]) as fast:
        d, rec = dispatcher(spec("webhook", name="slow", url=slow.url, timeout_s=5),
                            spec("slack", name="fast", url=fast.url))
        started = time.monotonic()
        for n in range(20):  # more than the slow route's in-flight limit
            d.submit(alert(fingerprint=f"fp-{n}"))
        wait_until(lambda: len(rec.of("fast")) == 20, timeout=2.0)
        assert time.monotonic() - started < 1.0
        assert len(fast.requests) == 20 and {o for _, o, _ in rec.of("fast")} == {"delivered"}
        assert rec.of("slow") == []
        d.close(0.1)
    assert {o for _, o, _ in rec.of("slow")} == {"failed"}  # abandoned at close, and recorded


def test_submit_never_blocks_and_counts_what_a_full_queue_drops(caplog: pytest.LogCaptureFixture) -> None:
    with Receiver([Reply(200, delay_s=5.0)]) as hanging:
        d, rec = dispatcher(spec("webhook", url=hanging.url, timeout_s=10), max_queue=5)
        started = time.monotonic()
        for n in range(5000):
            d.submit(alert(fingerprint=f"fp-{n}"))
        elapsed = time.monotonic() - started
        assert elapsed < 1.0, elapsed
        stats = d.stats
        assert (stats.accepted, stats.dropped, stats.pending) == (5, 4995, 5)
        assert "alert delivery dropped for route webhook-1: 5 deliveries queued (max 5)" in caplog.text
        assert d.close(0.2) == 5
    assert [(r["outcome"], r["error"]) for r in rec.rows] == [("failed", "dispatcher closed before delivery")] * 5
    d.submit(alert())  # after close: dropped, not an error
    assert d.stats.dropped == 4996


def test_resolve_never_overtakes_its_firing() -> None:
    with Receiver([503, 200]) as receiver:  # the firing needs a retry; the resolve is submitted meanwhile
        d, rec = dispatcher(spec("alertmanager", url=receiver.url, backoff_s=0.3))
        d.submit(alert("firing"))
        d.submit(alert("resolved"))
        got = receiver.wait_for(3)
        d.close(5)
    ends = [r.json()[0]["endsAt"] for r in got]
    assert all(parse_rfc3339(e) > time.time() + 3600 for e in ends[:2]) and ends[2] == "2025-11-27T08:03:12.500Z"
    assert [(r["state"], r["attempt"], r["outcome"]) for r in rec.rows] == [
        ("firing", 1, "retrying"), ("firing", 2, "delivered"), ("resolved", 1, "delivered")
    ]


def test_only_matching_routes_receive_and_close_drains() -> None:
    with Receiver() as critical, Receiver() as node2:
        d, rec = dispatcher(spec("slack", name="critical", url=critical.url, match={"severity": ["critical"]}),
                            spec("webhook", name="node2", url=node2.url, match={"host": "node-2"}))
        d.submit(alert())
        d.submit(alert(fingerprint="fp-2", severity="warning", labels={"host": "node-2"}))
        assert d.close(5) == 0  # both delivered before close returns
        assert [r.json()["text"] for r in critical.requests] == ["[FIRING] nan_loss: train/loss is NaN in run r1"]
        assert [r.json()["fingerprint"] for r in node2.requests] == ["fp-2"]
    assert d.stats.accepted == 2 and d.stats.delivered == 2


def test_close_while_others_submit_loses_nothing_unaccounted() -> None:
    errors: list[Exception] = []
    with Receiver() as receiver:
        d, rec = dispatcher(spec("webhook", url=receiver.url), max_queue=200)
        stop = threading.Event()

        def submitter(worker: int) -> None:
            n = 0
            try:
                while not stop.is_set():
                    d.submit(alert(fingerprint=f"fp-{worker}-{n}"))
                    n += 1
            except Exception as exc:  # any escape from submit() is the failure
                errors.append(exc)

        threads = [threading.Thread(target=submitter, args=(w,)) for w in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        d.close(5)
        stop.set()
        for thread in threads:
            thread.join()
    stats = d.stats
    assert errors == []
    assert stats.dropped > 0 and stats.pending == 0
    assert stats.accepted == stats.delivered + stats.failed == len({r["fingerprint"] for r in rec.rows})


def parse_rfc3339(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
