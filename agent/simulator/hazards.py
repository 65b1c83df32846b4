"""Named hazards: the ordinary things healthy training does that a careless rule would page on.

Faults (faults.py) are what the rules must catch; hazards are what they must sit through: checkpoint
and evaluation pauses, warm-up spikes, noisy losses, resumes from a checkpoint, late and out-of-order
delivery, a node clock minutes behind. With hazards on, a clean run is hard to stay quiet on, so
"no false pages" means something (tests/unit/test_simulate_hazards.py). One small class each,
registered in HAZARDS; `--hazard NAME` (repeatable, or `all`) turns them on for every run.

A hazard is installed once, before the first event: it adds a step hook to the cluster (which may
queue a Pause after the step: cluster.py), changes run state, or tells the Delivery (between the
cluster and the sink, in the runner) to shift or hold a node's events. Each draws from its own
random stream seeded by the simulation's seed and its name, so the events are deterministic for a
seed. Without hazards nothing here runs.
"""

from __future__ import annotations

import heapq
import math
import random
from abc import ABC, abstractmethod
from functools import partial
from typing import ClassVar, Iterable

from trainmon.agent.simulator.cluster import Cluster, Node, Pause, Run
from trainmon.agent.simulator.config import SimulateError
from trainmon.agent.simulator.hardware import Figures

CHECKPOINT_EVERY = (540, 660)  # steps between checkpoints, drawn once per run (~600)
CHECKPOINT_S = (6.0, 10.0)  # seconds per save (~8)
GIL_S = (2.5, 3.5)  # no heartbeat for this long at the start of a save (~3): the save holds the GIL
EVAL_S = (10.0, 14.0)  # seconds per evaluation (~12)
WARMUP_STEPS = 40  # warm-up spikes fall in steps 1..39
WARMUP_SPIKES = (2, 4)  # how many per run
SPIKE_FACTOR = (3.0, 10.0)
LOSS_NOISE_TIMES, GRAD_NOISE_TIMES = 4.0, 3.0
NOISE_CLIP = 3.3  # standard deviations: no draw a spike, and grad_norm stays > 0 at 3x noise
RESUME_BACK = (150, 250)  # steps a resume goes back (~200)
RESUME_S = (1.5, 2.5)  # silence while the ranks restart: heartbeat_lost allows 5 missed 1 s beats
RESUME_HORIZON_S = 1800.0  # a run's nominal length without --steps or --duration
LATE_S = (2.0, 4.0)  # delivery delay of the late node's events, drawn per event
SKEW_S = -90.0  # the skewed node's clock


class Hazard(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]  # one line for --list-hazards
    tests: ClassVar[str]  # the shipped rules it puts to the test

    @abstractmethod
    def install(self, cluster: Cluster, rng: random.Random, delivery: Delivery) -> str:
        """Set it up for the whole simulation; returns what was drawn (for the log)."""


# --- pauses ------------------------------------------------------------------------------------------


def _saving(figures: Figures, rng: random.Random) -> None:
    """Writing a checkpoint: the GPU waits on the disk."""
    figures["util_percent"] = min(figures["util_percent"], round(rng.uniform(5, 15)))
    figures["mem_util_percent"] = min(figures["mem_util_percent"], round(rng.uniform(0, 3)))
    figures["power_w"] = min(figures["power_w"], round(rng.uniform(110, 160), 1))


def _evaluating(figures: Figures, rng: random.Random) -> None:
    """Forward passes only: busy, a little less than training."""
    figures["util_percent"] = min(figures["util_percent"], round(rng.uniform(86, 94)))
    figures["power_w"] = min(figures["power_w"], round(rng.uniform(430, 520), 1))


def _restarting(figures: Figures, rng: random.Random) -> None:
    """No process on the GPU for a moment."""
    figures["util_percent"] = 0
    figures["mem_util_percent"] = 0
    figures["power_w"] = min(figures["power_w"], round(rng.uniform(72, 80), 1))


class Checkpoint(Hazard):
    name = "checkpoint"
    summary = ("every ~600 steps (per run) a ~8 s save in phase checkpoint: steps stop, GPU util 5-15 %, "
               "no heartbeat for its first ~3 s (the save holds the GIL)")
    tests = "run_stalled, rank_heartbeat_lost, gpu_idle"

    def install(self, cluster: Cluster, rng: random.Random, delivery: Delivery) -> str:
        every = {run.index: rng.randint(*CHECKPOINT_EVERY) for run in cluster.runs}

        def hook(run: Run, step: int, now: float) -> None:
            if step and step % every[run.index] == 0:
                seconds = rng.uniform(*CHECKPOINT_S)
                run.queued.append(Pause("checkpoint", seconds, quiet_s=min(seconds, rng.uniform(*GIL_S)),
                                        gpu=_saving))

        cluster.hooks.append(hook)
        return "every " + ", ".join(f"{every[run.index]}" for run in cluster.runs) + " steps"


