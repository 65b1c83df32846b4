"""What a simulation is asked to do: the cluster's shape, pacing, the faults to inject and the
hazards (ordinary training events that must not page) to live through.

Validated here, once, so a bad option fails before anything is published, with a message that
names the option as the command line spells it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from trainmon.contract import HEARTBEAT_S, MAX_GPUS, MAX_TEXT_LEN, MAX_VALUES
from trainmon.errors import TrainmonError

DEFAULT_FAULT_AT_S = 10.0  # long enough for a healthy baseline (curves, best loss, first heartbeats)
CORE_VALUES = 11  # most standard values one metrics event can carry (a validation step on rank 0)


class SimulateError(TrainmonError):
    """The simulation cannot start as asked (a bad option, an unknown fault or target)."""


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """`NAME[@TARGET][:AT_SECONDS]` from the command line; the target is resolved against the cluster
    (a run or a node, optionally `/INDEX` for a rank or GPU), None picks one."""

    name: str
    target: str | None = None
    at_s: float = DEFAULT_FAULT_AT_S

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        match = re.fullmatch(r"(?P<name>[a-z_]+)(?:@(?P<target>[^:@\s]+))?(?::(?P<at>[^:]*))?", text.strip())
        if match is None:
            raise SimulateError(f"--fault {text!r}: expected NAME[@RUN_OR_NODE[/INDEX]][:AT_SECONDS]")
        at = DEFAULT_FAULT_AT_S
        if match["at"] is not None:
            try:
                at = float(match["at"])
            except ValueError:
                raise SimulateError(f"--fault {text!r}: AT_SECONDS {match['at']!r} is not a number") from None
            if not 0 <= at < math.inf:
                raise SimulateError(f"--fault {text!r}: AT_SECONDS must be >= 0")
        return cls(match["name"], match["target"], at)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulation. Times are seconds; `steps`/`duration` None means "until stopped"."""

    nodes: int = 4
    gpus: int = 4
    runs: int = 2
    world_size: int | None = None  # ranks per run; None: the cluster's GPUs split evenly between the runs
    steps: int | None = None  # per run
    duration: float | None = None
    step_interval: float = 0.05  # seconds per training step: the pacing and the logged step_time_s
    interval: float = 1.0  # system sample interval per node
    heartbeat_s: float = HEARTBEAT_S
    val_every: int = 100  # steps between validation points (rank 0 logs them)
    metrics_per_event: int = 0  # extra per-layer values in every metrics event (load generation)
    max_rate: float | None = None  # benchmark mode: unpaced steps, at most this many values/s (0: no cap)
    project: str = "simulated"
    prefix: str = "sim"  # host names <prefix>-node-NN, run ids <prefix>-<start stamp>-run-N
    seed: int = 0
    faults: tuple[FaultSpec, ...] = field(default=())
    hazards: tuple[str, ...] = ()  # names in hazards.HAZARDS, or "all"; normalised to HAZARDS order

    def __post_init__(self) -> None:
        _at_least("--nodes", self.nodes, 1)
        _at_least("--gpus", self.gpus, 1)
        if self.gpus > MAX_GPUS:
            raise SimulateError(f"--gpus {self.gpus}: at most {MAX_GPUS} GPUs per node (the event contract's limit)")
        _at_least("--runs", self.runs, 1)
        if self.world_size is not None:
            _at_least("--world-size", self.world_size, 1)
        if self.ranks_per_run * self.runs > self.nodes * self.gpus:
            raise SimulateError(f"{self.runs} runs x {self.ranks_per_run} ranks need more GPUs than "
                                f"{self.nodes} nodes x {self.gpus} GPUs have")
        if self.steps is not None:
            _at_least("--steps", self.steps, 1)
        _at_least("--val-every", self.val_every, 1)
        if not 0 <= self.metrics_per_event <= MAX_VALUES - CORE_VALUES:
            raise SimulateError(f"--metrics-per-event must be 0..{MAX_VALUES - CORE_VALUES}")
        for option, value in (("--duration", self.duration), ("--interval", self.interval),
                              ("--heartbeat", self.heartbeat_s), ("--step-interval", self.step_interval)):
            if value is not None and not 0 < value < math.inf:
                raise SimulateError(f"{option} must be a number of seconds > 0, got {value}")
        if self.max_rate is not None and not 0 <= self.max_rate < math.inf:
            raise SimulateError(f"--max-rate must be >= 0 values per second, got {self.max_rate}")
        for option, value in (("--project", self.project), ("--prefix", self.prefix)):
            if not 0 < len(value) <= MAX_TEXT_LEN // 2 or value != value.strip():
                raise SimulateError(f"{option} {value[:40]!r}: 1..{MAX_TEXT_LEN // 2} characters without edge spaces")
        if isinstance(self.hazards, str):
            raise SimulateError(f"hazards: a tuple of names, got the string {self.hazards!r}")
        from trainmon.agent.simulator.hazards import names  # here: hazards.py imports the cluster, which imports this

        object.__setattr__(self, "hazards", names(self.hazards))

    @property
    def ranks_per_run(self) -> int:
        return self.world_size or max(1, self.nodes * self.gpus // self.runs)


def _at_least(option: str, value: int, least: int) -> None:
    if type(value) is not int or value < least:
        raise SimulateError(f"{option} must be an integer >= {least}, got {value!r}")
