"""Named fault scenarios: one small class each, registered in FAULTS.

A fault is injected once, at its time, by changing the cluster model's state: a run's curve or value
effects, a stalled run, a silent node, a slow rank, or effects on a GPU's or node's figures. Each
says which shipped rule (stream_processors/pipeline.yml) it trips and how long that rule needs, for
`--list-faults` and docs/simulate.md. Adding one: a class here and a line in FAULTS.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from trainmon.agent.simulator import hardware
from trainmon.agent.simulator.cluster import Cluster, Node, Run
from trainmon.agent.simulator.config import FaultSpec, SimulateError
from trainmon.agent.simulator.curves import CHANCE, Overfitting, Plateau
from trainmon.agent.simulator.hardware import Figures


class Fault(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]  # one line for --list-faults
    trips: ClassVar[str]  # the shipped rule it trips, and after how long
    target: ClassVar[str]  # "run" or "node"
    index: ClassVar[str] = ""  # what /INDEX selects ("rank", "GPU"), empty: no index

    @abstractmethod
    def inject(self, subject: Any, index: int | None) -> None:
        """Change the run or node (its rank or GPU `index`, if given) from now on."""


class RunFault(Fault):
    target = "run"


class NodeFault(Fault):
    target = "node"


# --- training ----------------------------------------------------------------------------------------


def _non_finite(values: dict[str, float]) -> None:
    for name in ("loss", "val_loss", "grad_norm"):
        if name in values:
            values[name] = math.nan
    values["accuracy"] = CHANCE


class NonFinite(RunFault):
    name = "nan"
    summary = "the loss (and grad norm, validation loss) becomes NaN on every rank"
    trips = "loss_non_finite, at once"

    def inject(self, run: Run, index: int | None) -> None:
        run.effects.append(_non_finite)


class PlateauFault(RunFault):
    name = "plateau"
    summary = "training and validation loss stop improving"
    trips = "loss_plateau once the last 40 % of the run is mostly flat (10-30 s early in a run; later ~0.4 x its age)"

    def inject(self, run: Run, index: int | None) -> None:
        run.curve = Plateau.of(run.curve, run.step or 0)


class OverfittingFault(RunFault):
    name = "overfitting"
    summary = "validation loss rises while training loss falls faster (memorising)"
    trips = "overfitting at the 2nd or 3rd validation point (about 30-45 s at the defaults)"

    def inject(self, run: Run, index: int | None) -> None:
        run.curve = Overfitting.of(run.curve, run.step or 0)


def _spinning(figures: Figures, rng: random.Random) -> None:
    """A GPU stuck in a NCCL collective: fully 'utilised', drawing little power."""
    figures["util_percent"] = 100
    figures["power_w"] = round(240.0 + 10.0 * rng.gauss(0, 1), 1)


def hang(run: Run) -> None:
    """The run's step counter freezes while its processes live on and its GPUs spin."""
    if not run.stalled:
        run.stalled = True
        for rank in run.ranks:
            rank.gpu.effects.append(_spinning)


class Stall(RunFault):
    name = "stall"
    summary = "steps stop advancing; heartbeats go on and the GPUs stay busy (a hung collective)"
    trips = "run_stalled after 20 s (10 of the run's gaps between step advances, at least 20 s)"

    def inject(self, run: Run, index: int | None) -> None:
        hang(run)


class Straggler(RunFault):
    name = "straggler"
    summary = "one rank (default: the last) takes twice the step time of the others"
    trips = "straggler within about 30 s (20 s window, then for: 15s); needs 3+ ranks per run"
    index = "rank"

    def inject(self, run: Run, index: int | None) -> None:
        run.ranks[-1 if index is None else index].slow = 2.0


class DeadRank(RunFault):
    name = "dead_rank"
    summary = ("one rank's process dies (default: the last): it sends nothing, leaves its node's process "
               "list, its GPU idles, the run hangs")
    trips = ("rank_heartbeat_lost after 2 s, in a declared pause too (its process gone from 2 samples; 5 s as "
             "before when it was its run's only rank on the node); run_stalled after 20 s; gpu_idle after 45 s")
    index = "rank"

    def inject(self, run: Run, index: int | None) -> None:
        rank = run.ranks[-1 if index is None else index]
        hang(run)  # the others wait for it in their next collective
        rank.dead = True
        rank.gpu.effects.append(_idle)


# --- hardware ----------------------------------------------------------------------------------------


class DeadNode(NodeFault):
    name = "dead_node"
    summary = "the node stops sending anything; the runs on it hang on their other nodes"
    trips = "node_silent and rank_heartbeat_lost after 5 s (5 missed 1 s beats)"

    def inject(self, node: Node, index: int | None) -> None:
        node.silent = True
        for run in dict.fromkeys(rank.run for rank in node.ranks):  # placement order: deterministic
            hang(run)


def _hot(figures: Figures, rng: random.Random) -> None:
    figures["temperature_c"] = round(91.0 + abs(rng.gauss(0, 1.5)))


def _throttled(figures: Figures, rng: random.Random) -> None:
    figures["throttle_hw_slowdown"] = 1
    figures["throttle_reasons"] = int(figures["throttle_reasons"]) | 0x08  # HW slowdown (power brake, PSU)
    figures["sm_clock_mhz"] = int(figures["sm_clock_mhz"] * 0.62)


def _gpu_memory_full(figures: Figures, rng: random.Random) -> None:
    figures["mem_used_bytes"] = int(hardware.GPU_MEM_BYTES * (0.985 + 0.003 * abs(rng.gauss(0, 1))))


