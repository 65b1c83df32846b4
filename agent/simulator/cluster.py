"""The simulated cluster: nodes with GPUs, runs placed on them rank by rank, and the contract events
they send (run lifecycle, heartbeats and metrics per rank, one system sample per node).

`step()` is the hot path (one metrics event per rank per step): per run it evaluates the curves once,
per rank it draws from a precomputed noise table, and the per-layer extras of wide events are
ready-made rows scaled by one number. Fault state lives on the objects here (a stalled run, a silent
node, a slow rank, effects on values and figures); faults.py sets it, this module honours it. Hazards
(hazards.py) use the same state plus step hooks and pauses (a checkpoint, an evaluation, a restart);
without hazards these cost a few attribute checks per run per step, nothing per rank.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from trainmon.agent.simulator import hardware
from trainmon.agent.simulator.config import SimConfig, SimulateError
from trainmon.agent.simulator.curves import CHANCE, LOSS_NOISE, Curve, Healthy, LearningRate, Noise, accuracy, val_noise_scale
from trainmon.agent.simulator.hardware import Effect
from trainmon.contract import envelope

ValueEffect = Callable[[dict[str, float]], None]  # edits one metrics event's values in place
StepHook = Callable[["Run", int, float], None]  # (run, step it is about to log, now): may queue a Pause
GRAD_NOISE = 0.1  # relative per-rank noise of the logged grad norm
LAYER_ROWS = 64  # precomputed per-layer jitter rows per run, used in turn
NOMINAL_HORIZON = 20_000  # learning-rate schedule length of runs without --steps
ARCHITECTURES = (("resnet50", 25_557_032, 50), ("vit-b16", 86_567_656, 12), ("convnext-t", 28_589_128, 18),
                 ("efficientnet-b4", 19_341_616, 32), ("swin-t", 28_288_354, 12))


@dataclass(eq=False, slots=True)
class Gpu:
    index: int
    uuid: str
    rank: Rank | None = None
    effects: list[Effect] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class Node:
    index: int
    host: str
    gpus: list[Gpu]
    disk_used_percent: float
    ranks: list[Rank] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    silent: bool = False  # sends nothing at all: no samples, and its ranks no events


@dataclass(eq=False, slots=True)
class Rank:
    rank: int
    local_rank: int
    node: Node
    gpu: Gpu
    run: Run
    pid: int
    slow: float = 1.0  # step time factor (a straggler is 2)
    dead: bool = False  # its process is gone (SIGKILL, OOM kill): it sends nothing more

    @property
    def silent(self) -> bool:
        return self.dead or self.node.silent


@dataclass(eq=False, slots=True)
class Pause:
    """A stretch in which the run's steps stop: a checkpoint save, an evaluation, a restart. While it
    lasts its heartbeats declare `phase` (None: none), none at all is sent for its first `quiet_s`
    (a save holding the GIL, a process restarting) and `gpu` edits its ranks' GPU figures; `end`
    adds the events it finishes with (the validation metrics, a restart's run_start)."""

    phase: str | None
    seconds: float
    quiet_s: float = 0.0
    gpu: Effect | None = None
    end: Callable[[Run, float], list[dict]] | None = None
    until: float = 0.0  # event time it ends, set when it begins
    quiet_until: float = 0.0


@dataclass(eq=False)
class Run:
    index: int
    id: str
    curve: Curve
    healthy: Healthy  # the curve it started with: accuracy is measured against its range
    lr: LearningRate
    batch_size: int
    steps_per_epoch: int
    grad_norm: float
    mem_fraction: float  # of each GPU's memory this run's ranks hold
    start: dict[str, Any]  # run_start fields shared by its ranks: config, datasets, model, code, ...
    ranks: list[Rank] = field(default_factory=list)
    layer_rows: list[list[float]] = field(default_factory=list)
    step: int | None = None  # last step logged
    stalled: bool = False  # steps stop, heartbeats go on (a hung collective)
    done: bool = False
    effects: list[ValueEffect] = field(default_factory=list)
    loss_noise: float = LOSS_NOISE  # relative per-rank noise of the loss
    grad_noise: float = GRAD_NOISE
    pause: Pause | None = None  # the pause under way: no steps until it ends
    queued: list[Pause] = field(default_factory=list)  # pauses to begin after the current step, in order


class Cluster:
    """Builds the nodes and runs of `config` (deterministic for its seed and `start`) and the events
    they send at given event times."""

    def __init__(self, config: SimConfig, start: float) -> None:
        self.config = config
        self.start = start  # event time of the first instant
        self.rng = random.Random(config.seed)
        self.noise = Noise(self.rng)
        width = max(2, len(str(config.nodes)))
        self.nodes = [Node(n, f"{config.prefix}-node-{n + 1:0{width}d}",
                           [Gpu(g, f"GPU-{uuid.UUID(int=self.rng.getrandbits(128))}") for g in range(config.gpus)],
                           disk_used_percent=round(self.rng.uniform(30, 70), 1))
                      for n in range(config.nodes)]
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(start))
        self.runs = [self._new_run(r, f"{config.prefix}-{stamp}-run-{r + 1}") for r in range(config.runs)]
        self._place()
        self.layer_names = [f"grad_norm/layer_{i:03d}" for i in range(config.metrics_per_event)]
        self._layer_cursor = 0
        self.hooks: list[StepHook] = []  # hazards' per-step hooks, called before a step's metrics
        self.inline_validation = True  # False: an evaluation pause logs the validation metrics at its end

    # --- construction -------------------------------------------------------------------------------

    def _new_run(self, index: int, run_id: str) -> Run:
        rng, config = self.rng, self.config
        arch, parameters, layers = ARCHITECTURES[index % len(ARCHITECTURES)]
        curve = Healthy(floor=rng.uniform(0.03, 0.06), fast=rng.uniform(1.0, 1.6), tau_fast=rng.uniform(200, 400),
                        slow=rng.uniform(0.5, 0.8), tau_slow=rng.uniform(2000, 4000), val_gap=rng.uniform(0.02, 0.05))
        peak = rng.choice((1e-4, 3e-4, 5e-4, 1e-3))
        lr = LearningRate(peak=peak, warmup=rng.choice((100, 200, 500)), horizon=config.steps or NOMINAL_HORIZON)
        batch = rng.choice((64, 128, 256))
        world = config.ranks_per_run
        samples = rng.choice((1_281_167, 1_000_000, 640_000))
        steps_per_epoch = max(1, samples // (batch * world))
        seed = rng.getrandbits(31)
        command = (f"torchrun --nnodes {math.ceil(world / config.gpus)} --nproc-per-node {min(world, config.gpus)} "
                   f"train.py --model {arch} --lr {peak:g} --batch-size {batch} --seed {seed}")
        start = {
            "name": f"run-{index + 1} {arch}",
            "user": "simulator",
            "tags": ["simulated", arch],
            "config": {"model": {"arch": arch, "dropout": rng.choice((0.0, 0.1, 0.2)), "layers": layers},
                       "optimizer": {"name": "adamw", "lr": peak, "weight_decay": rng.choice((0.01, 0.05, 0.1)),
                                     "betas": [0.9, 0.999]},
                       "schedule": {"kind": "cosine", "warmup_steps": lr.warmup, "horizon_steps": lr.horizon},
                       "batch_size": batch, "global_batch_size": batch * world, "precision": "bf16",
                       "seed": seed, "steps": config.steps, "val_every": config.val_every},
            "datasets": [{"name": "imagenet-1k", "version": rng.choice(("2012-v2", "2012-v3")), "split": "train",
                          "samples": samples},
                         {"name": "imagenet-1k", "version": "2012-v3", "split": "val", "samples": 50_000}],
            "model": {"class": f"timm.models.{arch}", "parameters": parameters, "trainable_parameters": parameters,
                      "layers": layers, "summary": f"{arch}: {layers} blocks, {parameters / 1e6:.1f} M parameters"},
            "code": {"commit": f"{rng.getrandbits(160):040x}", "branch": "main", "dirty": False,
                     "command": command.split()},
            "environment": {"python": "3.11.9", "platform": "Linux-5.15.0-1063-nvidia-x86_64-with-glibc2.35",
                            "packages": {"torch": "2.5.1", "timm": "1.0.11", "numpy": "2.1.3", "trainmon": "0.1.0"},
                            "cpu_model": "Intel(R) Xeon(R) Platinum 8480C", "cpu_count": hardware.HOST_CPUS,
                            "mem_total_bytes": hardware.HOST_MEM_BYTES,
                            "gpu": {"count": config.gpus, "name": hardware.GPU_NAME, "driver": "550.127.05",
                                    "cuda": "12.4", "nccl": "2.21.5"},
                            "simulated": True},
        }
        return Run(index=index, id=run_id, curve=curve, healthy=curve, lr=lr, batch_size=batch,
                   steps_per_epoch=steps_per_epoch, grad_norm=rng.uniform(2.0, 6.0),
                   mem_fraction=rng.uniform(0.7, 0.88), start=start,
                   layer_rows=self.noise.rows(LAYER_ROWS, self.config.metrics_per_event, 0.05)
                   if self.config.metrics_per_event else [])

    def _place(self) -> None:
        """Run r takes the next ranks_per_run GPUs in (node, GPU) order: a run spans whole nodes
        when the split allows, as a scheduler packing jobs would place them."""
        gpus = self.config.gpus
        slot = 0
        for run in self.runs:
            for rank in range(self.config.ranks_per_run):
                node = self.nodes[slot // gpus]
                gpu = node.gpus[slot % gpus]
                local = sum(1 for r in node.ranks if r.run is run)
                gpu.rank = placed = Rank(rank, local, node, gpu, run, pid=self.rng.randint(2_000, 4_000_000))
                node.ranks.append(placed)
                run.ranks.append(placed)
                slot += 1

    # --- lookups for fault targets ------------------------------------------------------------------

    def find_run(self, name: str) -> Run:
        for run in self.runs:
            if name == run.id or _numbered(name, "run") == run.index + 1:
                return run
        raise SimulateError(f"no run {name!r} (runs: run-1 .. run-{len(self.runs)}, or a full id such as {self.runs[0].id})")

    def find_node(self, name: str) -> Node:
        for node in self.nodes:
            if name == node.host or _numbered(name, "node") == node.index + 1:
                return node
        raise SimulateError(f"no node {name!r} (nodes: node-1 .. node-{len(self.nodes)}, or a host such as {self.nodes[0].host})")

    # --- events -------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return any(not run.done for run in self.runs)

    def run_starts(self, now: float, run: Run | None = None) -> list[dict]:
        """run_start from every rank of every run, or (a restart) from the live ranks of `run`, which
        are new processes: new pids, as the node's samples list them from now on."""
        runs = self.runs if run is None else [run]
        if run is not None:
            for r in run.ranks:  # drawn from the old pid, not self.rng: the other draws stay as they were
                r.pid = random.Random(r.pid).randint(2_000, 4_000_000)
        return [envelope("run_start", project=self.config.project, run=run.id, rank=r.rank, host=r.node.host,
                         time=now, world_size=len(run.ranks), local_rank=r.local_rank, pid=r.pid, **run.start)
                for run in runs for r in run.ranks if not r.silent]

    def step(self, now: float) -> list[dict]:
        """One training step of every run that is making progress: one metrics event per live rank;
        a run that reaches its last step ends (run_end, finished). A paused run steps again once its
        pause is over."""
        out: list[dict] = []
        noise, project, val_every, limit = self.noise, self.config.project, self.config.val_every, self.config.steps
        step_time, layers, hooks = self.config.step_interval, self.layer_names, self.hooks
        for run in self.runs:
            if run.done:
                continue
            if run.pause is not None:
                if now < run.pause.until:
                    continue
                out += self._end_pause(run, now)
                if run.pause is not None:  # the next queued pause began
                    continue
            if run.stalled:
                continue
            step = run.step = 0 if run.step is None else run.step + 1
            if hooks:
                for hook in hooks:
                    hook(run, step, now)
            curve, healthy = run.curve, run.healthy
            loss = curve.loss(step)
            acc = accuracy(loss, healthy.start, healthy.floor)
            lr = run.lr(step)
            grad = run.grad_norm * (0.4 + 0.6 * math.exp(-step / healthy.tau_fast))
            epoch = round(step / run.steps_per_epoch, 4)
            validate = step % val_every == 0 and step > 0 and self.inline_validation
            loss_noise, grad_noise = run.loss_noise, run.grad_noise
            if layers:
                row = run.layer_rows[self._layer_cursor % LAYER_ROWS]
                self._layer_cursor += 1
                extras = dict(zip(layers, [x * grad for x in row]))
            for rank in run.ranks:
                if rank.silent:
                    continue
                seconds = step_time * (1.0 + 0.02 * noise()) * rank.slow
                values = {"loss": loss * (1.0 + loss_noise * noise()),
                          "accuracy": min(1.0, max(0.0, acc + 0.01 * noise())),
                          "lr": lr, "grad_norm": grad * (1.0 + grad_noise * noise()),
                          "step_time_s": seconds, "samples_per_s": run.batch_size / seconds}
                if validate and rank.rank == 0:
                    values.update(self._validation(run, step))
                if layers:
                    values.update(extras)
                if run.effects:
                    for effect in run.effects:
                        effect(values)
                out.append(envelope("metrics", project=project, run=run.id, rank=rank.rank, host=rank.node.host,
                                    time=now, step=step, epoch=epoch, values=values))
            if limit is not None and step + 1 >= limit:
                out.extend(self.end(run, now, "finished"))
            elif run.queued:
                out += self._begin_pause(run, now)
        return out

    # --- pauses (hazards.py queues them from its step hooks) ---------------------------------------------

    def _begin_pause(self, run: Run, now: float) -> list[dict]:
        """The next queued pause starts now; a declared phase is announced at once, as the SDK does."""
        pause = run.pause = run.queued.pop(0)
        pause.until = now + pause.seconds
        pause.quiet_until = now + pause.quiet_s
        if pause.gpu is not None:
            for rank in run.ranks:
                rank.gpu.effects.append(pause.gpu)
        return self._beats(run, now, pause.phase) if pause.phase else []

    def _end_pause(self, run: Run, now: float) -> list[dict]:
        """The pause is over: its closing events, a heartbeat back in training, and the next one if queued."""
        pause, run.pause = run.pause, None
        assert pause is not None
        if pause.gpu is not None:
            for rank in run.ranks:
                rank.gpu.effects.remove(pause.gpu)
        out = pause.end(run, now) if pause.end is not None else []
        if pause.phase:
            out += self._beats(run, now, None)
        if run.queued:
            out += self._begin_pause(run, now)
        return out

    def validation(self, run: Run, step: int, now: float) -> list[dict]:
        """Rank 0's validation metrics of `step`, logged on their own (at the end of an evaluation)."""
        rank = run.ranks[0]
        if rank.silent:
            return []
        values = self._validation(run, step)
        for effect in run.effects:
            effect(values)
        return [envelope("metrics", project=self.config.project, run=run.id, rank=rank.rank, host=rank.node.host,
                         time=now, step=step, epoch=round(step / run.steps_per_epoch, 4), values=values)]

    def _validation(self, run: Run, step: int) -> dict[str, float]:
        curve, healthy = run.curve, run.healthy
        val = curve.val_loss(step) + val_noise_scale(curve, step, self.config.val_every) * self.noise()
        acc = accuracy(val - (healthy.val_loss(0) - healthy.start), healthy.start, healthy.floor)
        precision = min(1.0, acc + 0.012)
        recall = max(CHANCE, acc - 0.015)
        return {"val_loss": val, "val_accuracy": acc, "val_precision": precision, "val_recall": recall,
                "val_f1": 2 * precision * recall / (precision + recall)}

    def heartbeats(self, now: float) -> list[dict]:
        """Every live rank of every unfinished run, with its current step (frozen while stalled or
        paused) and the phase of a pause under way; none during a pause's quiet start."""
        out: list[dict] = []
        for run in self.runs:
            if run.done:
                continue
            pause = run.pause
            if pause is None:
                out += self._beats(run, now, None)
            elif now >= pause.quiet_until:
                out += self._beats(run, now, pause.phase)
        return out

    def _beats(self, run: Run, now: float, phase: str | None) -> list[dict]:
        return [envelope("heartbeat", project=self.config.project, run=run.id, rank=r.rank, host=r.node.host,
                         time=now, step=run.step, world_size=len(run.ranks), phase=phase)
                for r in run.ranks if not r.silent]

    def samples(self, now: float) -> list[dict]:
        """One system event per node that still reports, naming the runs active on it and, as the node
        daemon does, their live processes (`pid`, `run`): a dead rank's process is gone from both lists
        (a run whose last rank on the node died is no longer listed there)."""
        rng, interval = self.rng, self.config.interval
        out: list[dict] = []
        for node in self.nodes:
            if node.silent:
                continue
            active = [r for r in node.ranks if not r.run.done and not r.dead]
            figures = hardware.host_figures(rng, len(active), node.disk_used_percent)
            for effect in node.effects:
                effect(figures, rng)
            gpus = []
            for gpu in node.gpus:
                busy = gpu.rank is not None and not gpu.rank.run.done
                gpu_figures = hardware.gpu_figures(rng, busy, gpu.rank.run.mem_fraction if busy else 0.0)
                for effect in gpu.effects:
                    effect(gpu_figures, rng)
                entry: dict[str, Any] = {"index": gpu.index, "uuid": gpu.uuid, "name": hardware.GPU_NAME,
                                         "figures": gpu_figures}
                if busy and not gpu.rank.dead:
                    entry["processes"] = [{"pid": gpu.rank.pid, "mem_used_bytes": gpu_figures["mem_used_bytes"]}]
                gpus.append(entry)
            processes = [{"pid": r.pid, "run": r.run.id, "figures": hardware.process_figures(rng)} for r in active]
            runs = sorted({r.run.id for r in active})
            out.append(envelope("system", host=node.host, time=now, interval_s=interval, runs=runs or None,
                                figures=figures, processes=processes or None, gpus=gpus))
        return out

    def end(self, run: Run, now: float, status: str) -> list[dict]:
        """The run is over: run_end from each rank that can still send."""
        run.done = True
        if run.pause is not None and run.pause.gpu is not None:
            for rank in run.ranks:
                rank.gpu.effects.remove(run.pause.gpu)
        run.pause, run.queued = None, []
        return [envelope("run_end", project=self.config.project, run=run.id, rank=r.rank, host=r.node.host,
                         time=now, status=status, step=run.step)
                for r in run.ranks if not r.silent]

    def end_all(self, now: float, status: str) -> list[dict]:
        return [event for run in self.runs if not run.done for event in self.end(run, now, status)]


def _numbered(name: str, word: str) -> int | None:
    """`run-3` / `node-03` -> 3; anything else None."""
    head, _, number = name.partition("-")
    return int(number) if head == word and number.isdigit() else None
