"""Incidents: the alerts of one root cause become one page that names the likely cause.

Rules judge one subject each, so a dead node alone makes node_silent, a rank_heartbeat_lost for each
rank on it and a run_stalled for each run it carried. Every released alert of every partition comes
here in one ordered stream (the one-partition `incident-alerts` topic), and the book keeps the open
incidents (docs/alerting.md, "Incidents"):

- Edges of the pipeline's `incidents.causes` say which rules explain which. Two alerts are related
  when one's rule explains the other's and they share a subject, judged on the first of the edge's
  `by` keys both alerts have: `gpu` (host and GPU), `host`, `run` (the alert's run, or its `runs`
  label). An alert of the root's rule on the root's host (else run) is related too: eight hot GPUs
  of one node are one page.
- A firing alert joins the open incident it is related to; if it explains the incident's root (or a
  member that explains the root) it becomes the root. Otherwise it opens an incident of its own.
- An incident whose root may be a symptom (a rule some edge explains) waits `group_wait` for its
  cause before its first notification; any other is notified at once (a NaN pages in well under a
  second). A new root is notified at once (the same incident id: an update, not a new page); members
  joining or resolving at most every `group_interval`; the incident resolves when all members have.

Notifications are alert events, so routes need nothing new: fingerprint = incident id; rule, labels,
annotations and values of the root, plus label `incident`, annotation `cause`, the highest severity
of the members, and `members` (each member's rule, fingerprint, state, labels and summary). The book
is plain data in the state of the topic's one partition, snapshotted with it: a worker crash neither
loses nor repeats a page.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from trainmon.contract import SEVERITIES, envelope

KEYS = ("gpu", "host", "run")  # subject keys an edge can join on, most specific first
MAX_MEMBERS = 200  # per incident: beyond, alerts are counted, not kept (a flapping rule cannot grow it)
MAX_LISTED = 50  # members listed in a notification


@dataclass(frozen=True)
class Cause:
    """Rule `rule` explains the alerts of `explains` related to it on the first of `by` both have."""

    rule: str
    explains: frozenset[str]
    by: tuple[str, ...] = KEYS


@dataclass(frozen=True)
class IncidentSpec:
    causes: tuple[Cause, ...]
    group_wait_s: float = 2.0
    group_interval_s: float = 30.0
    repeat_interval_s: float = 3600.0


def _member_key(alert: Mapping[str, Any]) -> str:
    """One episode of one alert: a fingerprint fires again with a new starts_at."""
    return f"{alert['fingerprint']}@{alert['starts_at']:.3f}"


def _subject(alert: Mapping[str, Any], key: str) -> Any:
    """The alert's value for a join key, or None when it has none."""
    labels = alert["labels"]
    if key == "gpu":
        host, gpu = labels.get("host"), labels.get("gpu")
        return (host, gpu) if host and gpu else None
    if key == "host":
        return labels.get("host") or None
    runs = {alert.get("run") or "", *(labels.get("runs") or "").split(",")} - {""}
    return frozenset(runs) or None


def _shares(a: Mapping[str, Any], b: Mapping[str, Any], by: tuple[str, ...]) -> bool:
    """Judged on the first key both alerts have; runs share when they overlap."""
    for key in by:
        x, y = _subject(a, key), _subject(b, key)
        if x is not None and y is not None:
            return bool(x & y) if key == "run" else x == y
    return False


def _final(alert: Mapping[str, Any]) -> bool:
    """Resolved, or a firing that ends by itself (a run given up as lost: `ends_at` set)."""
    return alert["state"] == "resolved" or alert.get("ends_at") is not None


@dataclass
class _Incident:
    id: str
    root: str  # member key
    members: dict[str, dict[str, Any]]  # member key -> its latest alert event
    opened_at: float  # wall time
    notified_root: str = ""  # the root at the latest notification; "" before the first
    notified_at: float = 0.0
    changed: bool = False  # members joined or resolved since the latest notification
    overflow: int = 0  # alerts related to it but not kept (MAX_MEMBERS)


