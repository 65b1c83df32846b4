"""Alerts back into training, without Kafka: the follower's thread is fed by a fake source in place of
the alerts topic, and the run has a fake publisher. Callbacks run at the next `log`, in the thread
that logs; filters, repeats and stale resolves; `log` stays as fast with a busy follower attached;
the ready-made actions."""

from __future__ import annotations

import queue
import statistics
import threading
import time
import warnings
from typing import Any, Iterator

import pytest

import trainmon
from trainmon import TrainmonWarning
from trainmon.agent import alert_follower, sdk
from trainmon.agent.alert_actions import save_and_stop, scale_lr
from tests.unit.test_sdk import FakePublisher, isolated, publisher  # noqa: F401 (fixtures)
from trainmon.contract import encode, envelope

HOST = "node-a"


class Feed:
    """Stands in for `kafka_alerts`: yields what the test sends, until the follower is stopped."""

    def __init__(self) -> None:
        self.queue: queue.Queue[list[bytes]] = queue.Queue()
        self.calls: list[tuple[Any, float, threading.Event]] = []

    def source(self, settings: Any, since: float, stop: threading.Event) -> Iterator[list[bytes]]:
        self.calls.append((settings, since, stop))
        while not stop.is_set():
            try:
                yield self.queue.get(timeout=0.01)
            except queue.Empty:
                pass

    def send(self, *alerts: dict[str, Any]) -> None:
        self.queue.put([encode(a) for a in alerts])


@pytest.fixture
def feed(monkeypatch: pytest.MonkeyPatch) -> Feed:
    feed = Feed()
    monkeypatch.setattr(alert_follower, "kafka_alerts", feed.source)
    return feed


@pytest.fixture
def run(publisher: FakePublisher, monkeypatch: pytest.MonkeyPatch) -> sdk.Run:
    monkeypatch.setenv("TRAINMON_HOST", HOST)
    return trainmon.init("p", run_id="r1", publisher=publisher, heartbeat_s=60.0)


def alert(rule: str = "loss_non_finite", state: str = "firing", *, run: str | None = "r1", project: str = "p",
          host: str | None = None, severity: str = "critical", starts_at: float = 1000.0) -> dict[str, Any]:
    subject = {"project": project, "run": run} if run else {}
    subject.update({"host": host} if host else {})
    return envelope("alert", rule=rule, fingerprint=f"{rule}/{project}/{run}/{host}", state=state, severity=severity,
                    labels={**subject, "alertname": rule, "severity": severity}, starts_at=starts_at,
                    ends_at=starts_at + 5 if state == "resolved" else None, time=starts_at + 1,
                    project=subject.get("project"), run=run)


MARK = alert("mark", severity="info", starts_at=1.0)  # sent last: once it is read, everything before it is


def read(run: sdk.Run, feed: Feed, *alerts: dict[str, Any]) -> None:
    """Hand alerts to the follower and wait until its thread has taken them all (not delivered them)."""
    mark = dict(MARK, starts_at=MARK["starts_at"] + len(feed.calls) + time.monotonic())  # a new transition each time
    feed.send(*alerts, mark)
    deadline = time.monotonic() + 5
    while not any(a["rule"] == "mark" and a["starts_at"] == mark["starts_at"] for a in run._inbox):
        assert time.monotonic() < deadline, "the follower did not read the alerts"
        time.sleep(0.002)


def delivered(run: sdk.Run, **on_alert: Any) -> list[dict[str, Any]]:
    """A callback's list of the alerts it is given (the mark left out)."""
    got: list[dict[str, Any]] = []
    run.on_alert(lambda a: got.append(a) if a["rule"] != "mark" else None, **on_alert)
    return got


def test_no_follower_and_no_consumer_until_on_alert(run: sdk.Run, feed: Feed) -> None:
    for step in range(10):
        run.log({"loss": 1.0}, step=step)
    assert run._follower is None and not feed.calls
    assert not [t for t in threading.enumerate() if t.name.startswith("trainmon-alerts")]
    started = time.time()
    run.on_alert(run.request_stop)
    deadline = time.monotonic() + 5
    while not feed.calls:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    assert started - 2 <= feed.calls[0][1] <= started, "follows from the registration on, not from the start"


