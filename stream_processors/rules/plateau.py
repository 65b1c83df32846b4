"""plateau: a metric has stopped improving beyond its own noise over the last part of the run.

Judged over a `window`: a fraction of the run's progress so far (its steps since the first value seen,
which is the same fraction of its epochs, or of its validation points for a metric logged only at
validation). Training slows as it goes (roughly a power law in steps), so a healthy curve improves by
about as much over the last 40 % of the run at step 500 as at step 50,000, while a fixed count of
values is too long early (a stuck run goes unnoticed for minutes) and too short late (a run that still
improves 0.5 % per 1,000 steps looks flat over 1,000 values).

The window's values are split into an older and a newer half; the improvement is the older half's mean
minus the newer half's (`mode: min`). The metric's noise is estimated robustly from its latest 128
values (robust_noise: from their second differences, blind to the trend, to a bend and to spikes) and
gives the standard error of that difference. Active when even the improvement plus `z` standard errors is below
`delta` (a flat curve, however noisy); inactive again when the improvement minus `z` standard errors is
above it; in between the verdict stands, so a curve hovering at the limit does not flap. The window is
never shorter than the values the noise needs to tell an improvement of `delta` from none,
(3 z noise / delta)^2 (then `z` standard errors are 2/3 of `delta`, and a flat curve is called in 5
verdicts of 6), nor than `patience` values: a noisy loss is judged over more steps, a clean one over
fewer, and a plateau has lasted at least half the window when it is called.

Values are kept by step, in bins of about a 16th of the window, so a late value lands where it belongs
and a resume from a checkpoint (the step goes back, the run logs those steps again) adds its values to
those steps' bins: the verdict goes on through it instead of starting over. Only one rank is watched
(rank 0 by default), so a 512-rank run makes one alert. Non-finite values are the non_finite kind's.

| selector | default | meaning |
|---|---|---|
| `metric` | `loss` | the metric to watch |
| `rank` | `0` | the rank whose values count |

| param | default | meaning |
|---|---|---|
| `mode` | `min` | `min`: lower is better; `max`: higher is better |
| `window` | `0.4` | the fraction of the run so far that is judged: long enough that a healthy power-law curve clearly improves across it, short enough that a plateau beginning at step s is called by about step 1.5 s |
| `delta` | `0.02` | the least improvement between the window's halves that counts: a loss ~ step^-a improves by about a/4 between them, so one decaying more slowly than step^-0.08 is flat (the simulator's healthy curves improve 3 % or more, a stuck one not at all) |
| `relative` | `true` | `delta` is a fraction of the metric's level, so a loss of 2 and one of 0.02 are judged alike |
| `z` | `2.0` | standard errors of noise an improvement must clear either way: noise alone decides about 2 % of verdicts |
| `patience` | `128` | the fewest values the verdict is taken over, so a plateau has lasted at least 64 values when called: a mean of fewer is rough, and a run's first steps (a warm-up among them) are not judged on a handful of values |

Subject: project, run, metric. Values: `value` (the newer half's mean), `before` (the older half's),
`noise` (standard error of their difference), `steps` (the window), `epochs` (the window in epochs,
when the run logs them).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping

from trainmon.stream_processors.rules.base import Condition, Rule, RuleSpec
from trainmon.stream_processors.rules.params import Params

NOISE_VALUES = 128  # latest values the noise is estimated from: a steady estimate (+-9 %), a recent one
MIN_NOISE_VALUES = 8  # fewer give no usable estimate
BINS_PER_WINDOW = 16  # resolution of the window
MAX_BINS = 64  # bound per run; beyond it the two oldest bins merge
_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
_MEAN_ABS_TO_SIGMA = math.sqrt(math.pi / 2)  # likewise for its mean absolute deviation


def robust_noise(values: Iterable[float]) -> float:
    """Standard deviation of the noise on a series, robust to its trend, a change of trend and spikes.
    From second differences, which a straight trend does not reach; their deviations from their
    median (a steady bend drops out too) are clipped at 3 MADs, so the bend where a curve turned or a
    spike weighs no more than a large ordinary value, then averaged: an average uses the values far
    better than a median (about +-26 % from 16 values rather than +-36 %). Scaled so pure Gaussian noise
    gives its standard deviation (a second difference of independent noise has variance 6 sigma^2).
    0.0 when there are too few values to say."""
    xs = list(values)
    second = [a - 2.0 * b + c for a, b, c in zip(xs, xs[1:], xs[2:])]
    if len(second) < 3:
        return 0.0
    middle = statistics.median(second)
    deviations = [abs(d - middle) for d in second]
    clip = 3.0 * _MAD_TO_SIGMA * statistics.median(deviations)
    return statistics.fmean(min(d, clip) for d in deviations) * _MEAN_ABS_TO_SIGMA / math.sqrt(6.0)


@dataclass
class _Bin:
    """The values of a span of steps: enough to average any run of bins."""

    start: int  # first step
    width: int  # steps it spans
    count: int = 0
    total: float = 0.0


@dataclass
class _Series:
    """One run's watched metric."""

    first: int  # first step seen: the run's progress counts from it
    step: int  # furthest step seen
    bins: deque[_Bin] = field(default_factory=deque)
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=NOISE_VALUES))
    span: float = 0.0  # steps the last verdict wanted: sets the next bins' width
    fresh: int = 0  # values since the last verdict: one comes per bin's worth of values
    epochs_per_step: float = 0.0  # 0 while the run logs no epoch
    active: bool = False


