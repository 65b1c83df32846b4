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

| selector | default | meaning |
|---|---|---|
| `scope` | `rank` | `rank` or `node` |

| param | default | meaning |
|---|---|---|
| `missed` | `5` | beats of the subject's cadence that may be missed before it is lost |
| `min_timeout_s` | `5` | the shortest timeout a fast cadence gives |
| `timeout_s` | `60` | the timeout until the cadence is known, and the longest a slow one gives |
| `paused_timeout_s` | `20` | the shortest timeout while the rank's latest heartbeat declares a phase |

Values: `silent_s` (seconds since the last event), `timeout_s` (the subject's timeout then).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median
from typing import Any, ClassVar, Iterable, Mapping

from stream_processors.rules.base import Condition, Rule, RuleSpec
from stream_processors.rules.params import Params

_RANK_EVENTS = frozenset({"run_start", "run_meta", "heartbeat", "metrics"})


_GAPS = 8  # beats whose gaps give a subject's cadence
_KNOWN = 3  # gaps needed before the cadence counts


@dataclass
class _Seen:
    last: float  # partition time the latest sign of life was read
    subject: dict[str, str]
    beat: float = 0.0  # its own event time of the latest beat (heartbeat or system sample)
    gaps: tuple[float, ...] = ()  # the latest gaps between beats, oldest first
    paused: bool = False  # its latest heartbeat declared a phase (a checkpoint, an evaluation)


class HeartbeatLost(Rule):
    kind: ClassVar[str] = "heartbeat_lost"
    consumes: ClassVar[frozenset[str]] = _RANK_EVENTS | {"system"}

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
        params.done()
        if self.min_timeout_s > self.timeout_s:
            raise ValueError(f"min_timeout_s: {self.min_timeout_s:g} s is above timeout_s ({self.timeout_s:g} s)")
        # Narrowed per instance so the engine routes only this scope's events here.
        self.consumes = frozenset({"system"}) if self.node else _RANK_EVENTS  # type: ignore[misc]
        self._seen: dict[tuple[Any, ...], _Seen] = {}  # (run, rank) or (host,)
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
        else:
            key = (event["run"], event["rank"])
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = _Seen(at, self._subject(event))
            self._beat(seen, event, event["time"])
            return ()
        if at > seen.last:
            seen.last = at
        self._beat(seen, event, event["time"])
        return self._back(key, seen, at)

    def _beat(self, seen: _Seen, event: Mapping[str, Any], at: float) -> None:
        """at: the event's own time: gaps on the subject's own clock, whatever its offset."""
        if event["kind"] not in ("heartbeat", "system"):
            return
        if event["kind"] == "heartbeat" and at >= seen.beat:  # the newest: a late one says nothing of now
            seen.paused = event.get("phase") not in (None, "train")
        if seen.beat and at > seen.beat:
            seen.gaps = (seen.gaps + (at - seen.beat,))[-_GAPS:]
        seen.beat = max(seen.beat, at)

    def timeout(self, seen: _Seen) -> float:
        """This subject's: `missed` beats of its cadence, within the bounds (module doc)."""
        if len(seen.gaps) < _KNOWN:
            return self.timeout_s
        learned = min(self.timeout_s, max(self.min_timeout_s, self.missed * median(seen.gaps)))
        return max(learned, min(self.paused_timeout_s, self.timeout_s)) if seen.paused else learned

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
                out.append(Condition(seen.subject, True, now, {"silent_s": now - seen.last, "timeout_s": timeout}))
        return out

    def forget(self, run: str) -> None:
        if self.node:  # a node that only ran this run: its next sample would list none
            ended = [(host,) for host, runs in self._runs_of.items() if runs == (run,)]
            for (host,) in ended:
                del self._runs_of[host]
        else:
            ended = [key for key in self._seen if key[0] == run]
        for key in ended:
            self._seen.pop(key, None)
            self._lost.discard(key)
