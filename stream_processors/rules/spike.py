"""spike: a training metric jumps far above its recent level (a loss spike, or the grad norm's jump
that usually comes a few steps before one).

Each (run, rank, metric) keeps its last `window` finite values. A new value x scores a robust
z-score against them, (x - median) / (1.4826 * MAD): the median and the median absolute deviation
ignore the occasional outlier that would inflate a mean and a standard deviation, so one spike does
not hide the next. The MAD is floored at `min_mad_ratio` times |median| (and at 1e-12) so a flat
series (a clipped grad norm, a constant metric) does not turn a rounding difference into z = 1e9.
The condition is active when z > `z` (|z| with `direction: both`) and clears when a later value
scores at most `z`/2, so a value hovering at the threshold does not flap the alert. No verdict
before `min_points` values are in the window: the steep loss drop and the spikes of lr warm-up
would otherwise page at the start of every run. Non-finite values are skipped (the non_finite kind
reports those). `direction: both` also reports sudden drops (a grad norm collapsing to 0).

Spike values do go into the window: a single spike moves the median by one position and the MAD
barely, while a lasting jump (a new data mix, a learning rate change) becomes the new normal and
the alert clears once it fills about half the window, instead of firing until the run ends.

Cost: this runs on every metrics event of every rank, and a median and MAD of 200 values take
about 10 us even with one sort (the MAD is then found by bisection, not a second sort): per value,
that is too slow at 200k values/s. So they are cached and recomputed only after 16 new values
(window/16 for longer windows), about 1.5 us per value in all. They are also recomputed for a value
the cached ones call a spike, and for every value while a spike is active (rare and short), so each
alert, each value during one and each resolve is judged on exact statistics of the values before
it. Only a value the cached statistics call normal is judged on statistics up to 16 values old,
which over a window of 200 moves the median very little.

| selector | default | meaning |
|---|---|---|
| `metrics` | `[loss, grad_norm]` | a name or list of names to watch |
| `rank` | every rank | only this rank's values |

| param | default | meaning |
|---|---|---|
| `window` | `200` | values kept per rank and metric (20..1000) |
| `min_points` | `50` | values in the window before any verdict (10..window) |
| `z` | `6.0` | robust z-score above which a value is a spike (>= 1); clears at or below z/2 |
| `direction` | `up` | `up`: only rises; `both`: rises and drops |
| `min_mad_ratio` | `0.01` | the MAD's floor, as a fraction of the median's magnitude (0..1) |

Subject: project, run, rank, host, metric. Values: `value`, `median`, `z`.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping

from trainmon.stream_processors.rules.base import Condition, Rule, RuleSpec
from trainmon.stream_processors.rules.params import Params

_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
_MAD_FLOOR = 1e-12  # absolute floor: a series of exact zeros still gives a finite z
_REFRESH = 16  # new values between recomputes of the median and MAD (at least)
_WINDOW = (20, 1000)  # fewer: the median is noise; more: memory per rank and recompute cost


@dataclass(slots=True)
class _Track:
    """One metric of one rank: its recent values and their cached statistics."""

    subject: dict[str, str]
    window: deque[float]
    median: float = 0.0
    scale: float = 0.0  # 1.4826 * floored MAD; 0 until first computed
    fresh: int = 0  # values appended since median and scale were computed
    active: bool = False


class Spike(Rule):
    kind: ClassVar[str] = "spike"
    consumes: ClassVar[frozenset[str]] = frozenset({"metrics"})

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        selector = Params(spec.selector, "selector.")
        self.metrics = selector.names("metrics") or ("loss", "grad_norm")
        self.rank = selector.count("rank", None)
        selector.done()
        params = Params(spec.params)
        self.window = params.positive_int("window", 200)
        if not _WINDOW[0] <= self.window <= _WINDOW[1]:
            raise ValueError(f"window: expected an integer in {_WINDOW[0]}..{_WINDOW[1]}, got {self.window!r}")
        self.min_points = params.positive_int("min_points", 50)
        if not 10 <= self.min_points <= self.window:
            raise ValueError(f"min_points: expected an integer in 10..window ({self.window}), got {self.min_points!r}")
        self.z = params.number("z", 6.0, minimum=1.0)
        self.up_only = params.choice("direction", "up", ("up", "both")) == "up"
        self.min_mad_ratio = params.number("min_mad_ratio", 0.01, minimum=0.0, maximum=1.0)
        params.done()
        self.refresh = max(_REFRESH, self.window // 16)
        self._runs: dict[str, dict[tuple[int, str], _Track]] = {}  # run -> (rank, metric) -> track

    def on_event(self, event: Mapping[str, Any], now: float) -> Iterable[Condition]:
        rank = event["rank"]
        if self.rank is not None and rank != self.rank:
            return ()
        values = event["values"]
        tracks = None
        out: list[Condition] = []
        for name in self.metrics:
            x = values.get(name)
            if x is None or x - x != 0.0:  # absent or non-finite
                continue
            if tracks is None:
                tracks = self._runs.get(event["run"])
                if tracks is None:
                    tracks = self._runs[event["run"]] = {}
            track = tracks.get((rank, name))
            if track is None:
                subject = {"project": event["project"], "run": event["run"], "rank": str(rank),
                           "host": event["host"], "metric": name}
                track = tracks[(rank, name)] = _Track(subject, deque(maxlen=self.window))
            elif not track.active and track.subject["host"] != event["host"]:
                track.subject = {**track.subject, "host": event["host"]}  # the rank moved (restarted elsewhere)
            if len(track.window) >= self.min_points:
                self._judge(track, x, event["time"], out)
            track.window.append(x)
            track.fresh += 1
        return out

    def _judge(self, track: _Track, x: float, at: float, out: list[Condition]) -> None:
        """Compare x with the values before it; report a change of verdict, and every active one."""
        if track.fresh >= self.refresh or track.scale == 0.0 or (track.active and track.fresh):
            self._recompute(track)
        limit = self.z / 2 if track.active else self.z
        z = (x - track.median) / track.scale
        spiking = (z if self.up_only else abs(z)) > limit
        if spiking and not track.active and track.fresh:  # a new spike by the cached statistics: confirm
            self._recompute(track)
            z = (x - track.median) / track.scale
            spiking = (z if self.up_only else abs(z)) > limit
        if spiking:
            track.active = True
            out.append(Condition(track.subject, True, at, {"value": x, "median": track.median, "z": z}))
        elif track.active:
            track.active = False
            out.append(Condition(track.subject, False, at))

    def _recompute(self, track: _Track) -> None:
        window = track.window
        if window.maxlen != self.window:  # restored from a snapshot taken under another `window`
            window = track.window = deque(window, maxlen=self.window)
        ordered = sorted(window)
        n, half = len(ordered), len(ordered) // 2
        if n % 2:
            median = ordered[half]
            mad = _kth_deviation(ordered, median, half + 1)
        else:
            median = (ordered[half - 1] + ordered[half]) / 2
            mad = (_kth_deviation(ordered, median, half) + _kth_deviation(ordered, median, half + 1)) / 2
        track.median = median
        track.scale = _MAD_TO_SIGMA * max(mad, self.min_mad_ratio * abs(median), _MAD_FLOOR)
        track.fresh = 0

    def forget(self, run: str) -> None:
        self._runs.pop(run, None)


def _kth_deviation(ordered: list[float], median: float, k: int) -> float:
    """The k-th smallest |v - median| of a sorted list (1 <= k <= len), in O(log n) steps rather than
    a second O(n) pass and sort: the k values nearest the median are contiguous in sorted order, so
    it is the least, over the windows ordered[i:i+k], of the window's larger end deviation. The left
    end's deviation falls and the right end's rises with i, so that least is where they cross."""
    last = len(ordered) - k
    first = bisect_left(range(last + 1), True, key=lambda i: ordered[i + k - 1] - median >= median - ordered[i])
    best = ordered[first + k - 1] - median if first <= last else math.inf
    if first > 0:
        best = min(best, median - ordered[first - 1])
    return best
