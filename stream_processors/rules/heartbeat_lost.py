"""heartbeat_lost: nothing heard from a rank (or a node) for `missed` beats of its own cadence.

Scope `rank`: any run event of a rank (run_start, run_meta, heartbeat, metrics) counts as a sign of
life; subject project, run, rank, host. A run's ranks are forgotten when it ends. Scope `node`: a
system sample counts; only nodes whose latest sample listed active runs are watched (a node shut
down after its job is not lost); subject host. Checked on each tick, against the partition's clock
(stream_processors/clock.py: event time while catching up, when these verdicts are held, the wall
clock once live), so keep the nodes' clocks synchronised. A lost subject is reported on every tick
while it stays silent (so a `for` can be confirmed); a sign of life clears it at once.

Silence is the partition's time since a sign of life was read (the engine's `now`), not since the
time the event carries: a node whose clock runs minutes behind is not silent. Each subject's cadence
is learned, on its own clock: the median of its last 8 gaps between heartbeats (rank scope:
the SDK's heartbeat events, which keep coming through evaluation and data-loader pauses, unlike
metrics) or between system samples (node scope). Its timeout is `missed` times that, at least
`min_timeout_s` and at most `timeout_s`; until 3 gaps are known it is `timeout_s`. So a rank beating
every second is lost after 5 s, a node sampled every 10 s after 50 s, and a producer that sends no
heartbeats keeps the fixed `timeout_s`. Why a median: one late beat (a GC pause, a slow flush) does
not stretch it, and a missed beat does not either. While a rank's latest heartbeat declares a phase
(the SDK's `run.pause("checkpoint")`: a checkpoint write may hold the GIL and starve the heartbeat
thread for seconds), its timeout is at least `paused_timeout_s`: a rank that dies in an evaluation is
found in 20 s, not in its usual 5, and not in the minute of `timeout_s` either.

Unless its process is known to be gone (rank scope): a `run_start` that names the rank's `pid` (the
SDK's) lets the node's samples vouch for it. The processors derive `run_hardware` summaries from each
system sample, keyed by run (stalled.py), with the `pids` of the run's processes the node daemon
lists. Once the rank's pid has been listed by its node, and then two samples in a row from that node,
each taken after the rank's newest event (on the node's own clock, so neither skew nor a late sample
can make a live process look gone), list the run but not the pid, the process is gone: the rank's
timeout becomes `gone_missed` beats of its cadence (`min_timeout_s` until it is known), whatever phase
it declared. So a rank beating every second that dies inside an evaluation is found about 2 s after
its death (two 1 s samples without it, two missed beats), not after 20 s. A pid never listed says
nothing (the SDK sends run_start before it registers, and may fail to register). A sign of life newer than those samples, or a
sample listing the pid again, withdraws the verdict; a new `run_start` (a restart) brings its new pid.
Without a pid (an older SDK) or without the node daemon's process list nothing changes. A node whose
run's last process died no longer lists the run, so it sends no summary for it: such a rank keeps the
timeouts above.

| selector | default | meaning |
|---|---|---|
| `scope` | `rank` | `rank` or `node` |

| param | default | meaning |
|---|---|---|
| `missed` | `5` | beats of the subject's cadence that may be missed before it is lost |
| `min_timeout_s` | `5` | the shortest timeout a fast cadence gives |
| `timeout_s` | `60` | the timeout until the cadence is known, and the longest a slow one gives |
| `paused_timeout_s` | `20` | the shortest timeout while the rank's latest heartbeat declares a phase |
| `gone_missed` | `2` | beats of its cadence a rank may miss once its node no longer lists its process |

Values: `silent_s` (seconds since the last event), `timeout_s` (the subject's timeout then); rank scope
also `process_gone` (1: its node no longer lists its process, else 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median
from typing import Any, ClassVar, Iterable, Mapping

from trainmon.stream_processors.rules.base import Condition, Rule, RuleSpec
from trainmon.stream_processors.rules.params import Params

_RANK_EVENTS = frozenset({"run_start", "run_meta", "heartbeat", "metrics"})


_GAPS = 8  # beats whose gaps give a subject's cadence
_KNOWN = 3  # gaps needed before the cadence counts
_GONE_SAMPLES = 2  # fresh samples in a row without its pid that make a rank's process gone


@dataclass
class _Seen:
    last: float  # partition time the latest sign of life was read
    subject: dict[str, str]
    beat: float = 0.0  # its own event time of the latest beat (heartbeat or system sample)
    gaps: tuple[float, ...] = ()  # the latest gaps between beats, oldest first
    paused: bool = False  # its latest heartbeat declared a phase (a checkpoint, an evaluation)
    # Rank scope: its process, as its run_start named it and its node's samples list it.
    pid: int | None = None
    pid_host: str = ""  # the node whose samples vouch for that pid
    listed: bool = False  # that node listed the pid since the run_start
    missing: int = 0  # samples in a row from that node, newer than `said`, without the pid
    said: float = 0.0  # its own time of its newest event
    sampled: float = 0.0  # sample time of the latest one that listed or missed the pid


class HeartbeatLost(Rule):
    kind: ClassVar[str] = "heartbeat_lost"
    consumes: ClassVar[frozenset[str]] = _RANK_EVENTS | {"system", "run_hardware"}

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        selector = Params(spec.selector, "selector.")
        self.node = selector.choice("scope", "rank", ("rank", "node")) == "node"
        selector.done()
        params = Params(spec.params)
        self.timeout_s = params.duration("timeout_s", 60.0)
        self.missed = params.number("missed", 5.0, minimum=1.0)
        self.min_timeout_s = params.duration("min_timeout_s", 5.0)
        self.paused_timeout_s = params.duration("paused_timeout_s", 20.0)
        self.gone_missed = params.number("gone_missed", 2.0, minimum=1.0)
        params.done()
        if self.min_timeout_s > self.timeout_s:
            raise ValueError(f"min_timeout_s: {self.min_timeout_s:g} s is above timeout_s ({self.timeout_s:g} s)")
        # Narrowed per instance so the engine routes only this scope's events here.
        self.consumes = frozenset({"system"}) if self.node else _RANK_EVENTS | {"run_hardware"}  # type: ignore[misc]
        self._seen: dict[tuple[Any, ...], _Seen] = {}  # (run, rank) or (host,)
        self._pids_on: dict[tuple[str, str], set[int]] = {}  # rank scope: (run, host) -> ranks with a pid there
        self._runs_of: dict[str, tuple[str, ...]] = {}  # node scope: host -> runs of its latest sample
        self._lost: set[tuple[Any, ...]] = set()

    def on_event(self, event: Mapping[str, Any], now: float) -> Iterable[Condition]:
        at = now  # when it was read, in the partition's time: a host's skewed clock does not count
        if self.node:
            host = event["host"]
            key: tuple[Any, ...] = (host,)
            runs = event.get("runs")
            if not runs:  # no job on the node: not watched
                self._runs_of.pop(host, None)
                return self._back(key, self._seen.pop(key, None), at)
            self._runs_of[host] = tuple(runs)
        elif event["kind"] == "run_hardware":  # the node's word on the run's processes, no sign of life
            self._sampled(event)
            return ()
        else:
            key = (event["run"], event["rank"])
        seen = self._seen.get(key)
        new = seen is None
        if seen is None:
            seen = self._seen[key] = _Seen(at, self._subject(event))
        elif at > seen.last:
            seen.last = at
        self._beat(seen, event, event["time"])
        if not self.node:
            self._said(key, seen, event)
        return () if new else self._back(key, seen, at)

    def _beat(self, seen: _Seen, event: Mapping[str, Any], at: float) -> None:
        """at: the event's own time: gaps on the subject's own clock, whatever its offset."""
        if event["kind"] not in ("heartbeat", "system"):
            return
        if event["kind"] == "heartbeat" and at >= seen.beat:  # the newest: a late one says nothing of now
            seen.paused = event.get("phase") not in (None, "train")
        if seen.beat and at > seen.beat:
            seen.gaps = (seen.gaps + (at - seen.beat,))[-_GAPS:]
        seen.beat = max(seen.beat, at)

    def _said(self, key: tuple[Any, ...], seen: _Seen, event: Mapping[str, Any]) -> None:
        """A rank event: its newest time (samples older than it say nothing of now), and from a
        run_start the pid its node's samples will list (none: watched as before)."""
        at = event["time"]
        seen.said = max(seen.said, at)
        if at > seen.sampled:  # alive after the samples that missed its pid
            seen.missing = 0
        if event["kind"] != "run_start":
            return
        self._pids_on.get((key[0], seen.pid_host), set()).discard(key[1])
        seen.pid, seen.pid_host, seen.listed, seen.missing = event.get("pid"), event["host"], False, 0
        if seen.pid is not None:
            self._pids_on.setdefault((key[0], seen.pid_host), set()).add(key[1])

    def _sampled(self, event: Mapping[str, Any]) -> None:
        """A run_hardware summary with the run's pids on a node: counts, for each rank whose pid that
        node listed before, the fresh samples in a row that no longer list it."""
        pids, run = event.get("pids"), event["run"]
        ranks = self._pids_on.get((run, event["host"])) if pids is not None else None
        if not ranks:
            return
        at, listed = event["time"], set(pids)
        for rank in ranks:
            seen = self._seen[(run, rank)]
            if seen.pid in listed:
                seen.listed, seen.missing, seen.sampled = True, 0, max(seen.sampled, at)
            elif seen.listed and at > seen.said and at > seen.sampled:
                seen.missing, seen.sampled = seen.missing + 1, at

    def timeout(self, seen: _Seen) -> float:
        """This subject's: `missed` beats of its cadence, within the bounds (module doc); a rank whose
        process is gone gets `gone_missed` beats, whatever phase it declared."""
        if len(seen.gaps) < _KNOWN:
            limit, gone = self.timeout_s, self.min_timeout_s
        else:
            cadence = median(seen.gaps)
            limit = min(self.timeout_s, max(self.min_timeout_s, self.missed * cadence))
            if seen.paused:
                limit = max(limit, min(self.paused_timeout_s, self.timeout_s))
            gone = self.gone_missed * cadence
        return min(limit, gone) if seen.missing >= _GONE_SAMPLES else limit

    def _subject(self, event: Mapping[str, Any]) -> dict[str, str]:
        if self.node:
            return {"host": event["host"]}
        return {"project": event["project"], "run": event["run"], "rank": str(event["rank"]), "host": event["host"]}

    def _back(self, key: tuple[Any, ...], seen: _Seen | None, at: float) -> Iterable[Condition]:
        """A sign of life from a lost rank or node clears its alert."""
        if seen is None or not self._lost or key not in self._lost:
            return ()
        self._lost.discard(key)
        return (Condition(seen.subject, False, at),)

    def on_live(self, since: float) -> None:
        for seen in self._seen.values():
            seen.last = max(seen.last, since)

    def on_tick(self, now: float) -> Iterable[Condition]:
        out: list[Condition] = []
        for key, seen in self._seen.items():
            timeout = self.timeout(seen)
            if now - seen.last > timeout:
                self._lost.add(key)
                values = {"silent_s": now - seen.last, "timeout_s": timeout}
                if not self.node:
                    values["process_gone"] = float(seen.missing >= _GONE_SAMPLES)
                out.append(Condition(seen.subject, True, now, values))
        return out

    def forget(self, run: str) -> None:
        if self.node:  # a node that only ran this run: its next sample would list none
            ended = [(host,) for host, runs in self._runs_of.items() if runs == (run,)]
            for (host,) in ended:
                del self._runs_of[host]
        else:
            ended = [key for key in self._seen if key[0] == run]
            for on in [on for on in self._pids_on if on[0] == run]:
                del self._pids_on[on]
        for key in ended:
            self._seen.pop(key, None)
            self._lost.discard(key)
