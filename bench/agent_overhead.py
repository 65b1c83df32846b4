"""CPU (% of one core) and memory of `trainmon agent` sampling at 1 Hz. Goal: < 1 % of a core, < 80 MB RSS.

Starts `trainmon agent --interval 1 --duration SECONDS` as a subprocess with its own spool directory and
reads its /proc/<pid>/stat (utime + stime, every thread of the process, librdkafka's included) and RSS
every half second while it samples. Two CPU figures: `cpu_pct` from the end of the warm-up (interpreter
start, imports, collector set-up) to SECONDS after launch, which is what a node pays all day, and
`cpu_pct_incl_startup` from launch to the same point. RSS (MB = 10^6 bytes): peak (VmHWM) and final.

Kafka: --bootstrap, else the settings (config file, TRAINMON_KAFKA_BOOTSTRAP_SERVERS, local broker). If no
broker answers there, the agent's publisher spools every sample to disk instead; the output says which
case was measured, and the agent's own stop line says how many events were delivered or spooled.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quick import parse_args  # noqa: E402
from trainmon import settings as settings_module  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MB = 1_000_000
POLL_S = 0.5
GOAL_CPU_PCT, GOAL_RSS_MB = 1.0, 80.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as file:
        stat = file.read()
    fields = stat[stat.rfind(b")") + 2:].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) * 1024


def reachable(bootstrap: str) -> str | None:
    """The first bootstrap address that accepts a TCP connection, or None."""
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return address.strip()
        except (OSError, ValueError):
            continue
    return None


def agent_command() -> list[str]:
    script = Path(sys.executable).with_name("trainmon")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from trainmon.cli import main; sys.exit(main())"]


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    return f"{model}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.system()}"


def measure(seconds: float, warmup: float, interval: float, bootstrap: str, extra: list[str]) -> dict:
    spool = Path(tempfile.mkdtemp(prefix="trainmon-agent-bench-"))
    env = {**os.environ, "TRAINMON_KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    command = [*agent_command(), "agent", "--interval", str(interval), "--duration", str(seconds),
               "--spool-dir", str(spool / "spool"), *extra]
    readings: list[tuple[float, float, int, int]] = []  # (elapsed s, cpu s, rss bytes, peak rss bytes)
    start = time.monotonic()
    agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    process = psutil.Process(agent.pid)
    try:
        while agent.poll() is None:
            try:
                readings.append((time.monotonic() - start, cpu_seconds(agent.pid), process.memory_info().rss,
                                 peak_rss_bytes(agent.pid)))
            except (OSError, psutil.Error, AttributeError):  # exiting between poll() and the reads
                break
            time.sleep(POLL_S)
        _, log = agent.communicate(timeout=seconds + 60)
    finally:
        if agent.poll() is None:
            agent.kill()
        shutil.rmtree(spool, ignore_errors=True)
    if agent.returncode != 0:
        raise SystemExit(f"trainmon agent exited {agent.returncode}:\n{log}")
    # The agent samples for `seconds` after its own start-up, so every reading up to `seconds` after the
    # launch is inside its sampling loop; what follows (the publisher's bounded close) is left out.
    warm = next((r for r in readings if r[0] >= warmup), None)
    last = [r for r in readings if r[0] <= seconds][-1]
    if warm is None or last[0] - warm[0] < 5:
        raise SystemExit(f"too few readings after the {warmup:g} s warm-up; run longer (--seconds)")
    stopped = next((line for line in reversed(log.splitlines()) if "stopped after" in line), "")
    samples = re.search(r"stopped after (\d+) samples", stopped)
    publisher = dict(re.findall(r"(\w+)=(\d+)", stopped.partition("publisher:")[2]))
    return {
        "cpu_pct": 100 * (last[1] - warm[1]) / (last[0] - warm[0]),
        "cpu_pct_incl_startup": 100 * last[1] / last[0],
        "rss_mb": last[3] / MB,
        "rss_peak_mb": last[3] / MB,
        "rss_final_mb": last[2] / MB,
        "rss_growth_after_warmup_mb": (last[2] - warm[2]) / MB,
        "cpu_s": last[1],
        "measured_s": last[0],
        "warmup_s": warm[0],
        "interval_s": interval,
        "samples": int(samples.group(1)) if samples else 0,
        "delivered_events": int(publisher.get("delivered", 0)),
        "spooled_events": int(publisher.get("spooled_events", 0)),
        "agent_log_tail": log.strip().splitlines()[-6:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the agent runs (default 60)")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds of start-up left out of cpu_pct (default 3)")
    parser.add_argument("--interval", type=float, default=1.0, help="the agent's sampling interval (default 1)")
    parser.add_argument("--bootstrap", metavar="HOST:PORT",
                        help="Kafka bootstrap servers (default: from the trainmon settings)")
    parser.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for `trainmon agent`, repeatable (e.g. --agent-arg=--no-pcie)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = parse_args(parser, argv, seconds=15.0)

    bootstrap = args.bootstrap or settings_module.load().bootstrap_servers
    broker = reachable(bootstrap)
    mode = f"kafka ({broker})" if broker else f"spool (no broker reachable at {bootstrap})"
    print(f"measuring trainmon agent at {1 / args.interval:g} Hz for {args.seconds:g} s; sink: {mode}",
          file=sys.stderr, flush=True)
    figures = measure(args.seconds, args.warmup, args.interval, bootstrap, args.agent_arg)
    figures["mode"] = "kafka" if broker else "spool"
    figures["bootstrap"] = bootstrap
    figures["machine"] = machine()

    cpu_ok, rss_ok = figures["cpu_pct"] < GOAL_CPU_PCT, figures["rss_mb"] < GOAL_RSS_MB
    print(f"\nmachine: {figures['machine']}\nsink: {mode}; {figures['samples']} samples, "
          f"{figures['delivered_events']} delivered, {figures['spooled_events']} left in the spool")
    print(f"\n{'figure':<34} {'value':>9}  goal")
    print(f"{'CPU % of one core (after warm-up)':<34} {figures['cpu_pct']:>9.3f}  < {GOAL_CPU_PCT:g} "
          f"{'ok' if cpu_ok else 'MISSED'}")
    print(f"{'CPU % of one core (whole run)':<34} {figures['cpu_pct_incl_startup']:>9.3f}")
    print(f"{'RSS peak, MB':<34} {figures['rss_peak_mb']:>9.1f}  < {GOAL_RSS_MB:g} {'ok' if rss_ok else 'MISSED'}")
    print(f"{'RSS final, MB':<34} {figures['rss_final_mb']:>9.1f}")
    print(f"{'RSS growth after warm-up, MB':<34} {figures['rss_growth_after_warmup_mb']:>9.2f}")
    print(f"{'CPU seconds over the run':<34} {figures['cpu_s']:>9.2f}")
    print("\nagent log (tail):\n  " + "\n  ".join(figures["agent_log_tail"]))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if cpu_ok and rss_ok else 1


if __name__ == "__main__":
    sys.exit(main())