def test_the_callback_runs_at_the_next_log_in_the_logging_thread(run: sdk.Run, feed: Feed) -> None:
    threads: list[str] = []
    run.on_alert(lambda a: threads.append(threading.current_thread().name), rules="loss_non_finite")
    read(run, feed, alert())
    time.sleep(0.05)
    assert threads == [], "the follower's thread never calls user code"
    run.log({"loss": float("nan")})
    assert threads == [threading.current_thread().name]
    run.log({"loss": 1.0})
    assert len(threads) == 1, "each transition once"


def test_filters_pick_rules_least_severity_and_this_runs_or_hosts_alerts(run: sdk.Run, feed: Feed) -> None:
    every = delivered(run)
    nan = delivered(run, rules=["loss_non_finite"])
    warning_up = delivered(run, severity="warning")
    with_resolves = delivered(run, rules="loss_non_finite", resolved=True)
    read(run, feed,
         alert(),  # this run's
         alert("loss_plateau", severity="info"),
         alert("gpu_hardware_error", run=None, host=HOST),  # this rank's host, no run: a hardware fault here
         alert("gpu_hardware_error", run=None, host="node-b"),  # another node's
         alert(run="r2"), alert(project="other"),  # other runs
         alert("straggler", run="r2", host=HOST, severity="warning"),  # another run on this host
         alert(state="resolved"))
    run.log({"loss": 1.0})
    assert [a["rule"] for a in every] == ["loss_non_finite", "loss_plateau", "gpu_hardware_error"]
    assert [a["rule"] for a in nan] == ["loss_non_finite"]
    assert [a["rule"] for a in warning_up] == ["loss_non_finite", "gpu_hardware_error"]
    assert [a["state"] for a in with_resolves] == ["firing", "resolved"]


def test_repeats_and_resolves_of_unseen_firings_are_not_transitions(run: sdk.Run, feed: Feed) -> None:
    got = delivered(run, resolved=True)
    read(run, feed, alert("overfitting", "resolved", starts_at=500.0))  # fired before we followed
    read(run, feed, alert(), alert())  # a repeat notification (same starts_at)
    run.log({"loss": 1.0})
    assert [(a["state"], a["starts_at"]) for a in got] == [("firing", 1000.0)]
    assert [a["rule"] for a in run.alerts() if a["rule"] != "mark"] == ["loss_non_finite"]
    read(run, feed, alert(state="resolved"), alert(starts_at=2000.0))  # resolved, then fires again
    run.log({"loss": 1.0})
    assert [(a["state"], a["starts_at"]) for a in got] == [("firing", 1000.0), ("resolved", 1000.0), ("firing", 2000.0)]
    assert [a["starts_at"] for a in run.alerts() if a["rule"] != "mark"] == [2000.0]


def test_request_stop_as_a_callback_stops_on_a_firing_only(run: sdk.Run, feed: Feed) -> None:
    run.on_alert(run.request_stop, rules="loss_non_finite", resolved=True)
    read(run, feed, alert(state="resolved", starts_at=3000.0))
    run.log({"loss": 1.0})
    assert not run.stop_requested and run.stop_reason is None
    read(run, feed, alert())
    assert not run.stop_requested, "not before the safe point"
    run.log({"loss": float("nan")})
    assert run.stop_requested and run.stop_reason["rule"] == "loss_non_finite"


