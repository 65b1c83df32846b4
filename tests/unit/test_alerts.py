"""The alert lifecycle (pending -> firing -> resolved, repeats, de-dup, run end) and the engine's routing."""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar, Iterable, Mapping

from trainmon.stream_processors.alerts import AlertBook, fingerprint, render
from trainmon.stream_processors.engine import Engine
from trainmon.stream_processors.rules.base import Condition, Rule
from tests.unit.alert_streams import T0, metrics, run_end, spec, system
from trainmon.contract import validate

HOT = spec("threshold", "gpu_hot", for_s=60, labels={"team": "infra"},
           selector={"figure": "temperature_c"}, params={"value": 85},
           annotations={"summary": "GPU {gpu} on {host} at {value:.0f} C", "runbook": "see {wiki}"})
GPU = {"host": "node-1", "gpu": "3"}
RUN = {"project": "vision", "run": "r 7", "rank": "0", "metric": "loss"}


def hot(at: float, active: bool = True, subject: Mapping[str, str] = GPU) -> Condition:
    return Condition(subject, active, at, {"value": 91.0} if active else {})


def valid(alerts: list[dict]) -> list[dict]:
    for alert in alerts:
        validate(copy.deepcopy(alert))
    return alerts


def test_pending_until_for_then_firing_once() -> None:
    book = AlertBook()
    assert book.update(HOT, hot(T0), T0) == []
    assert book.update(HOT, hot(T0 + 59), T0 + 59) == []
    assert book.firing() == []
    [alert] = valid(book.update(HOT, hot(T0 + 60), T0 + 60.5))
    assert alert["kind"] == "alert" and alert["state"] == "firing" and alert["rule"] == "gpu_hot"
    assert alert["starts_at"] == T0 and alert["time"] == T0 + 60.5 and "ends_at" not in alert
    assert alert["labels"] == {"team": "infra", "host": "node-1", "gpu": "3", "alertname": "gpu_hot",
                               "severity": "warning"}
    assert alert["annotations"] == {"summary": "GPU 3 on node-1 at 91 C", "runbook": "see {wiki}",
                                    "dashboard_url": "http://127.0.0.1:8501/host?host=node-1"}
    assert alert["values"] == {"value": 91.0}
    assert "project" not in alert and "run" not in alert
    for i in range(100):  # de-duplicated
        assert book.update(HOT, hot(T0 + 61 + i), T0 + 61 + i) == []
    assert [a["fingerprint"] for a in book.firing()] == [alert["fingerprint"]]


def test_pending_that_clears_sends_nothing() -> None:
    book = AlertBook()
    book.update(HOT, hot(T0), T0)
    assert book.update(HOT, hot(T0 + 30, active=False), T0 + 30) == []
    assert book.tick(T0 + 1000) == []


def test_one_sample_then_silence_never_fires() -> None:
    """`for: 1m` needs a verdict a minute later that the condition still holds; the clock alone
    (a sample read late, or followed by silence) must not promote it."""
    book = AlertBook()
    book.update(HOT, hot(T0), T0)
    assert book.tick(T0 + 60) == [] and book.tick(T0 + 3600) == []


def test_for_fires_on_the_confirming_verdict() -> None:
    book = AlertBook()
    book.update(HOT, hot(T0), T0)
    assert book.update(HOT, hot(T0 + 59.9), T0 + 59.9) == []
    assert [a["state"] for a in valid(book.update(HOT, hot(T0 + 60), T0 + 60))] == ["firing"]
    assert book.update(HOT, hot(T0 + 61), T0 + 61) == [] and book.tick(T0 + 62) == []


def test_repeat_interval_resends_with_same_fingerprint_and_start() -> None:
    book = AlertBook(repeat_interval_s=600)
    book.update(HOT, hot(T0), T0)
    [first] = book.update(HOT, hot(T0 + 60), T0 + 60)
    assert book.tick(T0 + 659) == []
    [repeat] = valid(book.tick(T0 + 660))
    assert (repeat["state"], repeat["fingerprint"], repeat["starts_at"], repeat["time"]) == (
        "firing", first["fingerprint"], T0, T0 + 660)
    assert book.update(HOT, hot(T0 + 1000), T0 + 1259) == []
    [again] = book.update(HOT, hot(T0 + 1260), T0 + 1260)  # a report due for a repeat sends it too
    assert again["time"] == T0 + 1260


