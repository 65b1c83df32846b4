"""The current state of each run and rank, kept from lifecycle events and written as snapshots.

ClickHouse keeps the newest snapshot (ReplacingMergeTree on updated_at), so writing a run again is
harmless; writes are throttled per run so heartbeats from 512 ranks do not become 512 rows a second.
A run is written only when it changed: at the next flush for lifecycle changes (start, metadata, end,
lost), and once per `snapshot_every_s` (15 s) when only its progress moved (last step, last seen,
dropped events), which a running run's does all the time: each write is a part in two tables, and the
runs list does not need its step count fresher than that. Progress is written when the partition's
time passes a multiple of `snapshot_every_s`, not that long after each run's own first change: every
run of every partition then falls due at the same tick and shares one insert per table, where runs
started at different moments, the usual case on a shared cluster, made an insert each.
A multi-node run is one run: ranks add hosts, and the run's status is the worst final status of any
rank (failed > crashed > killed > finished), `finished` only once every rank reported it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from trainmon.stream_processors.sink import utc

STATUS_ORDER = ("finished", "killed", "crashed", "failed", "lost")  # worst last
RAW_KINDS = frozenset({"run_start", "run_meta", "run_end"})


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str) if value else ""


@dataclass
class RankState:
    host: str
    local_rank: int = -1
    started: float = 0.0
    last_seen: float = 0.0
    last_step: int = 0
    status: str = "running"
    # The SDK's heartbeats carry `dropped`, cumulative per producer (one process of the rank): the
    # current producer's count plus what earlier processes of this rank had dropped.
    producer: str = ""
    dropped_now: int = 0
    dropped_before: int = 0

    def heard_dropped(self, producer: str, dropped: int) -> None:
        if producer != self.producer:
            self.dropped_before += self.dropped_now
            self.producer, self.dropped_now = producer, 0
        self.dropped_now = max(self.dropped_now, dropped)

    @property
    def dropped(self) -> int:
        return self.dropped_before + self.dropped_now


@dataclass
class RunState:
    project: str
    run: str
    name: str = ""
    user: str = ""
    world_size: int = 0
    started: float = 0.0
    ended: float | None = None
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    datasets: list = field(default_factory=list)
    model: dict = field(default_factory=dict)
    code: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    ranks: dict[int, RankState] = field(default_factory=dict)
    lost: bool = False  # no event from any rank for the lost-after time, and no run_end

    @property
    def last_seen(self) -> float:
        return max(r.last_seen for r in self.ranks.values())

    @property
    def status(self) -> str:
        if self.lost:
            return "lost"
        finals = [r.status for r in self.ranks.values() if r.status != "running"]
        worst = max(finals, key=STATUS_ORDER.index, default="running")
        if worst == "finished" and len(finals) < max(self.world_size, len(self.ranks)):
            return "running"
        return worst


class RunBook:
    """The runs of one partition (part of the partition's state, see stream_processors/partition.py).
    A finished or lost run is kept for `keep_ended_s` of partition time after its last event (so its
    late stragglers are recognised), then evicted: memory stays flat however many runs have ended."""

    def __init__(self, snapshot_every_s: float = 15.0, keep_ended_s: float = 3600.0) -> None:
        self.runs: dict[tuple[str, str], RunState] = {}
        self.snapshot_every_s = snapshot_every_s
        self.keep_ended_s = keep_ended_s
        self._dirty: dict[tuple[str, str], float] = {}  # run -> when it first changed since its last write

    def observe(self, event: Mapping[str, Any]) -> None:
        key = (event["project"], event["run"])
        run = self.runs.get(key)
        if run is None:
            run = self.runs[key] = RunState(event["project"], event["run"], started=event["time"])
        when, kind = event["time"], event["kind"]
        rank = run.ranks.get(event["rank"])
        if rank is None:
            rank = run.ranks[event["rank"]] = RankState(event["host"], started=when)
        rank.last_seen = max(rank.last_seen, when)
        if event.get("step") is not None:
            rank.last_step = max(rank.last_step, event["step"])
        if run.lost:  # heard from again: not lost after all
            run.lost = False
        run.started = min(run.started, when)
        if kind == "run_start":
            run.name = event.get("name") or run.name
            run.user = event.get("user") or run.user
            run.world_size = max(run.world_size, event["world_size"])
            rank.local_rank = -1 if event.get("local_rank") is None else event["local_rank"]
            run.code = event.get("code") or run.code
            run.environment = event.get("environment") or run.environment
        if kind in ("run_start", "run_meta"):
            run.config.update(event.get("config") or {})
            run.tags.extend(t for t in event.get("tags") or () if t not in run.tags)
            run.datasets.extend(d for d in event.get("datasets") or () if d not in run.datasets)  # once per run
            run.model.update(event.get("model") or {})
        elif kind == "heartbeat":
            if event.get("world_size"):
                run.world_size = max(run.world_size, event["world_size"])
            if event.get("dropped") is not None:
                rank.heard_dropped(event.get("producer") or "", event["dropped"])
        elif kind == "run_end":
            rank.status = event["status"]
            run.ended = max(run.ended or 0.0, when)
        self._dirty.setdefault(key, when)
        if kind in RAW_KINDS:  # lifecycle changes are written at the next flush, not throttled
            self._dirty[key] = 0.0

    def lose(self, now: float, after_s: float) -> list[RunState]:
        """Runs still running with no event from any rank for `after_s`: marked lost (written at the
        next snapshot) and returned, once each."""
        lost = [run for run in self.runs.values()
                if not run.lost and run.status == "running" and now - run.last_seen >= after_s]
        for run in lost:
            run.lost = True
            self._dirty[(run.project, run.run)] = 0.0
        return lost

    def expired(self, now: float) -> list[tuple[str, str]]:
        """Finished or lost runs whose last snapshot is written and whose keep time has passed."""
        return [key for key, run in self.runs.items() if run.status != "running" and key not in self._dirty
                and now - run.last_seen >= self.keep_ended_s]

    def evict(self, run_id: str) -> None:
        for key in [k for k in self.runs if k[1] == run_id]:
            del self.runs[key]
            self._dirty.pop(key, None)

    def snapshots(self, now: float, force: bool = False) -> tuple[list[dict], list[dict]]:
        """(runs rows, run_ranks rows) for runs changed before the latest multiple of `snapshot_every_s`
        that `now` has passed (or all, forced)."""
        period = int(now // self.snapshot_every_s)
        due = [key for key, since in self._dirty.items() if force or period > since // self.snapshot_every_s]
        runs, ranks = [], []
        updated = utc(now)
        for key in due:
            del self._dirty[key]
            run = self.runs[key]
            status = run.status
            runs.append({
                "project": run.project, "run": run.run, "name": run.name, "user": run.user, "status": status,
                "tags": run.tags, "world_size": max(run.world_size, len(run.ranks)),
                "hosts": sorted({r.host for r in run.ranks.values()}), "started_at": utc(run.started),
                "ended_at": (utc(run.last_seen) if status == "lost" else
                             utc(run.ended) if run.ended and status != "running" else None),
                "last_seen": utc(run.last_seen),
                "last_step": max(r.last_step for r in run.ranks.values()),
                "events_dropped": sum(r.dropped for r in run.ranks.values()),
                "config": _json(run.config), "datasets": _json(run.datasets), "model": _json(run.model),
                "code": _json(run.code), "environment": _json(run.environment), "updated_at": updated,
            })
            ranks.extend({
                "project": run.project, "run": run.run, "rank": number, "local_rank": r.local_rank, "host": r.host,
                "status": r.status, "started_at": utc(r.started), "last_seen": utc(r.last_seen),
                "last_step": r.last_step, "events_dropped": r.dropped, "updated_at": updated,
            } for number, r in run.ranks.items())
        return runs, ranks


def raw_event_row(event: Mapping[str, Any]) -> dict[str, Any]:
    """A `run_events` row: the lifecycle event as sent, for reproducibility."""
    return {"project": event["project"], "run": event["run"], "rank": event["rank"], "host": event["host"],
            "kind": event["kind"], "time": utc(event["time"]), "payload": json.dumps(event, default=str)}