@dataclass(frozen=True)
class _Halves:
    """The window, split into its older and newer half."""

    before: float
    after: float
    noise: float  # standard error of before - after
    steps: int


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
        self.window = params.number("window", 0.4, minimum=0.05, maximum=0.9)
        self.delta = params.number("delta", 0.02, minimum=0.0)
        if self.delta <= 0.0:
            raise ValueError("delta: expected a number > 0 (the least improvement that counts)")
        self.relative = params.flag("relative", True)
        self.z = params.number("z", 2.0, minimum=0.0)
        self.patience = params.positive_int("patience", 128)
        params.done()
        self._runs: dict[str, _Series] = {}

    def on_event(self, event: Mapping[str, Any], now: float) -> Iterable[Condition]:
        x = event["values"].get(self.metric)
        if x is None or event["rank"] != self.rank or not math.isfinite(x):
            return ()
        step = event["step"]
        series = self._runs.get(event["run"])
        if series is None:
            series = self._runs[event["run"]] = _Series(first=step, step=step)
        series.first, series.step = min(series.first, step), max(series.step, step)
        epoch = event.get("epoch")
        if epoch and step > 0:
            series.epochs_per_step = epoch / step
        series.recent.append(x)
        _count(series, step, x)
        series.fresh += 1
        if series.fresh < (series.bins[-2].count if len(series.bins) > 1 else 1):
            return ()
        series.fresh = 0
        return self._judge(series, event)

    def _judge(self, series: _Series, event: Mapping[str, Any]) -> Iterable[Condition]:
        """The verdict, about once per bin's worth of values."""
        if len(series.recent) < MIN_NOISE_VALUES:
            return ()
        noise = robust_noise(series.recent)
        delta = self.delta * abs(statistics.median(series.recent)) if self.relative else self.delta
        if delta <= 0.0:
            return ()
        needed = max(self.patience, (3.0 * self.z * noise / delta) ** 2)
        halves = _halves(series, needed, self.window * (series.step - series.first), noise)
        if halves is None:
            return ()
        improvement = self.sign * (halves.before - halves.after)
        if improvement + self.z * halves.noise < delta:
            series.active = True
            values = {"value": halves.after, "before": halves.before, "noise": halves.noise,
                      "steps": float(halves.steps)}
            if series.epochs_per_step:
                values["epochs"] = halves.steps * series.epochs_per_step
            return (self._condition(event, True, values),)
        if series.active and improvement - self.z * halves.noise > delta:
            series.active = False
            return (self._condition(event, False, {}),)
        return ()

    def _condition(self, event: Mapping[str, Any], active: bool, values: dict[str, float]) -> Condition:
        subject = {"project": event["project"], "run": event["run"], "metric": self.metric}
        return Condition(subject, active, event["time"], values)

    def forget(self, run: str) -> None:
        self._runs.pop(run, None)


def _count(series: _Series, step: int, x: float) -> None:
    """Into the bin spanning `step`: a new one past the newest, else the newest that starts at or
    before it (a late or a resumed value); a value older than every bin is let go."""
    bins = series.bins
    if not bins or step >= bins[-1].start + bins[-1].width:
        _open(series, step)
    for b in reversed(bins):
        if b.start <= step:
            b.count += 1
            b.total += x
            return


def _open(series: _Series, step: int) -> None:
    """A new bin from `step`: a 16th of the window the last verdict wanted (at most of the run so far,
    as an early noise estimate is rough); the two oldest merge beyond MAX_BINS."""
    bins = series.bins
    bins.append(_Bin(step, max(1, int(min(series.span, step - series.first) / BINS_PER_WINDOW))))
    if len(bins) > MAX_BINS:
        old, older = bins.popleft(), bins.popleft()
        bins.appendleft(_Bin(old.start, older.start + older.width - old.start, old.count + older.count,
                             old.total + older.total))


def _halves(series: _Series, needed: float, span: float, noise: float) -> _Halves | None:
    """The newest bins holding at least `needed` values over at least `span` steps, split in two by
    count; None while there are not that many. Older bins are let go: the window only moves on."""
    bins = series.bins
    count, start = 0, len(bins)
    while start > 0:
        start -= 1
        count += bins[start].count
        if count >= needed and series.step - bins[start].start + 1 >= span:
            break
    else:
        steps = series.step - bins[0].start + 1
        series.span = max(span, needed * steps / count)
        return None
    steps = series.step - bins[start].start + 1
    series.span = max(span, steps)
    for _ in range(start):
        bins.popleft()
    older, half = 0.0, 0
    for b in bins:
        if half >= count / 2:
            break
        older += b.total
        half += b.count
    if half >= count:
        return None
    newer = sum(b.total for b in bins) - older
    return _Halves(older / half, newer / (count - half), noise * math.sqrt(1.0 / half + 1.0 / (count - half)),
                   steps)