def test_resolve_once_with_ends_at() -> None:
    book = AlertBook()
    book.update(HOT, hot(T0), T0)
    [fired] = book.update(HOT, hot(T0 + 60), T0 + 60)
    [resolved] = valid(book.update(HOT, hot(T0 + 90, active=False), T0 + 90.2))
    assert (resolved["state"], resolved["fingerprint"], resolved["starts_at"], resolved["ends_at"],
            resolved["time"]) == ("resolved", fired["fingerprint"], T0, T0 + 90, T0 + 90.2)
    assert book.update(HOT, hot(T0 + 91, active=False), T0 + 91) == []
    assert book.firing() == [] and book.tick(T0 + 10_000) == []


def test_resolve_run_resolves_firing_and_drops_pending() -> None:
    nan = spec("non_finite", "nan", severity="critical")
    book = AlertBook()
    other = {**RUN, "run": "r8"}
    book.update(nan, Condition(RUN, True, T0, {"step": 3}), T0)  # fires (for 0)
    book.update(HOT, Condition({**GPU, "run": "r 7"}, True, T0), T0)  # pending
    book.update(nan, Condition(other, True, T0), T0)
    [resolved] = valid(book.resolve_run("r 7", T0 + 5))
    assert (resolved["rule"], resolved["state"], resolved["run"], resolved["project"], resolved["ends_at"]) == (
        "nan", "resolved", "r 7", "vision", T0 + 5)
    assert resolved["annotations"]["dashboard_url"] == "http://127.0.0.1:8501/run?project=vision&run=r+7"
    assert book.tick(T0 + 100) == []  # the pending one is gone
    assert [a["run"] for a in book.firing()] == ["r8"]


def test_fingerprint_is_stable_and_identifies_rule_subject_and_labels() -> None:
    assert fingerprint("gpu_hot", {"host": "a", "gpu": "1"}, {}) == fingerprint("gpu_hot", {"gpu": "1", "host": "a"}, {})
    assert len(fingerprint("gpu_hot", GPU, {})) == 16
    distinct = {fingerprint("gpu_hot", GPU, {}), fingerprint("gpu_cold", GPU, {}),
                fingerprint("gpu_hot", {**GPU, "gpu": "4"}, {}), fingerprint("gpu_hot", GPU, {"team": "x"})}
    assert len(distinct) == 4
    # Pinned: receivers de-duplicate on it (PagerDuty's dedup_key), across restarts and upgrades.
    assert fingerprint("gpu_hot", GPU, {"team": "infra"}) == "a31dcf6c7a3f54ac"
    first = AlertBook().update(spec("non_finite", "nan"), Condition(RUN, True, T0), T0)
    second = AlertBook().update(spec("non_finite", "nan"), Condition(dict(reversed(RUN.items())), True, T0), T0)
    assert first[0]["fingerprint"] == second[0]["fingerprint"]


def test_non_finite_values_are_left_out() -> None:
    [alert] = valid(AlertBook().update(spec("non_finite", "nan"), Condition(RUN, True, T0, {
        "value": math.nan, "step": 7, "big": math.inf}), T0))
    assert alert["values"] == {"step": 7}


def test_render_is_safe() -> None:
    context = {"host": "n1", "value": 0.5}
    assert render("{host} {value:.0%} {missing} {missing:.2f} {host:.1f}", context) == "n1 50% {missing} {missing:.2f} n1"
    assert render("unbalanced {host", context) == "unbalanced {host"
    assert render("{0} {value.real}", context) == "{0} 0.5"


class _Seen(Rule):
    kind: ClassVar[str] = "seen"
    consumes: ClassVar[frozenset[str]] = frozenset({"system"})

    def __init__(self) -> None:
        super().__init__(spec("threshold", "seen"))
        self.events: list[str] = []
        self.forgotten: list[str] = []

    def on_event(self, event: Mapping[str, Any], now: float) -> Iterable[Condition]:
        self.events.append(event["kind"])
        return ()

    def forget(self, run: str) -> None:
        self.forgotten.append(run)


def test_engine_routes_by_kind_and_ends_runs() -> None:
    seen = _Seen()
    book = AlertBook()
    engine = Engine([seen], book)
    book.update(spec("non_finite", "nan"), Condition(RUN, True, T0), T0)
    engine.on_event(metrics(1, T0, loss=1.0), T0)
    engine.on_event(system(T0), T0)
    assert seen.events == ["system"]
    [resolved] = engine.on_event(run_end(T0 + 1, run="r 7"), T0 + 1)
    assert resolved["state"] == "resolved" and seen.forgotten == ["r 7"]
    assert engine.on_tick(T0 + 2) == []
