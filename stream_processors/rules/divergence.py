"""divergence (overfitting): validation loss rising while training loss falls, or their gap growing.

Judged at each validation point (each logged value of the validation metric), against the previous
one. The training metric is logged far more often and is noisy, so it is smoothed: an exponential
moving average (`alpha`) of its values between validation points stands for it. With mode
`opposite`, a point counts when validation rose by more than `delta` while the smoothed training
metric fell; with `gap`, when validation minus smoothed training grew by more than `delta`; `either`
counts both. The gap also grows while both still improve (training just improves faster), so
`opposite` is the default and `gap` wants a `delta`. `patience` counting points in a row make it active; a point that does not count
clears it. Watches one rank (rank 0 by default).

| selector | default | meaning |
|---|---|---|
| `train` | `loss` | the training metric |
| `val` | `val_loss` | the validation metric |
| `rank` | `0` | the rank whose values count |

| param | default | meaning |
|---|---|---|
| `mode` | `opposite` | `opposite`, `gap` or `either` |
| `patience` | `3` | validation points in a row |
| `alpha` | `0.1` | EMA weight of each new training value (1: no smoothing) |
| `delta` | `0.0` | the least rise (of validation, or of the gap) that counts |

Subject: project, run, metric (the validation metric). Values: `val`, `train` (smoothed), `gap`,
`evaluations`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping

from stream_processors.rules.base import Condition, Rule, RuleSpec
from stream_processors.rules.params import Params


@dataclass
class _Track:
    train: float | None = None  # EMA of the training metric
    val: float | None = None  # at the previous validation point
    train_at_val: float | None = None  # the EMA at the previous validation point
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
        self.patience = params.positive_int("patience", 3)
        self.alpha = params.number("alpha", 0.1, minimum=0.001, maximum=1.0)
        self.delta = params.number("delta", 0.0, minimum=0.0)
        params.done()
        if self.train == self.val:
            raise ValueError("selector.val: must differ from selector.train")
        self._runs: dict[str, _Track] = {}

    def on_event(self, event: Mapping[str, Any], now: float) -> Iterable[Condition]:
        values = event["values"]
        train, val = values.get(self.train), values.get(self.val)
        if (train is None and val is None) or event["rank"] != self.rank:
            return ()
        track = self._runs.get(event["run"])
        if track is None:
            track = self._runs[event["run"]] = _Track()
        if train is not None and math.isfinite(train):
            track.train = train if track.train is None else track.train + self.alpha * (train - track.train)
        if val is None or not math.isfinite(val) or track.train is None:
            return ()
        counts = self._counts(track, val, track.train)
        track.val, track.train_at_val = val, track.train
        if counts:
            track.streak += 1
            if track.streak >= self.patience:
                track.active = True
                values_out = {"val": val, "train": track.train, "gap": val - track.train, "evaluations": track.streak}
                return (self._condition(event, True, values_out),)
            return ()
        track.streak = 0
        if track.active:
            track.active = False
            return (self._condition(event, False, {}),)
        return ()

    def _counts(self, track: _Track, val: float, train: float) -> bool:
        """Whether this validation point is one more sign of divergence."""
        if track.val is None or track.train_at_val is None:
            return False
        if self.opposite and val - track.val > self.delta and train < track.train_at_val:
            return True
        return self.gap and (val - train) - (track.val - track.train_at_val) > self.delta

    def _condition(self, event: Mapping[str, Any], active: bool, values: dict[str, float]) -> Condition:
        subject = {"project": event["project"], "run": event["run"], "metric": self.val}
        return Condition(subject, active, event["time"], values)

    def forget(self, run: str) -> None:
        self._runs.pop(run, None)
