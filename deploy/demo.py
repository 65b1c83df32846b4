"""`trainmon demo` (what `make demo` runs): the whole local stack with live data, until Ctrl-C.

Starts Kafka, ClickHouse and Alertmanager (unless already running), creates the topics, migrates,
then runs a processors worker, the dashboard, this machine's node daemon, a simulated cluster with a
few faults, and a real two-rank Keras training job that trainmon's alerts can stop
(examples/train_digits_keras.py). Ctrl-C stops everything it started, by PID, in reverse order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

from trainmon.settings import Settings, environment

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FAULTS = ("nan", "hot_gpu", "straggler", "stall", "dead_node")


class Children:
    """Processes this command started, stopped by PID in reverse order (SIGTERM, then SIGKILL)."""

    def __init__(self, settings: Settings, logs: Path, progress: Callable[[str], None]) -> None:
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.env.update(environment(settings))
        self.logs, self.progress = logs, progress
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], **env: str) -> subprocess.Popen:
        log = self.logs / f"{name}.log"
        process = subprocess.Popen(argv, cwd=ROOT, env={**self.env, **env}, stdin=subprocess.DEVNULL,
                                   stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append((name, process))
        self.progress(f"demo: started {name} (pid {process.pid}, log {log})")
        return process

    def exited(self) -> list[tuple[str, int]]:
        return [(name, p.returncode) for name, p in self.started if p.poll() is not None]

    def stop_all(self) -> None:
        for name, process in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, process in reversed(self.started):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.progress(f"demo: {name} (pid {process.pid}) ignored SIGTERM; killing it")
                process.kill()
                process.wait(5)
            self.progress(f"demo: stopped {name}")


def run(settings: Settings, *, nodes: int = 8, gpus: int = 8, faults: tuple[str, ...] = DEFAULT_FAULTS,
        epochs: int = 300, progress: Callable[[str], None] = print) -> int:
    from trainmon.deploy import services
    from trainmon.deploy.migrate import migrate
    from trainmon.deploy.topics import create_topics

    logs = settings.home / "demo"
    logs.mkdir(parents=True, exist_ok=True)
    already = {s.name for s in services.status_all(settings) if s.pid is not None}
    services.start_all(settings, progress=progress)
    create_topics(settings, progress=progress)
    migrate(settings, progress=progress)
    cli = [sys.executable, "-m", "trainmon.cli"]
    children = Children(settings, logs, progress)
    stop = {"now": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["now"] = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        children.start("processors", [*cli, "process"])
        children.start("dashboard", [*cli, "dashboard"])
        children.start("node-daemon", [*cli, "agent", "--interval", "1"])
        simulate = [*cli, "simulate", "--nodes", str(nodes), "--gpus", str(gpus), "--runs", "3",
                    "--duration", "86400"]
        for index, fault in enumerate(faults):
            simulate += ["--fault", f"{fault}:{20 + 10 * index}"]
        children.start("simulated-cluster", simulate)
        run_id = f"digits-keras-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        for rank in (0, 1):
            job = [sys.executable, "examples/train_digits_keras.py", "--epochs", str(epochs)]
            children.start(f"training-rank{rank}", job,
                           RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", TRAINMON_RUN_ID=run_id)
        url = f"http://{settings.dashboard_address}:{settings.dashboard_port}"
        progress(f"\ntrainmon demo is running.\n  dashboard: {url}\n  training run: demo/{run_id} (2 ranks)\n"
                 f"  simulated cluster: {nodes} nodes x {gpus} GPUs, faults: {', '.join(faults)}\n"
                 f"  logs: {logs}\nAlerts fire within about a minute. Press Ctrl-C to stop everything.\n")
        reported: set[str] = set()
        while not stop["now"]:
            for name, code in children.exited():
                if name not in reported:
                    reported.add(name)
                    level = "finished" if code == 0 else f"exited with {code}; see its log"
                    progress(f"demo: {name} {level}")
            time.sleep(0.5)
    finally:
        progress("demo: stopping...")
        children.stop_all()
        started_here = [name for name in services.SERVICES if name not in already]
        services.stop_all(settings, started_here, progress=progress)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