def _host_memory_full(figures: Figures, rng: random.Random) -> None:
    hardware.set_host_memory(figures, int(hardware.HOST_MEM_BYTES * (0.975 + 0.004 * abs(rng.gauss(0, 1)))))
    figures["swap_used_bytes"] = 6 * hardware.GIB


def _idle(figures: Figures, rng: random.Random) -> None:
    figures["util_percent"] = round(abs(rng.gauss(0, 1)))
    figures["mem_util_percent"] = 0
    figures["power_w"] = round(75.0 + 2.0 * rng.gauss(0, 1), 1)
    figures["sm_clock_mhz"] = hardware.SM_IDLE_MHZ


class GpuFault(NodeFault):
    """A fault of one GPU (default: the first a rank trains on) applied as a figures effect."""

    index = "GPU"
    effect: ClassVar[hardware.Effect]  # a staticmethod, so the instance does not bind it

    def inject(self, node: Node, index: int | None) -> None:
        node.gpus[_default_gpu(node) if index is None else index].effects.append(self.effect)


class HotGpu(GpuFault):
    name = "hot_gpu"
    summary = "one GPU runs at 90+ C"
    trips = "gpu_temperature_high after 10 s"
    effect = staticmethod(_hot)


class ThrottledGpu(GpuFault):
    name = "throttled_gpu"
    summary = "one GPU's clocks are held down by HW slowdown: throttle_hw_slowdown 1, SM clock down 38 %"
    trips = "gpu_throttled after 10 s"
    effect = staticmethod(_throttled)


class MemoryPressure(GpuFault):
    name = "memory_pressure"
    summary = "one GPU's memory above 98 % and the host's memory at 97.5 %"
    trips = "gpu_memory_high and host_memory_high after 10 s"
    effect = staticmethod(_gpu_memory_full)

    def inject(self, node: Node, index: int | None) -> None:
        super().inject(node, index)
        node.effects.append(_host_memory_full)


class IdleGpu(GpuFault):
    name = "idle_gpu"
    summary = "one GPU sits at ~0 % utilisation while its node runs a job"
    trips = "gpu_idle after 45 s"
    effect = staticmethod(_idle)


def _default_gpu(node: Node) -> int:
    """The first GPU a rank trains on, so the fault lands where a run can notice it."""
    return next((gpu.index for gpu in node.gpus if gpu.rank is not None), 0)


FAULTS: dict[str, Fault] = {fault.name: fault for fault in (
    NonFinite(), PlateauFault(), OverfittingFault(), Stall(), Straggler(), DeadRank(),
    DeadNode(), HotGpu(), ThrottledGpu(), MemoryPressure(), IdleGpu(),
)}


# --- planning -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Planned:
    """A fault bound to its subject, due `at_s` seconds after the start."""

    at_s: float
    fault: Fault
    subject: Run | Node
    index: int | None

    def inject(self) -> None:
        self.fault.inject(self.subject, self.index)

    def describe(self) -> str:
        where = self.subject.id if isinstance(self.subject, Run) else self.subject.host
        suffix = "" if self.index is None else f" {self.fault.index} {self.index}"
        return f"{self.fault.name} on {where}{suffix} at {self.at_s:g} s"


def plan(cluster: Cluster, specs: tuple[FaultSpec, ...]) -> list[Planned]:
    """Resolve every --fault against the cluster, in time order. Faults without a target are spread:
    the k-th untargeted run fault hits run k+1, the k-th node fault the k-th busy node from the end."""
    planned: list[Planned] = []
    untargeted = {"run": 0, "node": 0}
    busy_nodes = [node for node in cluster.nodes if node.ranks]
    for spec in specs:
        fault = FAULTS.get(spec.name)
        if fault is None:
            raise SimulateError(f"unknown fault {spec.name!r}; known: {', '.join(FAULTS)} (see --list-faults)")
        name, _, index_text = (spec.target or "").partition("/")
        if index_text and not fault.index:
            raise SimulateError(f"--fault {spec.name}: takes no /INDEX (target a {fault.target})")
        if index_text and not index_text.isdigit():
            raise SimulateError(f"--fault {spec.name}@{spec.target}: /INDEX must be a {fault.index} number")
        index = int(index_text) if index_text else None
        k = untargeted[fault.target]
        if fault.target == "run":
            subject: Run | Node = cluster.find_run(name) if name else cluster.runs[k % len(cluster.runs)]
            size = len(subject.ranks)
        else:
            subject = cluster.find_node(name) if name else busy_nodes[-1 - k % len(busy_nodes)]
            size = len(subject.gpus)
        untargeted[fault.target] += not name
        if index is not None and index >= size:
            raise SimulateError(f"--fault {spec.name}@{spec.target}: {fault.index} {index} out of range 0..{size - 1}")
        planned.append(Planned(spec.at_s, fault, subject, index))
    return sorted(planned, key=lambda p: p.at_s)


def describe_faults() -> str:
    """The --list-faults table."""
    width = max(map(len, FAULTS))
    lines = [f"{'FAULT':<{width}}  TARGET{'':<9}WHAT, AND WHICH SHIPPED RULE IT TRIPS"]
    for fault in FAULTS.values():
        target = f"@{fault.target.upper()}" + (f"[/{fault.index.upper()}]" if fault.index else "")
        lines.append(f"{fault.name:<{width}}  {target:<15}{fault.summary}")
        lines.append(f"{'':<{width}}  {'':<15}-> {fault.trips}")
    return "\n".join(lines)
