"""stalled: the run's step has not advanced for `stall_s` while its GPUs are busy (a NCCL hang).

A hung collective keeps every GPU at 100 % and the step counter frozen, and the processes alive, so
neither heartbeat_lost nor idle_gpu notices it. The run's step is the highest step any rank reported
in metrics or heartbeat events. Busyness comes from `run_hardware` events, which the processors
derive from system samples and key by run (not part of the public contract):

    {"kind": "run_hardware", "run": str, "host": str, "time": float,
     "gpu_util_percent": float (mean over the node's GPUs), "gpus": int}

The run counts as busy when the mean, over its hosts, of each host's latest `gpu_util_percent` taken
after the step last advanced is at least `busy_percent`. Checked on each tick; clears when the step
advances or the GPUs go quiet.

| param | default | meaning |
|---|---|---|
| `stall_s` | `300` | how long the step may stand still |
| `busy_percent` | `50` | mean GPU utilisation that counts as busy |

No selector. Subject: project, run. Values: `step`, `stalled_s`, `gpu_util_percent`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping

from stream_processors.rules.base import Condition, Rule, RuleSpec
from stream_processors.rules.params import Params


@dataclass
class _Run:
    project: str
    step: int
    advanced_at: float  # event time the step last went up
    hosts: dict[str, tuple[float, float]] = field(default_factory=dict)  # host -> (time, util %)
    active: bool = False


class Stalled(Rule):
    kind: ClassVar[str] = "stalled"
    consumes: ClassVar[frozenset[str]] = frozenset({"metrics", "heartbeat", "run_hardware"})

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        Params(spec.selector, "selector.").done()
        params = Params(spec.params)
        self.stall_s = params.duration("stall_s", 300.0)
        self.busy_percent = params.number("busy_percent", 50.0, minimum=0.0, maximum=100.0)
        params.done()
        self._runs: dict[str, _Run] = {}

    def on_event(self, event: Mapping[str, Any]) -> Iterable[Condition]:
        run = self._runs.get(event["run"])
        if event["kind"] == "run_hardware":
            if run is not None:
                run.hosts[event["host"]] = (event["time"], event["gpu_util_percent"])
            return ()
        step = event.get("step")
        if step is None:
            return ()
        if run is None:
            self._runs[event["run"]] = _Run(event["project"], step, event["time"])
            return ()
        if step <= run.step:
            return ()
        run.step, run.advanced_at = step, event["time"]
        if run.active:
            run.active = False
            return (Condition(self._subject(event["run"], run), False, event["time"]),)
        return ()

    def on_tick(self, now: float) -> Iterable[Condition]:
        out: list[Condition] = []
        for name, run in self._runs.items():
            util = self._busy(run)
            stalled = util is not None and now - run.advanced_at >= self.stall_s
            if stalled:
                run.active = True
                values = {"step": run.step, "stalled_s": now - run.advanced_at, "gpu_util_percent": util}
                out.append(Condition(self._subject(name, run), True, now, values))
            elif run.active:
                run.active = False
                out.append(Condition(self._subject(name, run), False, now))
        return out

    def _busy(self, run: _Run) -> float | None:
        """Mean GPU utilisation of the run's hosts since the step last advanced, if busy."""
        recent = [util for at, util in run.hosts.values() if at > run.advanced_at]
        if not recent:
            return None
        util = sum(recent) / len(recent)
        return util if util >= self.busy_percent else None

    @staticmethod
    def _subject(name: str, run: _Run) -> dict[str, str]:
        return {"project": run.project, "run": name}

    def forget(self, run: str) -> None:
        self._runs.pop(run, None)