@dataclass
class IncidentBook:
    spec: IncidentSpec
    open: dict[str, _Incident] = field(default_factory=dict)  # id -> incident, in opening order
    index: dict[str, str] = field(default_factory=dict)  # member key -> incident id

    def __post_init__(self) -> None:
        self._edges: dict[tuple[str, str], tuple[str, ...]] = {}
        for cause in self.spec.causes:
            for rule in cause.explains:
                self._edges[(cause.rule, rule)] = cause.by
        self._symptoms = frozenset(rule for _, rule in self._edges)

    def state(self) -> dict[str, Any]:
        """Plain data for the partition's snapshot (the spec comes from the running config)."""
        return {"open": self.open, "index": self.index}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.open, self.index = dict(state["open"]), dict(state["index"])

    def __len__(self) -> int:
        return len(self.index)

    # --- relations -----------------------------------------------------------------------------------

    def explains(self, cause: Mapping[str, Any], symptom: Mapping[str, Any]) -> bool:
        by = self._edges.get((cause["rule"], symptom["rule"]))
        return by is not None and _shares(cause, symptom, by)

    def _joins(self, alert: Mapping[str, Any], incident: _Incident) -> bool:
        """Explained by a member, explains one, or the same rule as the root on its host (else run).
        Only the root's siblings: a straggler on GPU 2 does not join GPU 3's throttling through the
        straggler GPU 3 caused."""
        root = incident.members[incident.root]
        if alert["rule"] == root["rule"] and _shares(alert, root, ("host", "run")):
            return True
        return any(self.explains(m, alert) or self.explains(alert, m) for m in incident.members.values())

    def _above_root(self, alert: Mapping[str, Any], incident: _Incident) -> bool:
        root = incident.members[incident.root]
        return self.explains(alert, root) or any(
            self.explains(alert, m) and self.explains(m, root) for m in incident.members.values())

    # --- alerts in, notifications out ----------------------------------------------------------------

    def add(self, alert: dict[str, Any], wall: float) -> list[dict[str, Any]]:
        """The notifications one released alert causes (often none)."""
        key = _member_key(alert)
        found = self.index.get(key)
        if found is not None:
            return self._update(self.open[found], key, alert, wall)
        if alert["state"] == "resolved":
            return []  # its firing came before incidents were kept: nothing open to resolve
        for incident in self.open.values():
            if self._joins(alert, incident):
                return self._join(incident, key, alert, wall)
        incident = _Incident(_incident_id(key), key, {key: alert}, wall)
        self.open[incident.id] = incident
        self.index[key] = incident.id
        return self._due(incident, wall)

    def tick(self, wall: float) -> list[dict[str, Any]]:
        """First notifications whose group_wait is over, and updates whose group_interval is."""
        out: list[dict[str, Any]] = []
        for incident in list(self.open.values()):
            out.extend(self._due(incident, wall))
        return out

    def _join(self, incident: _Incident, key: str, alert: dict[str, Any], wall: float) -> list[dict[str, Any]]:
        if len(incident.members) >= MAX_MEMBERS:
            incident.overflow += 1
            return []
        above = self._above_root(alert, incident)
        incident.members[key] = alert
        self.index[key] = incident.id
        incident.changed = True
        if above:
            incident.root = key
        return self._due(incident, wall)

    def _update(self, incident: _Incident, key: str, alert: dict[str, Any], wall: float) -> list[dict[str, Any]]:
        previous = incident.members[key]
        incident.members[key] = alert
        if all(_final(m) for m in incident.members.values()):
            return self._close(incident, wall)
        if _final(alert) != _final(previous):
            incident.changed = True
        elif incident.notified_root and wall - incident.notified_at >= self.spec.repeat_interval_s:
            return [self._notify(incident, "firing", wall)]  # a member's repeat: the incident's
        return self._due(incident, wall)

    def _due(self, incident: _Incident, wall: float) -> list[dict[str, Any]]:
        if not incident.notified_root:
            root_rule = incident.members[incident.root]["rule"]
            if root_rule in self._symptoms and wall - incident.opened_at < self.spec.group_wait_s:
                return []
            return [self._notify(incident, "firing", wall)]
        if incident.root != incident.notified_root:
            return [self._notify(incident, "firing", wall)]
        if incident.changed and wall - incident.notified_at >= self.spec.group_interval_s:
            return [self._notify(incident, "firing", wall)]
        return []

    def _close(self, incident: _Incident, wall: float) -> list[dict[str, Any]]:
        del self.open[incident.id]
        for key in incident.members:
            self.index.pop(key, None)
        return [self._notify(incident, "resolved", wall)] if incident.notified_root else []

    def _notify(self, incident: _Incident, state: str, wall: float) -> dict[str, Any]:
        incident.notified_root, incident.notified_at, incident.changed = incident.root, wall, False
        root = incident.members[incident.root]
        members = sorted(incident.members.values(), key=lambda m: (m["starts_at"], m["fingerprint"]))
        severity = max((m["severity"] for m in members), key=SEVERITIES.index)
        summary = (root.get("annotations") or {}).get("summary") or root["rule"]
        others: dict[str, int] = {}
        for key, member in incident.members.items():
            if key != incident.root:
                others[member["rule"]] = others.get(member["rule"], 0) + 1
        also = ", ".join(f"{n} {rule}" for rule, n in sorted(others.items()))
        annotations = {**(root.get("annotations") or {}), "cause": f"{root['rule']}: {summary}",
                       "summary": summary + (f" (explains {also})" if also else "")}
        ends = [m.get("ends_at") or m["time"] for m in members]
        return envelope(
            "alert", rule=root["rule"], fingerprint=incident.id, state=state, severity=severity,
            labels={**root["labels"], "incident": incident.id, "severity": severity}, annotations=annotations,
            values=root.get("values") or {}, starts_at=members[0]["starts_at"],
            ends_at=max(ends) if state == "resolved" else None, time=wall,
            project=root.get("project"), run=root.get("run"), incident=incident.id,
            members=[_listed(m) for m in members[:MAX_LISTED]], members_total=len(members) + incident.overflow,
        )


def _listed(alert: Mapping[str, Any]) -> dict[str, Any]:
    return {"rule": alert["rule"], "fingerprint": alert["fingerprint"], "state": alert["state"],
            "severity": alert["severity"], "labels": alert["labels"], "starts_at": alert["starts_at"],
            "ends_at": alert.get("ends_at"), "summary": (alert.get("annotations") or {}).get("summary", "")}


def _incident_id(first_member: str) -> str:
    """Stable for a replay of the same alerts: a hash of the opening member's episode."""
    return "inc-" + hashlib.sha256(first_member.encode()).hexdigest()[:12]
