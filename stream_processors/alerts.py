"""The alert lifecycle, the same for every rule kind: pending → firing → resolved, de-duplicated.

Rules only say whether a condition holds for a subject; this book turns that into contract `alert`
events. A condition that becomes active is pending until it has held for the rule's `for` (measured
in event time: a later verdict must confirm it, so one sample followed by silence never fires), then
fires once; while it stays active the same alert (same fingerprint and
`starts_at`) is sent again every `repeat_interval_s`, so a lost notification is not lost for good;
when the condition clears it is resolved once. A pending condition that clears sends nothing. The
fingerprint is a stable hash of the rule name, the subject and the rule's labels, so receivers
(Alertmanager, PagerDuty's dedup key) can match a resolve to its firing, across worker restarts.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass, replace
from typing import Any, Mapping
from urllib.parse import urlencode

from trainmon.stream_processors.rules.base import Condition, RuleSpec
from trainmon.contract import envelope

Key = tuple[str, tuple[tuple[str, str], ...]]

# The processors' own alert when a run stops without run_end; one per run, never repeated.
RUN_LOST = RuleSpec(name="run_lost", kind="run_lost", severity="warning",
                    annotations={"summary": "run {run} of {project} stopped without run_end: no event for {silent_s:.0f} s"})


def fingerprint(rule: str, subject: Mapping[str, str], labels: Mapping[str, str]) -> str:
    """Stable across processes and restarts (unlike hash()): sha256 of name, subject and labels."""
    text = json.dumps([rule, sorted(subject.items()), sorted(labels.items())], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Missing:
    def __init__(self, key: str) -> None:
        self.key = key


class _SafeFormatter(string.Formatter):
    """str.format that leaves unknown placeholders as written, so a typo shows instead of failing."""

    def get_value(self, key: int | str, args: Any, kwargs: Mapping[str, Any]) -> Any:
        return kwargs.get(str(key), _Missing(str(key)))

    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, _Missing):
            return "{" + value.key + (":" + format_spec if format_spec else "") + "}"
        try:
            return super().format_field(value, format_spec)
        except (ValueError, TypeError):  # e.g. {value:.1f} on a label: show it unformatted
            return str(value)


_formatter = _SafeFormatter()


def render(template: str, context: Mapping[str, Any]) -> str:
    """A template with {placeholders} from context; a malformed template comes back unchanged."""
    try:
        return _formatter.vformat(template, (), context)
    except (ValueError, IndexError, AttributeError, KeyError):
        return template


def _finite(values: Mapping[str, Any]) -> dict[str, float | int]:
    """Only finite numbers travel in an alert's values (the contract's figures); drop the rest."""
    return {k: v for k, v in values.items() if type(v) in (int, float) and v - v == 0}


@dataclass
class _Alert:
    spec: RuleSpec
    subject: Mapping[str, str]
    starts_at: float  # event time the condition began
    values: Mapping[str, Any]
    firing: bool = False
    sent_at: float = 0.0  # when the last firing notification went out
    fingerprint: str = ""
    confirmed_at: float = 0.0  # event time of the latest verdict that it still holds


class AlertBook:
    """Every pending and firing alert of one engine, keyed by rule name and subject."""

    def __init__(self, repeat_interval_s: float = 3600.0, dashboard_url: str = "http://127.0.0.1:8501") -> None:
        self.repeat_interval_s = repeat_interval_s
        self.dashboard_url = dashboard_url.rstrip("/")
        self._alerts: dict[Key, _Alert] = {}

    def update(self, spec: RuleSpec, condition: Condition, now: float) -> list[dict[str, Any]]:
        """The alert events one rule verdict causes (usually none)."""
        key: Key = (spec.name, tuple(sorted(condition.subject.items())))
        alert = self._alerts.get(key)
        if not condition.active:
            if alert is None:
                return []
            del self._alerts[key]
            if not alert.firing:
                return []
            return [self._event(alert, "resolved", now, ends_at=max(condition.at, alert.starts_at))]
        if alert is None:
            alert = self._alerts[key] = _Alert(spec, condition.subject, condition.at, condition.values)
        elif condition.values:
            alert.values = condition.values
        alert.confirmed_at = max(alert.confirmed_at, condition.at)
        if not alert.firing:
            return self._fire(alert, now) if alert.confirmed_at - alert.starts_at >= spec.for_s else []
        if now - alert.sent_at >= self.repeat_interval_s:
            return self._fire(alert, now)
        return []

    def tick(self, now: float) -> list[dict[str, Any]]:
        """Repeats of firing alerts that are due (pending ones fire only on a confirming verdict)."""
        out: list[dict[str, Any]] = []
        for alert in self._alerts.values():
            if alert.firing and now >= alert.sent_at + self.repeat_interval_s:
                out.extend(self._fire(alert, now))
        return out

    def state(self) -> dict[Key, _Alert]:
        """Every pending and firing alert, without its rule spec (restored from the running config)."""
        return {key: replace(alert, spec=None) for key, alert in self._alerts.items()}  # type: ignore[arg-type]

    def restore(self, state: Mapping[Key, _Alert], specs: Mapping[str, RuleSpec]) -> None:
        """Alerts of a snapshot; those of rules no longer configured are dropped."""
        self._alerts = {key: replace(alert, spec=specs[key[0]]) for key, alert in state.items() if key[0] in specs}

    def __len__(self) -> int:
        return len(self._alerts)

    def resolve_run(self, run: str, now: float) -> list[dict[str, Any]]:
        """The run ended: resolve its firing alerts, drop its pending ones."""
        ended = [key for key, alert in self._alerts.items() if alert.subject.get("run") == run]
        out = []
        for key in ended:
            alert = self._alerts.pop(key)
            if alert.firing:
                out.append(self._event(alert, "resolved", now, ends_at=max(now, alert.starts_at)))
        return out

    def once(self, spec: RuleSpec, condition: Condition, now: float) -> dict[str, Any]:
        """A firing alert that is not kept (a final verdict, such as a run given up as lost). Its
        `ends_at` is set: no resolve will follow, so an incident it joins need not wait for one."""
        return self._event(_Alert(spec, condition.subject, condition.at, condition.values), "firing", now,
                           ends_at=now)

    def firing(self) -> list[dict[str, Any]]:
        """The firing alerts as of their last notification (for inspection and tests)."""
        return [self._event(alert, "firing", alert.sent_at) for alert in self._alerts.values() if alert.firing]

    def _fire(self, alert: _Alert, now: float) -> list[dict[str, Any]]:
        alert.firing, alert.sent_at = True, now
        return [self._event(alert, "firing", now)]

    def _event(self, alert: _Alert, state: str, now: float, ends_at: float | None = None) -> dict[str, Any]:
        spec, subject = alert.spec, alert.subject
        if not alert.fingerprint:
            alert.fingerprint = fingerprint(spec.name, subject, spec.labels)
        labels = {**spec.labels, **subject, "alertname": spec.name, "severity": spec.severity}
        values = _finite(alert.values)
        context = {**labels, **values}
        annotations = {name: render(template, context) for name, template in spec.annotations.items()}
        annotations["dashboard_url"] = self._link(subject)
        return envelope(
            "alert", rule=spec.name, fingerprint=alert.fingerprint, state=state, severity=spec.severity,
            labels=labels, annotations=annotations, values=values, starts_at=alert.starts_at, ends_at=ends_at,
            time=now, project=subject.get("project"), run=subject.get("run"),
        )

    def _link(self, subject: Mapping[str, str]) -> str:
        """The dashboard page of the alert's run, else of its host."""
        if "run" in subject:
            query = {"project": subject["project"], "run": subject["run"]} if "project" in subject else {
                "run": subject["run"]}
            return f"{self.dashboard_url}/run?{urlencode(query)}"
        if "host" in subject:
            return f"{self.dashboard_url}/host?{urlencode({'host': subject['host']})}"
        return self.dashboard_url
