"""stalled: the run's step has stood still far longer than usual while its GPUs are busy (a NCCL hang).

A hung collective keeps every GPU at 100 % and the step counter frozen, and the processes alive, so
neither heartbeat_lost nor idle_gpu notices it. The run's step is the highest step any rank reported
in metrics or heartbeat events. Busyness comes from `run_hardware` events, which the processors
derive from system samples and key by run (not part of the public contract):

    {"kind": "run_hardware", "run": str, "host": str, "time": float,
     "gpu_util_percent": float (mean over the node's GPUs), "gpus": int}

The run counts as busy when the mean, over its hosts, of each host's latest `gpu_util_percent` taken
after the step last advanced and at most `fresh_s` before now is at least `busy_percent` (a host
whose samples stopped says nothing about now). Checked on each tick; clears when the step advances or
the GPUs go quiet.

How long is too long is learned per run: `advances` times the median of its last 8 gaps between
step advances (as seen: with the SDK's 1 s heartbeats carrying the step, about max(step time, 1 s)),
at least `min_stall_s`; `stall_s` until 3 gaps are known (the first steps compile and warm up). So a
run stepping every second is stalled after 20 s, one stepping every 2 minutes after 20 minutes, and
the median ignores the odd slow step (a checkpoint, an evaluation).

| param | default | meaning |
|---|---|---|
| `advances` | `10` | typical gaps between step advances the step may stand still |
| `min_stall_s` | `20` | the shortest stall reported, however fast the run steps |
| `stall_s` | `300` | how long the step may stand still until the run's cadence is known |
| `busy_percent` | `50` | mean GPU utilisation that counts as busy |
| `fresh_s` | `15` | GPU samples older than this do not count |

No selector. Subject: project, run. Values: `step`, `stalled_s`, `gpu_util_percent`, `limit_s` (the
run's stall limit then).

Expected pauses: while any rank's latest heartbeat declares a phase (`with run.pause("checkpoint")`,
`run.phase("eval")` in the SDK), the step may stand still for `pause_times` times the longest of that
phase's last 8 durations in this run (once 2 are known), else `pause_s`; a stall after the pause
counts from its end. So evaluations and checkpoint saves never page, and one that takes far longer
than usual (a hung checkpoint write) still does. A `run_start` of a run already watched (a rank
restarted, a resume from a checkpoint, whose step may go back) starts its step count afresh.

| param | default | meaning |
|---|---|---|
| `pause_s` | `1800` | how long a declared pause may last until that phase's usual length is known |
| `pause_times` | `3` | a declared pause may last this many times the longest of its phase's recent ones |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median
from typing import Any, ClassVar, Iterable, Mapping

from trainmon.stream_processors.rules.base import Condition, Rule, RuleSpec
from trainmon.stream_processors.rules.params import Params

_GAPS = 8  # step advances whose gaps give a run's cadence
_KNOWN = 3  # gaps needed before the cadence counts


@dataclass
class _Run:
    project: str
    step: int
    advanced_at: float  # partition time the step was last read going up
    hosts: dict[str, tuple[float, float]] = field(default_factory=dict)  # host -> (time, util %)
    active: bool = False
    gaps: tuple[float, ...] = ()  # the latest gaps between step advances, oldest first
    phases: dict[int, str] = field(default_factory=dict)  # rank -> the phase its latest heartbeat declared
    paused_at: float = 0.0  # event time the current pause began (0: not paused)
    resumed_at: float = 0.0  # event time the latest pause ended: a stall counts from here too
    pauses: dict[str, tuple[float, ...]] = field(default_factory=dict)  # phase -> latest durations
    said: dict[int, float] = field(default_factory=dict)  # rank -> its own time of its newest event read

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Snapshots from before phases restore without them."""
        self.__dict__.update({"phases": {}, "pauses": {}, "said": {}, **state})


