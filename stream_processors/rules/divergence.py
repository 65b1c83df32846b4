"""divergence (overfitting): validation loss rising beyond its noise while training loss falls, or
their gap growing beyond its noise.

Judged at each validation point (each logged value of the validation metric), in validation points.
The training metric, logged far more often and noisy, stands at each point as its mean over the
interval since the previous point. With mode `opposite`, a point counts when validation is above the
lowest of the last 16 points by more than `z` times its noise while training is below its mean at
that lowest point; with `gap`, when validation minus training is above its lowest of the last 16 by
more than `z` times the gap's noise; `either` counts both. `patience` counting points in a row make it
active; a point that does not count clears it.

The noise is estimated from those 16 points (robust_noise: second differences, blind to the trend and
to where it turned), so a rise must stand out from the metric's own scatter: a steady validation
curve pages on a small rise, a jumpy one only on a large one. Until 5 points give an estimate, any
rise of more than `delta` counts: a run's first points fall steeply, and an overfitting run caught
there is caught at its second rising point; a run whose validation starts out flat (one continuing
from a converged checkpoint) wants a `delta` for its first points. The lowest point is looked for
in the last 16 only: over a long flat stretch the luckiest of many points would sit ever further below
the level and every later point would look like a rise.

A resume from a checkpoint (the training step goes back on the run's own clock) logs steps again:
those values, validation points among them, are left out until the run is past where it was, so the
replay neither breaks a streak nor starts one. A late value (an older event time) still counts.
Watches one rank (rank 0 by default).

| selector | default | meaning |
|---|---|---|
| `train` | `loss` | the training metric |
| `val` | `val_loss` | the validation metric |
| `rank` | `0` | the rank whose values count |

| param | default | meaning |
|---|---|---|
| `mode` | `opposite` | `opposite`, `gap` or `either`; the gap also grows while both still improve (training faster), so `opposite` is the default |
| `patience` | `2` | counting validation points in a row: one high point can be an unlucky evaluation; with `z` at 6, two in a row are a trend, called at the second or third point of a real rise |
| `z` | `6.0` | noise widths a rise must clear: the lowest of 16 noisy points lies about 1.8 widths below their level and 16 points give the width only to about +-26 %; at 6, pure noise makes two points in a row count about once in 1,300 points |
| `delta` | `0.0` | the least rise that counts however quiet the metric (and while its noise is not known yet) |

Subject: project, run, metric (the validation metric). Values: `val`, `train` (its interval mean),
`gap`, `best` (the lowest recent validation value), `noise` (the validation metric's), `evaluations`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping

from trainmon.stream_processors.rules.base import Condition, Rule, RuleSpec
from trainmon.stream_processors.rules.params import Params
from trainmon.stream_processors.rules.plateau import robust_noise

HISTORY = 16  # validation points kept per run: the noise sample and the lowest recent point


@dataclass
class _Point:
    val: float
    train: float  # mean of the training metric over the interval that ended here


@dataclass
class _Watch:
    """One run: its recent validation points and the training values since the last."""

    points: deque[_Point] = field(default_factory=lambda: deque(maxlen=HISTORY))
    total: float = 0.0  # training values since the last point: their sum and count
    count: int = 0
    train: float | None = None  # the last interval's mean
    furthest: int = -1  # furthest training step seen
    time: float = -math.inf  # newest event time of a training value: the run's own clock
    replay_to: int | None = None  # after a resume: steps up to here are logged again
    streak: int = 0
    active: bool = False


class Divergence(Rule):
    kind: ClassVar[str] = "divergence"
    consumes: ClassVar[frozenset[str]] = frozenset({"metrics"})

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        selector = Params(spec.selector, "selector.")
        self.train = selector.name("train", "loss")
        self.val = selector.name("val", "val_loss")
        self.rank = selector.count("rank", 0)
        selector.done()
        params = Params(spec.params)
        mode = params.choice("mode", "opposite", ("opposite", "gap", "either"))
        self.opposite, self.gap = mode in ("opposite", "either"), mode in ("gap", "either")
        self.patience = params.positive_int("patience", 2)
        self.z = params.number("z", 6.0, minimum=0.0)
        self.delta = params.number("delta", 0.0, minimum=0.0)
        params.done()
        if self.train == self.val:
            raise ValueError("selector.val: must differ from selector.train")
        self._runs: dict[str, _Watch] = {}

    def on_event(self, event: Mapping[str, Any], now: float) -> Iterable[Condition]:
        values = event["values"]
        train, val = values.get(self.train), values.get(self.val)
        if (train is None and val is None) or event["rank"] != self.rank:
            return ()
        watch = self._runs.get(event["run"])
        if watch is None:
            watch = self._runs[event["run"]] = _Watch()
        step = event["step"]
        if train is not None and math.isfinite(train) and _fresh(watch, step, event["time"]):
            watch.total += train
            watch.count += 1
        if val is None or not math.isfinite(val) or (watch.replay_to is not None and step <= watch.replay_to):
            return ()
        if watch.count:
            watch.train, watch.total, watch.count = watch.total / watch.count, 0.0, 0
        if watch.train is None:
            return ()
        return self._judge(watch, _Point(val, watch.train), event)

    def _judge(self, watch: _Watch, point: _Point, event: Mapping[str, Any]) -> Iterable[Condition]:
        """One more validation point: does it count, and does the streak make the condition?"""
        best, noise, counts = self._counts(watch.points, point)
        watch.points.append(point)
        if counts:
            watch.streak += 1
            if watch.streak < self.patience:
                return ()
            watch.active = True
            values = {"val": point.val, "train": point.train, "gap": point.val - point.train, "best": best,
                      "noise": noise, "evaluations": watch.streak}
            return (self._condition(event, True, values),)
        watch.streak = 0
        if watch.active:
            watch.active = False
            return (self._condition(event, False, {}),)
        return ()

    def _counts(self, points: deque[_Point], point: _Point) -> tuple[float, float, bool]:
        """(lowest recent validation value, its noise, whether this point is one more sign of divergence)."""
        if not points:
            return point.val, 0.0, False
        lowest = min(points, key=lambda p: p.val)
        noise = robust_noise(p.val for p in points)
        rising = self.opposite and point.val - lowest.val > max(self.z * noise, self.delta) \
            and point.train < lowest.train
        if self.gap and not rising:
            gaps = [p.val - p.train for p in points]
            rising = point.val - point.train - min(gaps) > max(self.z * robust_noise(gaps), self.delta)
        return lowest.val, noise, rising

    def _condition(self, event: Mapping[str, Any], active: bool, values: dict[str, float]) -> Condition:
        subject = {"project": event["project"], "run": event["run"], "metric": self.val}
        return Condition(subject, active, event["time"], values)

    def forget(self, run: str) -> None:
        self._runs.pop(run, None)


def _fresh(watch: _Watch, step: int, at: float) -> bool:
    """Whether a training value at `step` counts: not when the run logs it again after a resume (its
    step went back on its own clock, unlike a late value's) until it is past where it was."""
    if at >= watch.time:
        if step < watch.furthest:
            watch.replay_to = watch.furthest
        watch.time = at
    if watch.replay_to is not None:
        if step <= watch.replay_to:
            return False
        watch.replay_to = None
    watch.furthest = max(watch.furthest, step)
    return True
