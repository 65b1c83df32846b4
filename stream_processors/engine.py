"""Rules plus their alert book: events and clock ticks in, contract alert events out.

The processors keep one Engine per Kafka partition. It sees every decoded event of that partition,
so the per-event path is a dict lookup by kind and a call into only the rules that consume it.
A `run_end` ends the run everywhere: each rule forgets it and its alerts are resolved. Events of
that run from before its end that arrive afterwards (metrics and lifecycle travel on different
topics, so a run's last metrics may be read after its `run_end`) are dropped here, once for every
rule: otherwise a finished run would be watched again and reported silent. A later event (a resumed
run) is watched as new.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from trainmon.stream_processors.alerts import AlertBook
from trainmon.stream_processors.rules.base import Rule
from trainmon.stream_processors.snapshots import retired_in

log = logging.getLogger("trainmon.processors")

ENDED_MEMORY_S = 3600.0  # how long an ended run's end time is kept to drop its stragglers


class Engine:
    def __init__(self, rules: Sequence[Rule], book: AlertBook) -> None:
        self.rules = list(rules)
        self.book = book
        routes: dict[str, list[Rule]] = {}
        for rule in self.rules:
            for kind in rule.consumes:
                routes.setdefault(kind, []).append(rule)
        self._by_kind = {kind: tuple(rules_) for kind, rules_ in routes.items()}
        self._ended: dict[str, float] = {}  # run -> event time of its latest run_end
        self._live_since = 0.0  # the latest Rule.on_live given

    def on_event(self, event: Mapping[str, Any], now: float) -> list[dict[str, Any]]:
        """Alert events caused by one decoded event (usually none)."""
        kind = event["kind"]
        out: list[dict[str, Any]] = []
        run = event.get("run")
        if kind == "run_end":
            return self.end_run(run, event["time"], now)
        if run is not None and run in self._ended:
            if event["time"] <= self._ended[run]:
                return out  # sent before the run ended, read after: nothing to watch
            del self._ended[run]  # resumed
        rules = self._by_kind.get(kind)
        if rules is None:
            return out
        update = self.book.update
        for rule in rules:
            for condition in rule.on_event(event, now):
                out.extend(update(rule.spec, condition, now))
        return out

    def end_run(self, run: str, at: float, now: float) -> list[dict[str, Any]]:
        """The run ended (or was given up as lost): every rule forgets it, its alerts are resolved."""
        self._ended[run] = max(at, self._ended.get(run, 0.0))
        for rule in self.rules:
            rule.forget(run)
        return self.book.resolve_run(run, now)

    def on_tick(self, now: float, live: bool = True, live_since: float = 0.0) -> list[dict[str, Any]]:
        """Alert events of time-based rules and repeats; call about once a second. While the partition
        is not live (catching up on a backlog) time-based verdicts are held: silence is not judged on
        data that has not been read yet. live_since: when it last became live (Rule.on_live)."""
        out: list[dict[str, Any]] = []
        update = self.book.update
        if live and live_since > self._live_since:
            self._live_since = live_since
            for rule in self.rules:
                rule.on_live(live_since)
        for rule in self.rules if live else ():
            for condition in rule.on_tick(now):
                out.extend(update(rule.spec, condition, now))
        out.extend(self.book.tick(now))
        if self._ended:
            for run in [r for r, ended in self._ended.items() if now - ended > ENDED_MEMORY_S]:
                del self._ended[run]
        return out

    # --- durable state -------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What this engine remembers, as plain data: each rule's own `_`-named fields, keyed by rule
        name and kind, the alert book and the ended runs. The rules' parameters come from the config."""
        rules = {rule.spec.name: (rule.kind, {k: v for k, v in vars(rule).items() if k.startswith("_")})
                 for rule in self.rules}
        return {"rules": rules, "alerts": self.book.state(), "ended": dict(self._ended)}

    def restore(self, state: Mapping[str, Any]) -> None:
        for rule in self.rules:
            kind, fields = state["rules"].get(rule.spec.name, (None, None))
            if kind != rule.kind:  # a rule whose kind changed starts afresh
                continue
            if retired_in(fields):
                log.warning("rule %s: its state in the snapshot is of another version; it starts afresh",
                            rule.spec.name)  # an upgrade reshaped it: the other rules keep theirs
                continue
            vars(rule).update(fields)
        self.book.restore(state["alerts"], {rule.spec.name: rule.spec for rule in self.rules})
        self._ended = dict(state["ended"])

    def size(self) -> int:
        """Remembered alerts and ended runs (for the bounded-memory checks)."""
        return len(self.book) + len(self._ended)
