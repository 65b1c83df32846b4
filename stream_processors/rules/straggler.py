"""straggler: one rank's step time is well above the rest of its run (a slow node or a bad GPU).

A rank's step time is its logged `step_time_s` metric, or, where it logs none, derived from
consecutive metrics events: (time - previous time) / (step - previous step). Each rank's figure is
the median of its step times within the last `window_s` of its own events (at least its latest, at
most the last 128);
a rank is a straggler when its figure exceeds `factor` times the median of all ranks' figures.
Needs at least `min_ranks` ranks with figures. Checked on each tick, only for runs with new data;
the rule's `for` says how long it must last.

| param | default | meaning |
|---|---|---|
| `factor` | `1.5` | how many times the run's median counts as slow (> 1) |
| `window_s` | `60` | how far back each rank's step times are taken |
| `min_ranks` | `2` | fewest ranks to compare |

No selector. Subject: project, run, rank, host. Values: `value` (the rank's step time), `median`
(the run's), `ratio`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from statistics import median
from typing import Any, ClassVar, Iterable, Mapping

from stream_processors.rules.base import Condition, Rule, RuleSpec
from stream_processors.rules.params import Params

_KEEP = 128  # step times kept per rank: bounds memory and the median's cost on 512-rank runs


@dataclass(slots=True)
class _Rank:
    subject: dict[str, str]
    step: int
    time: float
    times: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=_KEEP))  # (time, step time)


@dataclass
class _Run:
    ranks: dict[int, _Rank] = field(default_factory=dict)
    dirty: bool = False  # new step times since the last check
    slow: set[int] = field(default_factory=set)  # ranks reported active


class Straggler(Rule):
    kind: ClassVar[str] = "straggler"
    consumes: ClassVar[frozenset[str]] = frozenset({"metrics"})

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        Params(spec.selector, "selector.").done()
        params = Params(spec.params)
        self.factor = params.number("factor", 1.5, minimum=1.0)
        self.window_s = params.duration("window_s", 60.0)
        self.min_ranks = params.positive_int("min_ranks", 2)
        params.done()
        self._runs: dict[str, _Run] = {}

    def on_event(self, event: Mapping[str, Any]) -> Iterable[Condition]:
        run = self._runs.get(event["run"])
        if run is None:
            run = self._runs[event["run"]] = _Run()
        step, at = event["step"], event["time"]
        rank = run.ranks.get(event["rank"])
        if rank is None:
            subject = {"project": event["project"], "run": event["run"], "rank": str(event["rank"]),
                       "host": event["host"]}
            run.ranks[event["rank"]] = _Rank(subject, step, at)
            return ()
        logged = event["values"].get("step_time_s")
        if logged is not None:
            step_time = logged if logged - logged == 0.0 else None
        elif step > rank.step and at > rank.time:
            step_time = (at - rank.time) / (step - rank.step)
        else:
            step_time = None
        if step > rank.step:
            rank.step, rank.time = step, at
        if step_time is not None:
            rank.times.append((at, step_time))
            while len(rank.times) > 1 and rank.times[0][0] < at - self.window_s:
                rank.times.popleft()
            run.dirty = True
        return ()

    def on_tick(self, now: float) -> Iterable[Condition]:
        out: list[Condition] = []
        for run in self._runs.values():
            if run.dirty:
                run.dirty = False
                self._check(run, now, out)
        return out

    def _check(self, run: _Run, now: float, out: list[Condition]) -> None:
        figures = {r: median(t for _, t in rank.times) for r, rank in run.ranks.items() if rank.times}
        typical = median(figures.values()) if len(figures) >= self.min_ranks else 0.0
        slow = {r for r, x in figures.items() if typical > 0 and x > self.factor * typical}
        for r in run.slow - slow:
            out.append(Condition(run.ranks[r].subject, False, now))
        for r in slow:
            x = figures[r]
            out.append(Condition(run.ranks[r].subject, True, now, {"value": x, "median": typical, "ratio": x / typical}))
        run.slow = slow

    def forget(self, run: str) -> None:
        self._runs.pop(run, None)