class Eval(Hazard):
    name = "eval"
    summary = ("at every validation point a ~12 s pause in phase eval: steps stop, GPUs stay busy (~90 %), "
               "the validation metrics come at its end")
    tests = "run_stalled (frozen step, busy GPUs), rank_heartbeat_lost, overfitting"

    def install(self, cluster: Cluster, rng: random.Random, delivery: Delivery) -> str:
        every = cluster.config.val_every
        cluster.inline_validation = False

        def hook(run: Run, step: int, now: float) -> None:
            if step and step % every == 0:
                run.queued.append(Pause("eval", rng.uniform(*EVAL_S), gpu=_evaluating,
                                        end=partial(_validated, cluster, step)))

        cluster.hooks.append(hook)
        return f"every {every} steps"


def _validated(cluster: Cluster, step: int, run: Run, now: float) -> list[dict]:
    return cluster.validation(run, step, now)


# --- values ------------------------------------------------------------------------------------------


def _spike(factor: float, values: dict[str, float]) -> None:
    values["loss"] *= factor
    values["grad_norm"] *= factor


class WarmupSpikes(Hazard):
    name = "warmup_spikes"
    summary = "2-4 of each run's first 40 steps log a loss and grad_norm 3-10x too high, on every rank"
    tests = "loss_spike (judges nothing before 50 values), loss_plateau, overfitting"

    def install(self, cluster: Cluster, rng: random.Random, delivery: Delivery) -> str:
        spikes = {run.index: {step: rng.uniform(*SPIKE_FACTOR)
                              for step in sorted(rng.sample(range(1, WARMUP_STEPS), rng.randint(*WARMUP_SPIKES)))}
                  for run in cluster.runs}
        active: dict[int, partial[None]] = {}  # run -> its spike effect on the step just logged

        def hook(run: Run, step: int, now: float) -> None:
            effect = active.pop(run.index, None)
            if effect is not None:
                run.effects.remove(effect)
            factor = spikes[run.index].pop(step, None)  # once: a resume does not repeat them
            if factor is not None:
                run.effects.append(active.setdefault(run.index, partial(_spike, factor)))

        cluster.hooks.append(hook)
        return "; ".join(f"run-{i + 1} steps {', '.join(map(str, s))}" for i, s in spikes.items())


class NoisyLoss(Hazard):
    name = "noisy_loss"
    summary = (f"per-step loss noise {LOSS_NOISE_TIMES:g}x the default, grad_norm noise {GRAD_NOISE_TIMES:g}x "
               f"(no draw beyond {NOISE_CLIP:g} sigma: noise, never a real spike)")
    tests = "loss_spike, loss_plateau, overfitting"

    def install(self, cluster: Cluster, rng: random.Random, delivery: Delivery) -> str:
        cluster.noise.clip(NOISE_CLIP)
        for run in cluster.runs:
            run.loss_noise *= LOSS_NOISE_TIMES
            run.grad_noise *= GRAD_NOISE_TIMES
        run = cluster.runs[0]
        return f"loss {100 * run.loss_noise:g} %, grad_norm {100 * run.grad_noise:g} %"


# --- lifecycle ---------------------------------------------------------------------------------------


def _resumed(cluster: Cluster, back: int, run: Run, now: float) -> list[dict]:
    """Back from the checkpoint `back` steps before the last step logged: run_start from every rank."""
    resumed = (run.step or 0) - back
    run.step = resumed if resumed >= 0 else None  # the next step logged is the one after it
    return cluster.run_starts(now, run)


