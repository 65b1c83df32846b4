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

from typing import Any, Mapping, Sequence

ENDED_MEMORY_S = 3600.0  # how long an ended run's end time is kept to drop its stragglers

from stream_processors.alerts import AlertBook
from stream_processors.rules.base import Rule


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

    def on_event(self, event: Mapping[str, Any], now: float) -> list[dict[str, Any]]:
        """Alert events caused by one decoded event (usually none)."""
        kind = event["kind"]
        out: list[dict[str, Any]] = []
        run = event.get("run")
        if kind == "run_end":
            self._ended[run] = max(event["time"], self._ended.get(run, 0.0))
            for rule in self.rules:
                rule.forget(run)
            out.extend(self.book.resolve_run(run, now))
            return out
        if run is not None and run in self._ended:
            if event["time"] <= self._ended[run]:
                return out  # sent before the run ended, read after: nothing to watch
            del self._ended[run]  # resumed
        rules = self._by_kind.get(kind)
        if rules is None:
            return out
        update = self.book.update
        for rule in rules:
            for condition in rule.on_event(event):
                out.extend(update(rule.spec, condition, now))
        return out

    def on_tick(self, now: float) -> list[dict[str, Any]]:
        """Alert events of time-based rules, `for` promotions and repeats; call about once a second."""
        out: list[dict[str, Any]] = []
        update = self.book.update
        for rule in self.rules:
            for condition in rule.on_tick(now):
                out.extend(update(rule.spec, condition, now))
        out.extend(self.book.tick(now))
        if self._ended:
            for run in [r for r, ended in self._ended.items() if now - ended > ENDED_MEMORY_S]:
                del self._ended[run]
        return out
