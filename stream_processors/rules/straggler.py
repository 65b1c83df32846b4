"""straggler: one rank's step time is well above its peers' (a slow node, a throttled or bad GPU).

A rank's step time is its logged `step_time_s` metric, or, where it logs none, derived from
consecutive metrics events: (time - previous time) / (step - previous step). A rank's figure is the
lower median of its step times within the last `window_s` of its own events (at least its latest
two, at most the last 128): most of its recent steps must be slow, so one long step (a checkpoint,
a data-loader hiccup) never makes it slow, even when it logs less than twice a window.

Each rank is compared with its peers (the run's other fresh ranks), NVRx-style but robust: it is a
straggler when its figure x is both
- above `factor` x the peers' median m (so tiny absolute differences on a quiet run never page), and
- above `z` robust z-scores from them: (x - m) / (1.4826 x MAD), MAD being the peers' median absolute
  deviation from m, floored at 2 % of m (so identical peers don't make any difference infinite).
The z-score keeps widely spread runs quiet: a rank 1.7x the median of peers that spread from 0.6 to
1.3 s is within the run's own spread (z ~ 2). `factor` keeps tight runs quiet, where even noise is
many MADs: 16 healthy ranks with +-20 % jitter on every step, a 3x step now and then and +-8 %
per-rank offsets reach 1.28x their peers (z ~ 7) when logging each second, 1.38x (z ~ 11) when
logging every 5 s (4 step times a window). Hence the default 1.5, not 1.3, which would page there
and on structural per-rank differences (rank 0's extra work, unequal pipeline stages, mixed nodes);
1.5 is also about NVRx's convention (performance score peers / x < 0.7, that is x > 1.43 m). The
default `z` of 3.5 is the usual cut-off for this modified z-score (Iglewicz & Hoaglin).

Freshness: a rank whose newest step time is more than `window_s` older than the run's newest step
time (a dead or hung rank) is left out: it gets no verdict (an active one is cleared), is nobody's
peer and does not count toward `min_ranks`. So a dead rank's old times never make it, or the ranks
still running, a straggler; `heartbeat_lost` and `stalled` report such ranks. A rank that logs
less often than every window_s / 3 gets 3 of its own logging intervals instead, so that ranks
logging out of phase (or a slow rank, logging every so many of its slower steps) do not flicker
stale between two of their events.

Checked on each tick, only for runs with new step times: O(ranks x 128) for the figures, one sort of
the figures and, only for ranks already past `factor`, one of the deviations; cheap for 512 ranks.
Detection takes about window_s / 2 (until most of the window is slow) plus the rule's `for`: ~30 s
from a rank turning 2x slower with the defaults (20 s window, `for` 15 s) when it logs a step time
every 1-5 s; one logging only every 10 s (every 20 s once slow) takes ~60 s.

| param | default | meaning |
|---|---|---|
| `factor` | `1.5` | slow means more than factor x the peers' median step time (>= 1) |
| `z` | `3.5` | and more than this many robust z-scores above the peers (>= 0; 0: `factor` alone) |
| `window_s` | `20` | how far back each rank's step times are taken, and how old is stale |
| `min_ranks` | `2` | fewest fresh ranks to compare (>= 2) |

No selector. Subject: project, run, rank, host, and gpu where the rank's `local_rank` is known (from
its `run_start`, or a `local_rank` on its metrics events): by convention the index of the GPU a rank
uses on its host (unless CUDA_VISIBLE_DEVICES remaps it), the same `gpu` label as `hardware_errors`.
Host and gpu are the rank's latest: if they change (a late run_start, a restart on another node) an
active alert resolves under the old names and fires again under the new ones after `for`.
Values: `value` (the rank's step time), `median` (its peers'), `ratio` (value / median), `z`,
`score` (median / value, NVRx's performance score: < 0.7 is slow).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping, Sequence

from trainmon.stream_processors.rules.base import Condition, Rule, RuleSpec
from trainmon.stream_processors.rules.params import Params

_KEEP = 128  # step times kept per rank: bounds memory and the median's cost on 512-rank runs
_MAD_FLOOR = 0.02  # MAD at least this fraction of the median: identical peers give a finite z
_MAD_TO_SIGMA = 1.4826  # MAD x this estimates a normal distribution's standard deviation


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


def _median_low(times: deque[tuple[float, float]]) -> float:
    """The lower median of a rank's step times: slow only when most of them are."""
    ordered = sorted([t for _, t in times])
    return ordered[(len(ordered) - 1) // 2]


def _median_without(s: Sequence[float], i: int) -> float:
    """Median of the sorted s without its element i, in O(1) (the peers' median of element i)."""
    n = len(s) - 1
    k = n // 2
    upper = s[k] if k < i else s[k + 1]
    if n % 2:
        return upper
    lower = s[k - 1] if k - 1 < i else s[k]
    return (lower + upper) / 2


class Straggler(Rule):
    kind: ClassVar[str] = "straggler"
    consumes: ClassVar[frozenset[str]] = frozenset({"metrics", "run_start"})  # run_start: local_rank
    default_for_s: ClassVar[float] = 15.0  # with the 20 s window: named ~30 s after slowing down

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        Params(spec.selector, "selector.").done()
        params = Params(spec.params)
        self.factor = params.number("factor", 1.5, minimum=1.0)
        self.z = params.number("z", 3.5, minimum=0.0)
        self.window_s = params.duration("window_s", 20.0)
        self.min_ranks = params.positive_int("min_ranks", 2)
        params.done()
        if self.min_ranks < 2:
            raise ValueError(f"min_ranks: expected an integer >= 2 (a rank needs a peer), got {self.min_ranks}")
        self._runs: dict[str, _Run] = {}
        # run -> rank -> GPU index (its local_rank), learnt from run_start, which may come before the
        # rank's first metrics or after them (another topic). Kept apart from _Run so a snapshot from
        # before this field restores as it was.
        self._gpus: dict[str, dict[int, str]] = {}

    def on_event(self, event: Mapping[str, Any], now: float) -> Iterable[Condition]:
        local = event.get("local_rank")
        known = type(local) is int and local >= 0  # metrics carry none in the contract: tolerate one
        if event["kind"] == "run_start":
            return self._learn_gpu(event) if known else ()
        out = self._learn_gpu(event) if known else []
        run = self._runs.get(event["run"])
        if run is None:
            run = self._runs[event["run"]] = _Run()
        step, at = event["step"], event["time"]
        rank = run.ranks.get(event["rank"])
        if rank is None:
            subject = {"project": event["project"], "run": event["run"], "rank": str(event["rank"]),
                       "host": event["host"]}
            gpu = self._gpus.get(event["run"], {}).get(event["rank"])
            if gpu is not None:
                subject["gpu"] = gpu
            run.ranks[event["rank"]] = _Rank(subject, step, at)
            return out
        if rank.subject["host"] != event["host"]:  # restarted elsewhere: its GPU is as last learnt
            subject = {k: v for k, v in rank.subject.items() if k != "gpu"} | {"host": event["host"]}
            gpu = self._gpus.get(event["run"], {}).get(event["rank"])
            out += self._rename(run, event["rank"], subject | ({"gpu": gpu} if gpu is not None else {}), at)
        logged = event["values"].get("step_time_s")
        if logged is not None:
            step_time = logged if logged - logged == 0.0 and logged > 0 else None
        elif step > rank.step and at > rank.time:
            step_time = (at - rank.time) / (step - rank.step)
        else:
            step_time = None
        if step > rank.step:
            rank.step, rank.time = step, at
        if step_time is not None:
            rank.times.append((at, step_time))
            while len(rank.times) > 2 and rank.times[0][0] < at - self.window_s:
                rank.times.popleft()
            run.dirty = True
        return out

    def _learn_gpu(self, event: Mapping[str, Any]) -> list[Condition]:
        """Record a rank's GPU (the event's local_rank); a rank already watched gets it, and the
        event's host, in its subject."""
        number, host = event["rank"], event["host"]
        gpu = self._gpus.setdefault(event["run"], {})[number] = str(event["local_rank"])
        run = self._runs.get(event["run"])
        rank = run.ranks.get(number) if run is not None else None
        if run is None or rank is None or (rank.subject.get("gpu"), rank.subject["host"]) == (gpu, host):
            return []
        return self._rename(run, number, {**rank.subject, "host": host, "gpu": gpu}, event["time"])

    @staticmethod
    def _rename(run: _Run, number: int, subject: dict[str, str], at: float) -> list[Condition]:
        """A rank's subject changes (its GPU became known, it restarted on another host): an active
        verdict is cleared under the old subject (another fingerprint) and re-reported by the next check."""
        rank = run.ranks[number]
        old, rank.subject = rank.subject, subject
        if number not in run.slow:
            return []
        run.slow.discard(number)
        run.dirty = True
        return [Condition(old, False, at)]

    def on_tick(self, now: float) -> Iterable[Condition]:
        out: list[Condition] = []
        for run in self._runs.values():
            if run.dirty:
                run.dirty = False
                self._check(run, now, out)
        return out

    def _check(self, run: _Run, now: float, out: list[Condition]) -> None:
        newest = max((rank.times[-1][0] for rank in run.ranks.values() if rank.times), default=None)
        slow: dict[int, dict[str, float]] = {}
        if newest is not None:
            fresh = sorted((_median_low(rank.times), r) for r, rank in run.ranks.items()
                           if rank.times and rank.times[-1][0] >= newest - self._stale_after(rank.times))
            if len(fresh) >= self.min_ranks:
                self._judge(fresh, slow)
        for r in run.slow - slow.keys():
            out.append(Condition(run.ranks[r].subject, False, now))
        for r, values in slow.items():
            out.append(Condition(run.ranks[r].subject, True, now, values))
        run.slow = set(slow)

    def _stale_after(self, times: deque[tuple[float, float]]) -> float:
        """How long a rank may be silent before it is stale: window_s, or 3 of its logging intervals."""
        if len(times) < 2:
            return self.window_s
        return max(self.window_s, 3 * (times[-1][0] - times[0][0]) / (len(times) - 1))

    def _judge(self, fresh: list[tuple[float, int]], slow: dict[int, dict[str, float]]) -> None:
        """Fill `slow` with the stragglers among the fresh ranks' (figure, rank), sorted by figure."""
        figures = [x for x, _ in fresh]
        deviations: dict[float, list[float]] = {}  # peers' median -> sorted |figure - it|, all ranks
        for i in range(len(fresh) - 1, -1, -1):  # slowest first
            x, r = fresh[i]
            m = _median_without(figures, i)
            if not x > self.factor * m:
                break  # a faster rank has a figure no larger and a peers' median no smaller
            if m <= 0:
                continue
            spread = deviations.get(m)
            if spread is None:
                spread = deviations[m] = sorted(abs(y - m) for y in figures)
            mad = _median_without(spread, bisect_left(spread, abs(x - m)))  # its own deviation left out
            z = (x - m) / (_MAD_TO_SIGMA * max(mad, _MAD_FLOOR * m))
            if z > self.z:
                slow[r] = {"value": x, "median": m, "ratio": x / m, "z": z, "score": m / x}

    def forget(self, run: str) -> None:
        self._runs.pop(run, None)
        self._gpus.pop(run, None)
