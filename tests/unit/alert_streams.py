"""Building blocks for the alert rule tests: contract events, rule specs, and a driver that feeds an
Engine with explicit time and checks every alert it emits against the contract."""

from __future__ import annotations

import copy
from typing import Any

from trainmon.stream_processors.alerts import AlertBook
from trainmon.stream_processors.engine import Engine
from trainmon.stream_processors.rules import build_rule
from trainmon.stream_processors.rules.base import RuleSpec
from trainmon.contract import envelope, validate

T0 = 1_764_230_400.0  # 2025-11-27 08:00 UTC


def spec(kind: str, name: str = "", *, severity: str = "warning", for_s: float = 0.0,
         selector: dict | None = None, params: dict | None = None, labels: dict | None = None,
         annotations: dict | None = None) -> RuleSpec:
    return RuleSpec(name=name or kind, kind=kind, severity=severity, selector=selector or {},
                    params=params or {}, for_s=for_s, labels=labels or {}, annotations=annotations or {})


def metrics(step: int, t: float, run: str = "r1", rank: int = 0, *, project: str = "p", host: str = "node-1",
            epoch: float | None = None, **values: Any) -> dict:
    """A decoded metrics event; pass "NaN"/"Infinity" strings for non-finite values, as on the wire."""
    return validate(envelope("metrics", project=project, run=run, rank=rank, host=host, time=t, step=step,
                             epoch=epoch, values=values))


def heartbeat(t: float, run: str = "r1", rank: int = 0, *, step: int | None = None, host: str = "node-1",
              phase: str | None = None) -> dict:
    return validate(envelope("heartbeat", project="p", run=run, rank=rank, host=host, time=t, step=step,
                             **({"phase": phase} if phase else {})))


def run_end(t: float, run: str = "r1", rank: int = 0) -> dict:
    return validate(envelope("run_end", project="p", run=run, rank=rank, host="node-1", time=t, status="finished"))


def gpu(index: int, error: str | None = None, **figures: float) -> dict:
    entry = {"index": index, "uuid": f"GPU-{index:04d}", "figures": figures}
    if error:
        entry["error"] = error
    return entry


def system(t: float, host: str = "node-1", *, runs: list[str] | None = None, gpus: list[dict] | None = None,
           **figures: float) -> dict:
    return validate(envelope("system", host=host, time=t, runs=runs, gpus=gpus, figures=figures))


def run_hardware(t: float, run: str = "r1", host: str = "node-1", util: float = 97.0, gpus: int = 8) -> dict:
    """The processors' internal per-run GPU busyness summary (not a contract kind)."""
    return {"kind": "run_hardware", "run": run, "host": host, "time": t, "gpu_util_percent": util, "gpus": gpus}


class Driver:
    """An engine over the given specs; `now` follows event time unless ticked further."""

    def __init__(self, *specs: RuleSpec, repeat_interval_s: float = 3600.0) -> None:
        self.book = AlertBook(repeat_interval_s=repeat_interval_s)
        self.engine = Engine([build_rule(s) for s in specs], self.book)
        self.alerts: list[dict] = []

    def _keep(self, alerts: list[dict]) -> list[dict]:
        for alert in alerts:
            validate(copy.deepcopy(alert))  # every alert is a valid contract event
        self.alerts.extend(alerts)
        return alerts

    def send(self, *events: dict, now: float | None = None) -> list[dict]:
        out: list[dict] = []
        for event in events:
            out += self._keep(self.engine.on_event(event, event["time"] if now is None else now))
        return out

    def tick(self, now: float, live: bool = True) -> list[dict]:
        return self._keep(self.engine.on_tick(now, live))

    def states(self) -> list[tuple[str, str]]:
        """(rule, state) of every alert so far, in order."""
        return [(a["rule"], a["state"]) for a in self.alerts]