class Resume(Hazard):
    name = "resume"
    summary = ("once per run, in the middle third of its length, the ranks restart from a checkpoint "
               "~200 steps back: 1.5-2.5 s of silence, run_start again (same run id), the step goes back")
    tests = "run_stalled, rank_heartbeat_lost, loss_spike, loss_plateau, overfitting, straggler"

    def install(self, cluster: Cluster, rng: random.Random, delivery: Delivery) -> str:
        config = cluster.config
        by_steps = config.steps is not None and config.duration is None
        if by_steps:
            assert config.steps is not None
            due = {run.index: float(rng.randint(config.steps // 3, 2 * config.steps // 3)) for run in cluster.runs}
        else:
            horizon = config.duration or RESUME_HORIZON_S
            due = {run.index: cluster.start + rng.uniform(horizon / 3, 2 * horizon / 3) for run in cluster.runs}
        pending = dict(due)

        def hook(run: Run, step: int, now: float) -> None:
            at = pending.get(run.index)
            if at is not None and (step if by_steps else now) >= at:
                del pending[run.index]
                seconds = rng.uniform(*RESUME_S)
                run.queued.append(Pause(None, seconds, quiet_s=seconds, gpu=_restarting,
                                        end=partial(_resumed, cluster, rng.randint(*RESUME_BACK))))

        cluster.hooks.append(hook)
        if by_steps:
            return "at step " + ", ".join(f"{due[run.index]:.0f}" for run in cluster.runs)
        return "at " + ", ".join(f"{due[run.index] - cluster.start:.0f} s" for run in cluster.runs)


# --- delivery ----------------------------------------------------------------------------------------


class Delivery:
    """Between the cluster and the sink: a node whose clock is off (its events' times shifted) and a
    node whose events are held back, each for its own random delay, so they are published late and
    out of order. The runner calls it with every instant's events and `elapsed`, the simulation's
    time then, and publishes what it returns."""

    def __init__(self) -> None:
        self.skew: dict[str, float] = {}  # host -> seconds added to its events' times
        self.late: dict[str, tuple[random.Random, float, float]] = {}  # host -> (rng, least, most delay)
        self._held: list[tuple[float, int, dict]] = []  # heap of (release elapsed, order, event)
        self._order = 0

    @property
    def active(self) -> bool:
        return bool(self.skew or self.late)

    def __call__(self, events: list[dict], elapsed: float) -> list[dict]:
        skew, late = self.skew, self.late
        if skew:
            for event in events:
                shift = skew.get(event["host"])
                if shift is not None:
                    event["time"] += shift
        if late:
            now: list[dict] = []
            for event in events:
                delay = late.get(event["host"])
                if delay is None:
                    now.append(event)
                else:
                    rng, least, most = delay
                    self._order += 1
                    heapq.heappush(self._held, (elapsed + rng.uniform(least, most), self._order, event))
            events = now
        if self._held and self._held[0][0] <= elapsed:
            events += self.release(elapsed)
        return events

    def release(self, elapsed: float) -> list[dict]:
        """Held events due by `elapsed`, in the order of their release."""
        out: list[dict] = []
        held = self._held
        while held and held[0][0] <= elapsed:
            out.append(heapq.heappop(held)[2])
        return out

    def next_due(self) -> float:
        return self._held[0][0] if self._held else math.inf

    def drain(self) -> list[tuple[float, dict]]:
        """Everything still held, with its release time (the simulation is over)."""
        out = [(at, event) for at, _, event in sorted(self._held)]
        self._held.clear()
        return out


def _busy_nodes(cluster: Cluster) -> list[Node]:
    return [node for node in cluster.nodes if node.ranks]


class LateDelivery(Hazard):
    name = "late_delivery"
    summary = (f"one busy node's events (its samples and its ranks') are published {LATE_S[0]:g}-{LATE_S[1]:g} s "
               "late, each with its own delay, so out of order")
    tests = "rank_heartbeat_lost, node_silent, run_stalled, straggler"

    def install(self, cluster: Cluster, rng: random.Random, delivery: Delivery) -> str:
        node = rng.choice(_busy_nodes(cluster))
        delivery.late[node.host] = (rng, *LATE_S)
        return node.host


class SkewedClock(Hazard):
    name = "skewed_clock"
    summary = (f"one busy node's clock is {-SKEW_S:g} s behind: every event it or its ranks send carries that "
               "time (published on time; another node than late_delivery's where there is one)")
    tests = "rank_heartbeat_lost, node_silent, run_stalled (read time), straggler, hardware rules' for (event time)"

    def install(self, cluster: Cluster, rng: random.Random, delivery: Delivery) -> str:
        nodes = [node for node in _busy_nodes(cluster) if node.host not in delivery.late] or _busy_nodes(cluster)
        node = rng.choice(nodes)
        delivery.skew[node.host] = SKEW_S
        return f"{node.host} {SKEW_S:+g} s"


HAZARDS: dict[str, Hazard] = {hazard.name: hazard for hazard in (
    Checkpoint(), Eval(), WarmupSpikes(), NoisyLoss(), Resume(), LateDelivery(), SkewedClock(),
)}
ALL = "all"


def names(requested: Iterable[str]) -> tuple[str, ...]:
    """The hazards asked for (`all`: every one), in HAZARDS order without repeats; SimulateError
    naming the known ones for anything else."""
    requested = tuple(requested)
    for name in requested:
        if name != ALL and name not in HAZARDS:
            raise SimulateError(f"unknown hazard {name!r}; known: {', '.join(HAZARDS)} (or {ALL}; see --list-hazards)")
    return tuple(HAZARDS) if ALL in requested else tuple(name for name in HAZARDS if name in requested)


def install(cluster: Cluster, requested: Iterable[str]) -> tuple[Delivery | None, list[str]]:
    """Set the hazards up on a new cluster; returns the delivery stage (None: events go straight to
    the sink) and a note per hazard for the log."""
    delivery = Delivery()
    notes = []
    for name in names(requested):
        rng = random.Random(f"{cluster.config.seed}:{name}")  # str seeds hash with SHA-512: stable across runs
        notes.append(f"{name} ({HAZARDS[name].install(cluster, rng, delivery)})")
    return (delivery if delivery.active else None), notes


def describe_hazards() -> str:
    """The --list-hazards table."""
    width = max(map(len, HAZARDS))
    lines = [f"{'HAZARD':<{width}}  WHAT HAPPENS, AND WHICH SHIPPED RULES IT PUTS TO THE TEST"]
    for hazard in HAZARDS.values():
        lines.append(f"{hazard.name:<{width}}  {hazard.summary}")
        lines.append(f"{'':<{width}}  -> {hazard.tests}")
    return "\n".join(lines)