class Stalled(Rule):
    kind: ClassVar[str] = "stalled"
    consumes: ClassVar[frozenset[str]] = frozenset({"metrics", "heartbeat", "run_hardware", "run_start"})

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        Params(spec.selector, "selector.").done()
        params = Params(spec.params)
        self.stall_s = params.duration("stall_s", 300.0)
        self.advances = params.number("advances", 10.0, minimum=1.0)
        self.min_stall_s = params.duration("min_stall_s", 20.0)
        self.busy_percent = params.number("busy_percent", 50.0, minimum=0.0, maximum=100.0)
        self.fresh_s = params.duration("fresh_s", 15.0)
        self.pause_s = params.duration("pause_s", 1800.0)
        self.pause_times = params.number("pause_times", 3.0, minimum=1.0)
        params.done()
        self._runs: dict[str, _Run] = {}

    def on_event(self, event: Mapping[str, Any], now: float) -> Iterable[Condition]:
        run = self._runs.get(event["run"])  # times below are `now`, the partition's: hosts' clocks may differ
        if event["kind"] == "run_hardware":
            if run is not None:
                run.hosts[event["host"]] = (now, event["gpu_util_percent"])
            return ()
        if event["kind"] == "run_start":
            if run is not None:  # a rank (re)started: a resume from a checkpoint may go back in steps
                run.step, run.advanced_at = -1, max(run.advanced_at, now)
            return ()
        newest = run is not None and self._newest(run, event)
        if newest and event["kind"] == "heartbeat":
            self._phase(run, event["rank"], event.get("phase"), now)
        step = event.get("step")
        if step is None:
            return ()
        if run is None:
            self._runs[event["run"]] = _Run(event["project"], step, now)
            return ()
        if step <= run.step:
            return ()
        paused = bool(run.phases) or run.resumed_at > run.advanced_at  # that gap says nothing of the pace
        if run.phases and newest:  # stepping again: the pause is over
            self._end_pause(run, now)
        if now > run.advanced_at and not paused:
            run.gaps = (run.gaps + (now - run.advanced_at,))[-_GAPS:]
        run.step, run.advanced_at = step, max(run.advanced_at, now)
        if run.active:
            run.active = False
            return (Condition(self._subject(event["run"], run), False, now),)
        return ()

    def on_live(self, since: float) -> None:
        for run in self._runs.values():
            run.advanced_at = max(run.advanced_at, since)

    def on_tick(self, now: float) -> Iterable[Condition]:
        out: list[Condition] = []
        for name, run in self._runs.items():
            util = self._busy(run, now)
            limit = self.limit(run)
            since = max(run.advanced_at, run.paused_at if run.phases else run.resumed_at)
            if util is not None and now - since >= limit:
                run.active = True
                values = {"step": run.step, "stalled_s": now - since, "gpu_util_percent": util, "limit_s": limit}
                out.append(Condition(self._subject(name, run), True, now, values))
            elif run.active:
                run.active = False
                out.append(Condition(self._subject(name, run), False, now))
        return out

    def limit(self, run: _Run) -> float:
        """How long this run's step may stand still (module doc)."""
        if run.phases:
            past = run.pauses.get(min(run.phases.values()), ())
            return max(self.min_stall_s, self.pause_times * max(past)) if len(past) >= 2 else self.pause_s
        if len(run.gaps) < _KNOWN:
            return self.stall_s
        return max(self.min_stall_s, self.advances * median(run.gaps))

    @staticmethod
    def _newest(run: _Run, event: Mapping[str, Any]) -> bool:
        """Whether this is the newest word from its rank, on the rank's own clock. Heartbeats and metrics
        travel on different topics and a late node's arrive out of order: a stale heartbeat must not
        start or end a pause (each such 0 s pause shrank the phase's learned limit to nothing)."""
        rank, at = event["rank"], event["time"]
        if at < run.said.get(rank, at):
            return False
        run.said[rank] = at
        return True

    def _phase(self, run: _Run, rank: int, phase: str | None, at: float) -> None:
        """A rank's heartbeat said what it is doing; the run is paused while any rank is in a phase."""
        if phase is None or phase == "train":
            if run.phases.keys() == {rank}:
                self._end_pause(run, at)
            run.phases.pop(rank, None)
        else:
            if not run.phases:
                run.paused_at = at
            run.phases[rank] = phase

    @staticmethod
    def _end_pause(run: _Run, at: float) -> None:
        """Remember how long the pause took (per phase: the limit of the next one), and when it ended."""
        phase = min(run.phases.values())
        run.pauses[phase] = (run.pauses.get(phase, ()) + (max(0.0, at - run.paused_at),))[-_GAPS:]
        run.phases.clear()
        run.resumed_at = max(run.resumed_at, at)

    def _busy(self, run: _Run, now: float) -> float | None:
        """Mean GPU utilisation of the run's hosts since the step last advanced, if busy."""
        recent = [util for at, util in run.hosts.values() if at > run.advanced_at and now - at <= self.fresh_s]
        if not recent:
            return None
        util = sum(recent) / len(recent)
        return util if util >= self.busy_percent else None

    @staticmethod
    def _subject(name: str, run: _Run) -> dict[str, str]:
        return {"project": run.project, "run": name}

    def forget(self, run: str) -> None:
        self._runs.pop(run, None)
