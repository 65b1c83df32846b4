"""heartbeat_lost: nothing heard from a rank (or a node) for `timeout_s`.

Scope `rank`: any run event of a rank (run_start, run_meta, heartbeat, metrics) counts as a sign of
life; subject project, run, rank, host. A run's ranks are forgotten when it ends. Scope `node`: a
system sample counts; only nodes whose latest sample listed active runs are watched (a node shut
down after its job is not lost); subject host. Checked on each tick, against the partition's clock
(stream_processors/clock.py: event time while catching up, when these verdicts are held, the wall
clock once live), so keep the nodes' clocks synchronised. A lost subject is reported on every tick
while it stays silent (so a `for` can be confirmed); a sign of life clears it at once.

| selector | default | meaning |
|---|---|---|
| `scope` | `rank` | `rank` or `node` |

| param | default | meaning |
|---|---|---|
| `timeout_s` | `60` | silence that counts as lost |

Values: `silent_s` (seconds since the last event).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping

from stream_processors.rules.base import Condition, Rule, RuleSpec
from stream_processors.rules.params import Params

_RANK_EVENTS = frozenset({"run_start", "run_meta", "heartbeat", "metrics"})


@dataclass(slots=True)
class _Seen:
    last: float  # event time of the latest sign of life
    subject: dict[str, str]


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
        params.done()
        # Narrowed per instance so the engine routes only this scope's events here.
        self.consumes = frozenset({"system"}) if self.node else _RANK_EVENTS  # type: ignore[misc]
        self._seen: dict[tuple[Any, ...], _Seen] = {}  # (run, rank) or (host,)
        self._runs_of: dict[str, tuple[str, ...]] = {}  # node scope: host -> runs of its latest sample
        self._lost: set[tuple[Any, ...]] = set()

    def on_event(self, event: Mapping[str, Any]) -> Iterable[Condition]:
        at = event["time"]
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
            self._seen[key] = _Seen(at, self._subject(event))
            return ()
        if at > seen.last:
            seen.last = at
        return self._back(key, seen, at)

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

    def on_tick(self, now: float) -> Iterable[Condition]:
        out: list[Condition] = []
        for key, seen in self._seen.items():
            if now - seen.last > self.timeout_s:
                self._lost.add(key)
                out.append(Condition(seen.subject, True, now, {"silent_s": now - seen.last}))
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
