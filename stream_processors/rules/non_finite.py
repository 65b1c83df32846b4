"""non_finite: a training metric became NaN or ±Inf; active at once, default severity critical.

One alert per run and metric, however many ranks report it (an all-reduced loss goes NaN on all 512
at once). It clears when every rank that reported a non-finite value has since logged a finite value
of that metric at another step: a later one, or an earlier one, which is the run restarted from a
checkpoint before the NaN (a rank's events reach the rule in order, so a step back is no late event).
A finite value at the NaN's own step (a metric logged twice in a step) clears nothing.

| selector | default | meaning |
|---|---|---|
| `metrics` | any metric | a name or list of names to watch |

No params. Subject: project, run, metric. Values: `step` and `rank` of the first non-finite value
seen, `ranks` (how many ranks are non-finite now).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping

from trainmon.stream_processors.rules.base import Condition, Rule, RuleSpec
from trainmon.stream_processors.rules.params import Params


@dataclass
class _Bad:
    """One metric of one run while some rank's latest value of it is non-finite."""

    step: int  # where it was first seen
    rank: int
    ranks: dict[int, int] = field(default_factory=dict)  # rank -> step of its non-finite value


class NonFinite(Rule):
    kind: ClassVar[str] = "non_finite"
    consumes: ClassVar[frozenset[str]] = frozenset({"metrics"})
    default_severity: ClassVar[str] = "critical"

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        selector = Params(spec.selector, "selector.")
        self.metrics = selector.names("metrics")
        selector.done()
        Params(spec.params).done()
        self._bad: dict[str, dict[str, _Bad]] = {}  # run -> metric -> state; only while bad

    def on_event(self, event: Mapping[str, Any], now: float) -> Iterable[Condition]:
        values = event["values"]
        run = event["run"]
        bad = self._bad.get(run)
        if bad is None:
            if self.metrics is None:
                total = sum(values.values())
            else:
                total = 0.0
                for name in self.metrics:
                    total += values.get(name, 0.0)
            if total - total == 0.0:  # all finite (a finite sum may overflow to inf: then look closer)
                return ()
            bad = {}
        out: list[Condition] = []
        names = values.keys() if self.metrics is None else [m for m in self.metrics if m in values]
        step, rank = event["step"], event["rank"]
        for name in names:
            x = values[name]
            state = bad.get(name)
            if x - x != 0.0:
                if state is None:
                    state = bad[name] = _Bad(step, rank)
                state.ranks[rank] = step
                out.append(self._condition(event, name, True, {"step": state.step, "rank": state.rank,
                                                               "ranks": len(state.ranks)}))
            elif state is not None and state.ranks.get(rank, step) != step:
                del state.ranks[rank]
                if not state.ranks:
                    del bad[name]
                    out.append(self._condition(event, name, False, {}))
        if bad:
            self._bad[run] = bad
        else:
            self._bad.pop(run, None)
        return out

    @staticmethod
    def _condition(event: Mapping[str, Any], metric: str, active: bool, values: dict[str, float]) -> Condition:
        subject = {"project": event["project"], "run": event["run"], "metric": metric}
        return Condition(subject, active, event["time"], values)

    def forget(self, run: str) -> None:
        self._bad.pop(run, None)
