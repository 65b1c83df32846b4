"""What a simulation is asked to do: the cluster's shape, pacing, the faults to inject and the
hazards (ordinary training events that must not page) to live through.

Validated here, once, so a bad option fails before anything is published, with a message that
names the option as the command line spells it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields

from trainmon.contract import MAX_GPUS, MAX_TEXT_LEN, MAX_VALUES
from trainmon.errors import TrainmonError
from trainmon.settings import Settings

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


_DEFAULT = Settings()


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulation. Each field but faults and hazards is the [simulate] setting of its name, which
    declares its meaning and default (trainmon/settings.py); from_settings() takes them all from there.
    Times are seconds; None is unset, e.g. `steps`/`duration` None means "until stopped"."""

    nodes: int = _DEFAULT.simulate_nodes
    gpus: int = _DEFAULT.simulate_gpus
    runs: int = _DEFAULT.simulate_runs
    world_size: int | None = _DEFAULT.simulate_world_size
    steps: int | None = _DEFAULT.simulate_steps
    duration: float | None = _DEFAULT.simulate_duration
    step_interval: float = _DEFAULT.simulate_step_interval
    interval: float = _DEFAULT.simulate_interval
    heartbeat: float = _DEFAULT.simulate_heartbeat
    val_every: int = _DEFAULT.simulate_val_every
    metrics_per_event: int = _DEFAULT.simulate_metrics_per_event
    max_rate: float | None = _DEFAULT.simulate_max_rate
    project: str = _DEFAULT.simulate_project
    prefix: str = _DEFAULT.simulate_prefix
    seed: int = _DEFAULT.simulate_seed
    faults: tuple[FaultSpec, ...] = field(default=())
    hazards: tuple[str, ...] = ()  # names in hazards.HAZARDS, or "all"; normalised to HAZARDS order

    @classmethod
    def from_settings(cls, settings: Settings, *, faults: tuple[FaultSpec, ...] = (),
                      hazards: tuple[str, ...] = ()) -> SimConfig:
        """The [simulate] settings (defaults, file, environment, flags) with what only a command line gives."""
        taken = {f.name: getattr(settings, f"simulate_{f.name}") for f in fields(cls)
                 if f.name not in ("faults", "hazards")}
        return cls(**taken, faults=faults, hazards=hazards)

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
                              ("--heartbeat", self.heartbeat), ("--step-interval", self.step_interval)):
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
