"""The node daemon behind `trainmon agent`: one `system` event per node per interval.

Why it is shaped this way:
- Ticks run on monotonic deadlines, the k-th at start + k * interval, so the time collection takes
  does not stretch the interval and samples do not drift. A tick that overruns skips the deadlines it
  missed (samples stay on the grid instead of bunching up) and says so once.
- Collection is measured: the GPU collector's PCIe reads wait 40 ms per GPU inside NVML, so a node
  with many GPUs can eat its interval; over half of it gets one warning naming --no-pcie.
- The run registry is read once per tick and that snapshot feeds both the event's `runs` and the
  process collector, so both describe the same moment.
- Nothing during a tick stops the loop: CollectorSet confines collector failures, the publisher is
  guarded here too, and what it has not delivered stays in its disk spool for the next start.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from trainmon.agent.collectors import CollectorSet, GpuCollector, build, names
from trainmon.agent.identity import host_name
from trainmon.contract import MAX_TEXT_LEN
from trainmon.errors import TrainmonError
from trainmon.settings import Settings

log = logging.getLogger("trainmon.agent")

ActiveProcesses = Callable[[], Mapping[int, str | None]]  # pid -> run id, as agent.registry gives
SLOW_COLLECT_FRACTION = 0.5
CLOSE_TIMEOUT_S = 5.0
MAX_LINGER_S = 0.25  # how long the publisher may hold a sample before spooling and producing it


class AgentError(TrainmonError):
    """The daemon cannot start as asked (a bad option, an unusable spool directory)."""


class Sink(Protocol):
    """What the daemon hands events to: agent.publisher.Publisher, or stdout for --once."""

    def publish(self, event: dict[str, Any]) -> bool: ...

    def close(self, timeout_s: float = ...) -> None: ...


class Clock:
    """Real time. Tests pass an object with the same three methods to run many ticks without waiting."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """Sleep up to `seconds`; True as soon as `stop` is set."""
        return stop.wait(seconds)


class Snapshot:
    """A callable read once per tick (refresh) and replayed to other readers in that tick (last)."""

    def __init__(self, read: ActiveProcesses) -> None:
        self._read = read
        self._last: Mapping[int, str | None] = {}

    def refresh(self) -> Mapping[int, str | None]:
        self._last = {}  # a failed read leaves nothing stale behind
        self._last = dict(self._read())
        return self._last

    def last(self) -> Mapping[int, str | None]:
        return self._last


@dataclass(slots=True)
class Stats:
    samples: int = 0
    skipped_ticks: int = 0
    publish_failed: int = 0
    slowest_collect_s: float = 0.0


class Daemon:
    """The tick loop. `runs_fn` is called once per tick (pid -> run id of registered training
    processes); `clock` defaults to real time."""

    def __init__(self, collectors: CollectorSet, publisher: Sink, *, host: str, interval: float,
                 runs_fn: ActiveProcesses = dict, clock: Clock | None = None,
                 close_timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        if not interval > 0:
            raise AgentError(f"interval must be > 0 seconds, got {interval}")
        self.collectors, self.publisher = collectors, publisher
        self.host, self.interval = host, interval
        self.runs_fn, self.clock = runs_fn, clock or Clock()
        self.close_timeout_s = close_timeout_s
        self.stats = Stats()
        self._warned: set[str] = set()  # one warning per kind of trouble, until it clears

    def run(self, stop: threading.Event, duration: float | None = None) -> None:
        """Tick until `stop` is set or `duration` seconds have passed, then close collectors and
        publisher. A reading taken at start is discarded, so the first sample's rates and process
        CPU cover exactly one interval."""
        clock = self.clock
        start = clock.monotonic()
        end = math.inf if duration is None else start + duration + self.interval * 1e-6
        try:
            self._active()  # the registry snapshot the process collector reads
            self.collectors.collect(start)
            k = 1
            while (deadline := start + k * self.interval) <= end:
                if clock.wait(stop, max(0.0, deadline - clock.monotonic())):
                    break
                self.tick()
                k = self._next(start, k)
        finally:
            self.close()

    def tick(self) -> None:
        """Collect, build the node's one event, hand it to the publisher; never raises."""
        now, wall = self.clock.monotonic(), self.clock.wall()
        active = self._active()
        sample = self.collectors.collect(now)
        took = self.clock.monotonic() - now
        self.stats.slowest_collect_s = max(self.stats.slowest_collect_s, took)
        if took > SLOW_COLLECT_FRACTION * self.interval:
            self._warn_once("slow", "collecting took %.0f ms, over half the %g s interval; ticks may be "
                            "skipped (GPU PCIe throughput waits 40 ms per GPU: use --no-pcie or a longer "
                            "--interval, or [agent] pcie and interval)", took * 1000, self.interval)
        sample.runs.update(run for run in active.values() if run)
        self._publish(sample.to_event(host=self.host, time=wall, interval_s=self.interval))

    def close(self) -> None:
        """Collectors first (no more readings), then the publisher, which keeps undelivered events in
        its spool for the next start."""
        self.collectors.close()
        try:
            self.publisher.close(timeout_s=self.close_timeout_s)
        except Exception:
            log.warning("publisher failed to close; undelivered events stay in its spool", exc_info=True)
        stats = getattr(self.publisher, "stats", None)
        log.info("stopped after %d samples (%d ticks skipped, %d not accepted by the publisher, slowest "
                 "collect %.0f ms)%s", self.stats.samples, self.stats.skipped_ticks, self.stats.publish_failed,
                 self.stats.slowest_collect_s * 1000,
                 "; publisher: " + " ".join(f"{k}={v}" for k, v in stats.items()) if stats else "")

    def _next(self, start: float, k: int) -> int:
        """The next tick's index: k + 1, or later if the tick just run overran deadlines."""
        late = self.clock.monotonic() - (start + (k + 1) * self.interval)
        if late <= 0:
            return k + 1
        missed = int(late // self.interval) + 1
        self.stats.skipped_ticks += missed
        self._warn_once("overrun", "a tick overran the %g s interval: skipped %d tick(s) to stay on schedule; "
                        "later overruns are only counted (see the stop line)", self.interval, missed)
        return k + 1 + missed

    def _active(self) -> Mapping[int, str | None]:
        try:
            active = self.runs_fn()
        except Exception:
            self._warn_once("registry", "reading the run registry failed; samples carry no runs until it "
                            "recovers", exc_info=True)
            return {}
        self._clear("registry", "the run registry reads again")
        return active

    def _publish(self, event: dict[str, Any]) -> None:
        try:
            accepted = self.publisher.publish(event)
        except Exception:
            log.debug("publisher raised", exc_info=True)
            accepted = False
        if accepted:
            self.stats.samples += 1
            self._clear("publish", "the publisher accepts samples again")
        else:
            self.stats.publish_failed += 1
            self._warn_once("publish", "the publisher did not accept a sample; counting until it does")

    def _warn_once(self, kind: str, message: str, *args: Any, exc_info: bool = False) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(message, *args, exc_info=exc_info)

    def _clear(self, kind: str, message: str) -> None:
        """Trouble of `kind` has cleared: say so, and warn again if it comes back."""
        if kind in self._warned:
            self._warned.discard(kind)
            log.info(message)


# --- the command ---------------------------------------------------------------------------------


class StdoutSink:
    """--once: the sample as indented JSON on stdout, nothing published."""

    def publish(self, event: dict[str, Any]) -> bool:
        print(json.dumps(event, indent=2, allow_nan=False), flush=True)
        return True

    def close(self, timeout_s: float = 0.0) -> None:
        """Nothing to release."""


def default_host() -> str:
    """The node name samples carry, by the SDK's rule so both sides name a node alike:
    $TRAINMON_HOST (e.g. the Kubernetes node name), else the hostname."""
    return host_name(os.environ)


def default_spool_dir(host: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "trainmon" / "spool" / f"agent-{re.sub(r'[^A-Za-z0-9._-]', '_', host)}"


def build_collectors(settings: Settings, *, pids: ActiveProcesses, nvml: Any = None) -> CollectorSet:
    """The collectors [agent] collectors names, from the registry, each given its options from the
    settings (the gpu collector unless [agent] gpu is off). A GPU collector that found no NVML or no GPU
    has already said why, once; it is dropped so the start line lists what really runs."""
    options: dict[str, dict[str, Any]] = {"host": {"disk_path": settings.agent_disk_path},
                                          "processes": {"pids": pids},
                                          "gpu": {"nvml": nvml, "pcie": settings.agent_pcie}}
    try:
        wanted = names(settings.agent_collectors)
    except ValueError as exc:  # Settings(...) made in code is not checked as the loader checks
        raise AgentError(f"[agent] collectors {settings.agent_collectors!r}: {exc}") from None
    if "host" in wanted and not os.path.exists(settings.agent_disk_path):
        raise AgentError(f"--disk-path ([agent] disk_path) {settings.agent_disk_path}: no such file or directory")
    if "gpu" in wanted and not settings.agent_gpu:
        wanted.remove("gpu")
        log.info("GPU collector off (--no-gpu or [agent] gpu = false)")
    collectors = build({name: options.get(name, {}) for name in wanted})
    for collector in list(collectors.collectors):
        if isinstance(collector, GpuCollector) and not collector.enabled:
            collectors.collectors.remove(collector)
    return collectors


def describe(collectors: CollectorSet, pcie: bool) -> str:
    names = [c.name if c.name != "gpu" or pcie else "gpu (no PCIe)" for c in collectors.collectors]
    return ",".join(names)


def serve(settings: Settings, *, once: bool = False, duration: float | None = None) -> int:
    """Run the daemon as the [agent] settings say until SIGTERM/SIGINT or `duration` seconds (or, once,
    take one sample and print it); exit status 0."""
    from trainmon.agent.registry import active_processes

    host = settings.agent_host or default_host()
    if len(host) > MAX_TEXT_LEN or host != host.strip():
        raise AgentError(f"--host ([agent] host) {host[:40]!r}: must be 1..{MAX_TEXT_LEN} characters without "
                         "edge spaces")
    registry = Snapshot(active_processes)
    collectors = build_collectors(settings, pids=registry.last)
    try:
        publisher, where = _sink(settings, once, host)
    except BaseException:
        collectors.close()
        raise
    interval = settings.agent_interval
    daemon = Daemon(collectors, publisher, host=host, interval=interval, runs_fn=registry.refresh)
    log.info("trainmon agent starting: host=%s interval=%gs collectors=%s %s", host, interval,
             describe(collectors, settings.agent_pcie), where)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if not stop.is_set():
            log.info("%s received: stopping at the next tick boundary", signal.Signals(signum).name)
        stop.set()

    if not once:
        _sweep_orphans_in_background(settings, stop)  # our own spool is locked by us: never swept
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        daemon.run(stop, duration=interval if once else duration)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


ORPHAN_SWEEP_S = 300.0


def _sweep_orphans_in_background(settings: Settings, stop: threading.Event) -> None:
    """Replay spools left by processes that ended (crashed one-off runs) now and every 5 minutes."""
    from trainmon.agent.orphans import replay_orphans
    from trainmon.agent.sdk import spool_root

    def sweep() -> None:
        while not stop.is_set():
            try:
                replay_orphans(settings, spool_root())
            except Exception:  # never let the sweep take the daemon down
                log.warning("orphaned spool sweep failed", exc_info=True)
            stop.wait(ORPHAN_SWEEP_S)

    threading.Thread(target=sweep, name="trainmon-orphan-sweep", daemon=True).start()


def _sink(settings: Settings, once: bool, host: str) -> tuple[Sink, str]:
    if once:
        return StdoutSink(), "output=stdout (--once: nothing published)"
    from trainmon.agent.publisher import Publisher, PublisherOptions

    spool_dir = Path(settings.agent_spool_dir or default_spool_dir(host)).expanduser()
    try:
        # One event per interval needs no 20 Hz publisher thread: waking 4 times per interval (at most
        # 4 Hz) cut the daemon's CPU from 0.42 % to 0.30 % of a core at 1 Hz (bench/agent_overhead.py).
        linger = PublisherOptions(linger_s=min(MAX_LINGER_S, settings.agent_interval / 4))
        publisher = Publisher(settings, spool_dir=spool_dir, client_id=f"trainmon-agent-{host}", options=linger)
    except TrainmonError:
        raise
    except Exception as exc:  # e.g. the spool directory cannot be created or written
        raise AgentError(f"cannot open the spool {spool_dir}: {exc}") from None
    return publisher, f"kafka={settings.bootstrap_servers} topics={settings.kafka_topic_prefix}* spool={spool_dir}"


def configure_logging() -> None:
    """INFO and above to stderr with timestamps, as systemd/journald and log shippers expect."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
