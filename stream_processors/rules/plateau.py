"""plateau: a metric has stopped improving; active after `patience` evaluations without progress.

Each logged value of the metric is one evaluation (or, with `per: epoch`, each distinct whole epoch
is one). An improvement beats the best value so far by at least `delta` (or `delta` times the best's
magnitude with `relative: true`); it resets the count and clears the alert. Only one rank is watched
(rank 0 by default) so a 512-rank run makes one alert, not 512. Non-finite values are not
evaluations (the non_finite kind reports those). A per-step training loss is noisy: `alpha` < 1
compares its exponential moving average instead, so noise neither fakes nor hides a new best.

| selector | default | meaning |
|---|---|---|
| `metric` | `loss` | the metric to watch |
| `rank` | `0` | the rank whose values count |

| param | default | meaning |
|---|---|---|
| `mode` | `min` | `min`: lower is better; `max`: higher is better |
| `delta` | `0.0` | the least change that counts as an improvement |
| `relative` | `false` | `delta` is a fraction of the best value's magnitude |
| `patience` | `10` | evaluations without improvement before it is active |
| `alpha` | `1.0` | EMA weight of each new value (1: no smoothing) |
| `per` | `evaluation` | `evaluation` or `epoch` (metrics events without `epoch` are then ignored) |

Subject: project, run, metric. Values: `value` (smoothed), `best`, `evaluations` (since the last improvement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping

from stream_processors.rules.base import Condition, Rule, RuleSpec
from stream_processors.rules.params import Params


@dataclass
class _Track:
    best: float
    ema: float
    stale: int = 0  # evaluations since the last improvement
    epoch: int | None = None  # last whole epoch counted, with per: epoch
    active: bool = False


class Plateau(Rule):
    kind: ClassVar[str] = "plateau"
    consumes: ClassVar[frozenset[str]] = frozenset({"metrics"})

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        selector = Params(spec.selector, "selector.")
        self.metric = selector.name("metric", "loss")
        self.rank = selector.count("rank", 0)
        selector.done()
        params = Params(spec.params)
        self.sign = 1.0 if params.choice("mode", "min", ("min", "max")) == "min" else -1.0
        self.delta = params.number("delta", 0.0, minimum=0.0)
        self.relative = params.flag("relative", False)
        self.patience = params.positive_int("patience", 10)
        self.alpha = params.number("alpha", 1.0, minimum=0.001, maximum=1.0)
        self.per_epoch = params.choice("per", "evaluation", ("evaluation", "epoch")) == "epoch"
        params.done()
        self._runs: dict[str, _Track] = {}

    def on_event(self, event: Mapping[str, Any], now: float) -> Iterable[Condition]:
        x = event["values"].get(self.metric)
        if x is None or event["rank"] != self.rank or not math.isfinite(x):
            return ()
        epoch = event.get("epoch")
        whole = None if epoch is None else int(epoch)
        if self.per_epoch and whole is None:
            return ()
        run = event["run"]
        track = self._runs.get(run)
        if track is None:
            self._runs[run] = _Track(best=x, ema=x, epoch=whole)
            return ()
        x = track.ema = track.ema + self.alpha * (x - track.ema)
        margin = self.delta * abs(track.best) if self.relative else self.delta
        if self.sign * (track.best - x) > margin:
            track.best, track.stale = x, 0
            track.epoch = whole
            if track.active:
                track.active = False
                return (self._condition(event, False, {}),)
            return ()
        if self.per_epoch:
            if whole == track.epoch:
                return ()
            track.epoch = whole
        track.stale += 1
        if track.stale < self.patience:
            return ()
        track.active = True
        return (self._condition(event, True, {"value": x, "best": track.best, "evaluations": track.stale}),)

    def _condition(self, event: Mapping[str, Any], active: bool, values: dict[str, float]) -> Condition:
        subject = {"project": event["project"], "run": event["run"], "metric": self.metric}
        return Condition(subject, active, event["time"], values)

    def forget(self, run: str) -> None:
        self._runs.pop(run, None)
