"""Driving the simulated cluster through time.

`Schedule` says what is due when (seconds since the start): run starts at once, then steps, system
samples and heartbeats on their own grids, and faults at their times. Delivery hazards (hazards.py:
a node's clock behind, a node's events held back and released shuffled) sit between it and the
sink, so an event may be published later than its time says. Two drivers share it and differ only
in their clock:
- `generate()` jumps from one due time to the next: every event of a whole simulation at once, with
  event times from `start`; no waiting, no Kafka (tests, benchmarks that bring their own producer);
  `published()` gives the same events with the time each is published at;
- `Simulation.run()` waits for the wall clock and publishes through the agent's real Publisher, the
  way the SDK and the node daemon do; with `max_rate` it steps as fast as allowed (load generation).
Event times are wall-clock times in real runs: the processors compare them with their own clock
(heartbeat and stall rules), so a simulation cannot run faster than real time without confusing them.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from threading import Event
from typing import Any, Callable, Iterator, Protocol

from trainmon.agent.simulator.cluster import Cluster
from trainmon.agent.simulator.config import SimConfig
from trainmon.agent.simulator.faults import Planned, plan
from trainmon.agent.simulator.hazards import Delivery, install
from trainmon.settings import Settings

log = logging.getLogger("trainmon.simulate")

REPORT_EVERY_S = 5.0
HIGH_WATER_EVENTS = 5_000  # publisher queue depth past which the generator lets it catch up
BACKOFF_S = 0.002
IDLE_S = 0.005  # unpaced, with every run paused or hung: how soon to try stepping again
BENCH_LINGER_S = 0.005
CLOSE_TIMEOUT_S = 15.0


@dataclass(slots=True)
class _Timer:
    period: float
    make: Callable[[float], list[dict]]
    k: int = 0  # the next firing is due at k * period

    @property
    def due_at(self) -> float:
        return self.k * self.period

    def fired(self, elapsed: float) -> None:
        """Next grid point; when more than one period late (an overloaded real-time run), skip the
        missed ones instead of bursting to catch up, as a slow training job would."""
        self.k += 1
        if self.k * self.period + self.period <= elapsed:
            self.k = int(elapsed / self.period) + 1


class Schedule:
    """The due times of one simulation; `due()` returns the events of everything that has come due."""

    def __init__(self, cluster: Cluster, faults: list[Planned], *, paced_steps: bool = True,
                 delivery: Delivery | None = None) -> None:
        config = cluster.config
        self.cluster = cluster
        self.delivery = delivery
        self._faults = deque(faults)
        self.injected: dict[str, float] = {}  # fault (its describe()) -> wall time it was injected
        self._started = False
        steps = [_Timer(config.step_interval, cluster.step)] if paced_steps else []
        self._timers = steps + [_Timer(config.interval, cluster.samples, k=1),
                                _Timer(config.heartbeat, cluster.heartbeats, k=1)]

    def due(self, elapsed: float, now: float) -> list[dict]:
        """Everything due by `elapsed`, stamped `now`; faults first, so they shape this instant."""
        out = [] if self._started else self.cluster.run_starts(now)
        self._started = True
        while self._faults and self._faults[0].at_s <= elapsed:
            fault = self._faults.popleft()
            log.info("injecting %s", fault.describe())
            self.injected[fault.describe()] = now  # the instant this batch of events is stamped with
            fault.inject()
        for timer in self._timers:
            if timer.due_at <= elapsed:
                out += timer.make(now)
                timer.fired(elapsed)
        return out if self.delivery is None else self.delivery(out, elapsed)

    def deliver(self, events: list[dict], elapsed: float) -> list[dict]:
        """Events made outside due() (unpaced steps, the final run_end) through the delivery hazards."""
        return events if self.delivery is None else self.delivery(events, elapsed)

    def drain(self) -> list[tuple[float, dict]]:
        """Events still held back, with the elapsed time each is due to be released."""
        return [] if self.delivery is None else self.delivery.drain()

    def next_due(self) -> float:
        due = min(timer.due_at for timer in self._timers)
        if self.delivery is not None:
            due = min(due, self.delivery.next_due())
        return min(due, self._faults[0].at_s) if self._faults else due


def generate(config: SimConfig, start: float) -> Iterator[dict]:
    """Every event of the simulation in publication order, event times from `start` (Unix seconds),
    without waiting. Ends when every run has finished, or at config.duration (runs still going end
    "killed"), then what delivery hazards still hold; with neither it never ends: take what you need."""
    for _now, events in _instants(config, start):
        yield from events


def published(config: SimConfig, start: float) -> Iterator[tuple[float, dict]]:
    """generate()'s events, each with the time it is published at: its own time, except where a
    delivery hazard holds it back or a skewed clock stamps it (what a consumer's clock reads then)."""
    for now, events in _instants(config, start):
        for event in events:
            yield now, event


def _instants(config: SimConfig, start: float) -> Iterator[tuple[float, list[dict]]]:
    """(publication time, its events) for every instant at which something is published."""
    cluster = Cluster(config, start)
    faults = plan(cluster, config.faults)
    delivery, _notes = install(cluster, config.hazards)
    schedule = Schedule(cluster, faults, delivery=delivery)
    end = config.duration
    elapsed = 0.0
    while end is None or elapsed < end:
        yield start + elapsed, schedule.due(elapsed, start + elapsed)
        if not cluster.running:
            break
        elapsed = schedule.next_due()
    else:
        yield start + end, schedule.deliver(cluster.end_all(start + end, "killed"), end)
    for at, event in schedule.drain():
        yield start + at, [event]


@dataclass(slots=True)
class Tally:
    """What a simulation sent; values are training values, figures host and GPU figures."""

    events: int = 0
    values: int = 0
    figures: int = 0
    refused: int = 0  # the publisher did not take them (closing, or its queue full)
    steps: int = 0  # highest step any run reached

    def add(self, event: dict) -> None:
        self.events += 1
        kind = event["kind"]
        if kind == "metrics":
            self.values += len(event["values"])
            if event["step"] > self.steps:
                self.steps = event["step"]
        elif kind == "system":
            self.figures += len(event["figures"]) + sum(len(gpu["figures"]) for gpu in event.get("gpus") or ())


class Sink(Protocol):
    """Where events go: agent.publisher.Publisher, or anything with the same two methods."""

    def publish(self, event: dict[str, Any]) -> bool: ...

    def close(self, timeout_s: float = ...) -> None: ...


def default_spool_dir(prefix: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "trainmon" / "spool" / f"simulate-{re.sub(r'[^A-Za-z0-9._-]', '_', prefix)}"


class Simulation:
    """A simulation in real time, published through the agent's Publisher (or the given sink, which
    the caller then closes). `report` receives a progress line every 5 s."""

    def __init__(self, settings: Settings | None, config: SimConfig, *, spool_dir: Path | None = None,
                 sink: Sink | None = None, report: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.cluster = Cluster(config, time.time())
        self.faults = plan(self.cluster, config.faults)  # a bad target fails here, before anything is sent
        self.delivery, self.hazards = install(self.cluster, config.hazards)
        self.report = report
        self.tally = Tally()
        self.injected: dict[str, float] = {}  # fault (its describe()) -> wall time it was injected
        self.elapsed_s = self.cpu_s = 0.0
        self._last = (0.0, 0, 0, 0.0)  # the previous progress line: elapsed, events, values, cpu
        self._owns_sink = sink is None
        if sink is None:
            from trainmon.agent.publisher import Publisher, PublisherOptions

            if settings is None:
                raise ValueError("settings are needed to publish (or pass a sink)")
            # Unpaced, the publisher's thread should not sleep its default 50 ms between batches.
            options = PublisherOptions(linger_s=BENCH_LINGER_S) if config.max_rate is not None else None
            sink = Publisher(settings, spool_dir=spool_dir or default_spool_dir(config.prefix),
                             client_id=f"trainmon-simulate-{config.prefix}", options=options)
        self.sink = sink

    def run(self, stop: Event) -> Tally:
        """Until `stop` is set, config.duration has passed or every run has finished; runs still
        going then end "killed". Returns what was sent."""
        config, cluster = self.config, self.cluster
        paced = config.max_rate is None
        schedule = Schedule(cluster, self.faults, paced_steps=paced, delivery=self.delivery)
        self.injected = schedule.injected
        log.info("simulating %d nodes x %d GPUs, %d runs x %d ranks (%s); faults: %s; hazards: %s", config.nodes,
                 config.gpus, config.runs, config.ranks_per_run, ", ".join(run.id for run in cluster.runs),
                 "; ".join(f.describe() for f in self.faults) or "none", "; ".join(self.hazards) or "none")
        t0, cpu0 = time.monotonic(), time.process_time()
        self._last = (0.0, 0, 0, cpu0)
        try:
            while not stop.is_set():
                elapsed = time.monotonic() - t0
                if config.duration is not None and elapsed >= config.duration:
                    break
                now = time.time()
                events = schedule.due(elapsed, now)
                idle = False  # unpaced, and no run could step (all paused or hung): do not spin
                if not paced and self._rate_pause(elapsed) == 0.0:
                    stepped = cluster.step(now)
                    idle = not stepped
                    events += schedule.deliver(stepped, elapsed)
                self._publish(events)
                if not cluster.running:
                    break
                if self.report is not None and elapsed >= self._last[0] + REPORT_EVERY_S:
                    self.report(self._progress(elapsed))
                pause = schedule.next_due() - (time.monotonic() - t0)
                if not paced:
                    pause = min(pause, IDLE_S if idle else self._rate_pause(time.monotonic() - t0))
                if pause > 0:
                    stop.wait(pause)
        finally:  # what delivery hazards still hold goes now: the simulation is over
            ended = schedule.deliver(cluster.end_all(time.time(), "killed"), time.monotonic() - t0)
            self._publish(ended + [event for _at, event in schedule.drain()])
            self.elapsed_s = time.monotonic() - t0
            self.cpu_s = time.process_time() - cpu0
            if self._owns_sink:
                self.sink.close(timeout_s=CLOSE_TIMEOUT_S)
        return self.tally

    def _rate_pause(self, elapsed: float) -> float:
        """Benchmark mode: how long to wait before the next step to stay within max_rate values/s."""
        rate = self.config.max_rate
        if not rate:
            return 0.0
        return max(0.0, (self.tally.values - rate * elapsed) / rate)

    def _publish(self, events: list[dict]) -> None:
        """Hand events over. Past HIGH_WATER_EVENTS queued, wait until the publisher has taken them
        all: it spools and produces only once its queue is empty, so a generator that kept topping
        the queue up would hold everything in memory and deliver nothing until the end."""
        stats = getattr(self.sink, "stats", None)
        if stats is not None and stats["queued"] > HIGH_WATER_EVENTS:
            while self.sink.stats["queued"]:  # type: ignore[attr-defined]
                time.sleep(BACKOFF_S)
        publish, tally = self.sink.publish, self.tally
        for event in events:
            tally.add(event)
            if not publish(event):
                tally.refused += 1

    def _progress(self, elapsed: float) -> str:
        """One progress line: rates over the last report interval."""
        then, events, values, cpu = self._last
        span = max(1e-9, elapsed - then)
        cpu_now = time.process_time()
        self._last = (elapsed, self.tally.events, self.tally.values, cpu_now)
        stats = getattr(self.sink, "stats", {})
        sink = f"  delivered {stats['delivered']:,} spooled {stats['spooled_events']:,}" if stats else ""
        return (f"simulate: {elapsed:5.0f} s  step {self.tally.steps:,}  {(self.tally.events - events) / span:,.0f} events/s  "
                f"{(self.tally.values - values) / span:,.0f} values/s  cpu {100 * (cpu_now - cpu) / span:.0f} %{sink}")

    def summary(self) -> str:
        """The closing line: totals and mean rates over the whole run."""
        tally, span = self.tally, max(1e-9, self.elapsed_s)
        stats = getattr(self.sink, "stats", {})
        sink = "; publisher: " + " ".join(f"{k}={v:,}" for k, v in stats.items()) if stats else ""
        return (f"simulate: {span:.1f} s, {tally.events:,} events ({tally.events / span:,.0f}/s), {tally.values:,} "
                f"metric values ({tally.values / span:,.0f}/s), {tally.figures:,} system figures, cpu "
                f"{100 * self.cpu_s / span:.0f} % of a core, refused {tally.refused:,}{sink}")


def serve(settings: Settings, config: SimConfig, *, spool_dir: Path | None = None, rate_report: bool = False,
          progress: Callable[[str], None] = print) -> Simulation:
    """`trainmon simulate`: run until SIGINT/SIGTERM, --duration or the runs' end; then say what was sent."""
    import signal

    simulation = Simulation(settings, config, spool_dir=spool_dir, report=progress if rate_report else None)
    stop = Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if not stop.is_set():
            log.info("%s received: ending the runs", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        simulation.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    progress(simulation.summary())
    return simulation