def test_a_failing_callback_is_warned_once_and_the_others_still_run(run: sdk.Run, feed: Feed) -> None:
    def broken(alert: dict[str, Any]) -> None:
        raise RuntimeError("bug in the user's callback")

    run.on_alert(broken)
    got = delivered(run)
    read(run, feed, alert(), alert("loss_plateau"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.log({"loss": 1.0})
    assert [a["rule"] for a in got] == ["loss_non_finite", "loss_plateau"]
    assert len([w for w in caught if issubclass(w.category, TrainmonWarning)]) == 1
    assert "bug in the user's callback" in str(caught[0].message) and caught[0].filename == __file__


def test_a_callback_that_logs_does_not_recurse(run: sdk.Run, feed: Feed) -> None:
    seen: list[str] = []

    def logs(alert: dict[str, Any]) -> None:
        seen.append(alert["rule"])
        run.log({"alerted": 1.0})  # a safe point inside a delivery: the outer one goes on

    run.on_alert(logs)
    read(run, feed, alert(), alert("loss_plateau"))
    run.log({"loss": 1.0})
    assert seen == ["loss_non_finite", "loss_plateau", "mark"]


@pytest.mark.parametrize("args, reason", [
    ((42,), "needs a callable"), ((print, 7), "rules must be"), ((print, None, "fatal"), "severity must be")])
def test_bad_arguments_are_warned_and_start_nothing(run: sdk.Run, feed: Feed, args: tuple, reason: str) -> None:
    with pytest.warns(TrainmonWarning, match=reason):
        run.on_alert(*args)
    assert run._follower is None and not run._subscriptions


def test_finish_stops_the_follower(run: sdk.Run, feed: Feed) -> None:
    run.on_alert(print)
    read(run, feed)
    thread = run._follower._thread
    run.finish()
    assert feed.calls[0][2].is_set() and not thread.is_alive()
    with pytest.warns(TrainmonWarning, match="after finish"):
        run.on_alert(print)
    assert run.alerts() == []


def log_round_ms(target: sdk.Run, calls: int) -> float:
    """How long `calls` logs of 10 scalars take in all, in ms: waits for the GIL count, not only the
    typical call."""
    values = {f"m{i}": float(i) for i in range(10)}
    start = time.perf_counter()
    for _ in range(calls):
        target.log(values)
    return (time.perf_counter() - start) * 1000


def test_log_stays_as_fast_with_a_busy_follower_attached(publisher: FakePublisher, feed: Feed,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Rounds of logs by a plain run while the follower idles, and by the followed run while its
    follower reads a flood of other runs' alerts (thousands of times any real rate), interleaved so
    the shared machine's noise hits both alike. A follower that decodes every alert of the flood
    (instead of skipping other runs' on their bytes) makes the followed rounds twice as slow; it is
    also caught without a clock: not one alert of the flood may be decoded."""
    monkeypatch.setenv("TRAINMON_HOST", HOST)
    taken, decoded = [0], [0]
    take, decode = alert_follower.AlertFollower.take, alert_follower.decode

    def counted_take(self: alert_follower.AlertFollower, raw: bytes) -> None:
        taken[0] += 1
        take(self, raw)

    def counted_decode(raw: bytes) -> dict[str, Any]:
        decoded[0] += 1
        return decode(raw)

    monkeypatch.setattr(alert_follower.AlertFollower, "take", counted_take)
    monkeypatch.setattr(alert_follower, "decode", counted_decode)
    plain = trainmon.init("p", run_id="plain", publisher=FakePublisher(), heartbeat_s=60.0)
    followed = trainmon.init("p", run_id="r1", publisher=publisher, heartbeat_s=60.0)
    followed.on_alert(print)
    flooding, stop = threading.Event(), threading.Event()
    others = [encode(alert(run=f"other-{i}")) for i in range(1000)]

    def flood() -> None:  # 500,000 alerts a second while flooding
        while not stop.is_set():
            if flooding.wait(0.01):
                feed.queue.put(others)
                time.sleep(0.002)

    def ratio() -> tuple[float, list[float], list[float]]:
        plain_ms, followed_ms = [], []
        for _ in range(15):
            plain_ms.append(log_round_ms(plain, 5000))
            flooding.set()
            followed_ms.append(log_round_ms(followed, 5000))
            flooding.clear()
            time.sleep(0.005)
        return statistics.median(followed_ms) / statistics.median(plain_ms), plain_ms, followed_ms

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    tries = []
    try:
        # Measured on 2 shared cores: 1.0-1.3x as it is; 2.0-2.4x when the follower decodes every alert.
        # Another test suite's burst on the other core has pushed one try to 2.2x: up to three tries.
        while len(tries) < 3 and (not tries or tries[-1][0] > 1.6):
            tries.append(ratio())
    finally:
        stop.set()
        flooder.join()
    assert taken[0] >= 1000 and decoded[0] == 0, (taken, decoded)  # the flood arrived, and none was decoded
    assert min(t[0] for t in tries) <= 1.6, tries


# --- the ready-made actions -----------------------------------------------------------------------


def test_save_and_stop_saves_inside_a_checkpoint_pause_once_then_stops(run: sdk.Run) -> None:
    phases: list[str | None] = []
    callback = save_and_stop(run, lambda: phases.append(run.current_phase))
    callback(alert("gpu_hardware_error", "resolved"))
    assert phases == [] and not run.stop_requested
    callback(alert("gpu_hardware_error"))
    callback(alert("gpu_hardware_error", starts_at=2000.0))
    assert phases == ["checkpoint"] and run.current_phase is None
    assert run.stop_reason["rule"] == "gpu_hardware_error"


def test_save_and_stop_stops_even_when_the_save_fails(run: sdk.Run, feed: Feed) -> None:
    def save() -> None:
        raise OSError("disk full")

    run.on_alert(save_and_stop(run, save))
    read(run, feed, alert("gpu_hardware_error", run=None, host=HOST))
    with pytest.warns(TrainmonWarning, match="disk full"):
        run.log({"loss": 1.0})
    assert run.stop_requested and run.current_phase is None


class Optimizer:
    def __init__(self, *lrs: float) -> None:
        self.param_groups = [{"lr": lr, "params": []} for lr in lrs]


class Scheduler:
    def __init__(self, *base_lrs: float) -> None:
        self.base_lrs = list(base_lrs)


def test_scale_lr_scales_every_group_and_the_schedulers_base_not_below_the_floor() -> None:
    optimizer, scheduler = Optimizer(1e-3, 4e-4), Scheduler(1e-3, 4e-4)
    callback = scale_lr(optimizer, 0.5, min_lr=3e-4, schedulers=[scheduler])
    callback(alert("loss_spike", "resolved"))
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 4e-4]
    callback(alert("loss_spike"))
    assert [g["lr"] for g in optimizer.param_groups] == [5e-4, 3e-4] and scheduler.base_lrs == [5e-4, 3e-4]
    callback(alert("loss_spike", starts_at=2000.0))
    assert [g["lr"] for g in optimizer.param_groups] == [3e-4, 3e-4]


@pytest.mark.parametrize("args, kwargs", [((Optimizer(1.0), 0.0), {}), ((Optimizer(1.0),), {"min_lr": -1.0}),
                                          ((object(),), {}), ((Optimizer(1.0),), {"schedulers": [object()]})])
def test_scale_lr_refuses_a_wrong_setup_at_once(args: tuple, kwargs: dict) -> None:
    with pytest.raises(ValueError, match="scale_lr"):
        scale_lr(*args, **kwargs)


def test_check_alerts_is_a_safe_point_without_logging(run: sdk.Run, feed: Feed, publisher: FakePublisher) -> None:
    run.check_alerts()  # nothing followed yet: nothing to do
    run.on_alert(run.request_stop, rules="loss_non_finite")
    read(run, feed, alert())
    logged = len(publisher.kinds("metrics"))
    run.check_alerts()
    assert run.stop_requested and len(publisher.kinds("metrics")) == logged


def test_a_log_from_another_thread_is_no_safe_point(run: sdk.Run, feed: Feed) -> None:
    """A metrics reporter thread (torch.watch's, say) that logs must not run the training's callbacks."""
    threads: list[str] = []
    run.on_alert(lambda a: threads.append(threading.current_thread().name), rules="loss_non_finite")
    read(run, feed, alert())
    reporter = threading.Thread(target=lambda: run.log({"grad_norm": 1.0}), name="reporter")
    reporter.start()
    reporter.join()
    assert threads == []
    run.log({"loss": 1.0})
    assert threads == [threading.current_thread().name]
