"""Recovery benchmark: how soon alerts are evaluated again after a worker is SIGKILLed, and what
durable state costs in throughput, every service co-located on this machine.

It starts its own Kafka, ClickHouse and Alertmanager under .trainmon/bench like bench/pipeline.py
(ports 29092/29093, 28123/29000, 29094; a topic prefix and database of its own) and stops them by PID
at the end, with every worker it started.

1. Recovery (goal < 10 s). Two `trainmon process` workers under a steady load; bench/pipeline.py's
   probe run flips its loss NaN/finite every 0.5 s, so the shipped loss_non_finite rule fires about
   once a second. The worker that owns the probe's partition is SIGKILLed, and
     recovery = webhook arrival of the first firing alert whose NaN event was sent after the kill
                - the moment of the kill.
   Two modes, taking turns:
   - failover: the surviving worker takes the partitions over (the killed one is started again only
     after the figure is taken, and the group settles before the next kill);
   - restart: the killed worker is started again at once, as a supervisor would.
   The log of the worker that then owns the probe's partition gives the breakdown, each in seconds
   after the kill: the rebalance reaches it, its partitions are assigned, their state is restored
   ("state ready"), and the first alert arrives. Every NaN episode sent over the phase must be alerted
   exactly once, and every value written exactly once (both checked and reported).
2. Throughput cost (goal: at most 15 % lower with durable state). bench/pipeline.py's throughput phase
   (fresh workers, an offered load above capacity, the backlog drained) alternately with durable state
   and with `trainmon process --no-durable-state`, in the same process against the same services;
   medians are compared.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainmon.agent.publisher import Publisher  # noqa: E402
from bench.quick import parse_args  # noqa: E402
from bench.pipeline import (PROBE_RUN, bench_settings, delete_topics, drive, pipeline_file, quantiles,  # noqa: E402
                            run_once, say, start_worker, wait_visible)
from trainmon.deploy import services  # noqa: E402
from trainmon.deploy.migrate import migrate  # noqa: E402
from trainmon.deploy.topics import create_topics  # noqa: E402
from tests.kafka_util import metrics_partitions  # noqa: E402
from tests.receivers import Receiver  # noqa: E402
from trainmon.clickhouse import connect  # noqa: E402
from trainmon.contract import Topic, topic_name  # noqa: E402
from trainmon.settings import Settings  # noqa: E402

MODES = ("failover", "restart")
# log lines (aiokafka's and the processors' own, at info level) that mark a takeover's steps
MARKS = {
    "rebalance_seen": "Revoking previously assigned partitions",  # this worker learnt of the rebalance
    "assigned": "Setting newly assigned partitions",  # the group's new assignment reached it
    "state_ready": "state ready in",  # its partitions' snapshots restored (stream_processors/app.py)
}
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


@dataclass
class Worker:
    proc: subprocess.Popen
    log: Path


def log_times(log: Path, since: float) -> dict[str, float]:
    """Seconds after `since` of each MARKS line's first occurrence at or after it in a worker's log
    (its lines carry local wall-clock times to the millisecond), plus the restore time it reports."""
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        stamp = LOG_TIME.match(line)
        if not stamp:
            continue
        at = datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at < since - 0.001:
            continue
        for name, needle in MARKS.items():
            if name not in found and needle in line:
                found[name] = at - since
                ready = re.search(r"state ready in ([0-9.]+) s", line)
                if ready:
                    found["restore"] = float(ready[1])
    return found


def first_line(log: Path, since: float) -> float:
    """Seconds after `since` of the first timestamped line of a worker's log."""
    for line in log.read_text(errors="replace").splitlines():
        if stamp := LOG_TIME.match(line):
            return datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - since
    return math.nan


def stop_worker(worker: Worker) -> None:
    if worker.proc.poll() is None:
        worker.proc.send_signal(signal.SIGTERM)
        try:
            worker.proc.wait(30)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait(10)


def wait_until(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout_s:.0f}s waiting for {what}")


def firing(receiver: Receiver) -> list[tuple[float, float]]:
    """(arrival wall time, NaN event time) of each firing loss_non_finite alert of the probe run."""
    out = []
    for request in list(receiver.requests):
        alert = request.json()
        if alert["state"] == "firing" and alert["rule"] == "loss_non_finite" and alert.get("run") == PROBE_RUN:
            out.append((request.wall, float(alert["starts_at"])))
    return out


def recovery_phase(args: argparse.Namespace, settings: Settings, workdir: Path) -> tuple[list[dict], dict[str, float]]:
    """Kills and their figures, and the phase's checks (see the module doc)."""
    metrics_topic = topic_name(Topic.METRICS, settings.kafka_topic_prefix)
    everything = set(range(args.partitions))
    extra = ["--session-timeout", f"{args.session_timeout:g}"]
    client = connect(settings)
    client.command("TRUNCATE TABLE metric_points")
    numbers = itertools.count()
    kills: list[dict] = []
    probes: list[tuple[float, float]] = []
    steady: list[tuple[float, float]] = []  # between a settled group and a kill: alerts as usual
    stop_load = threading.Event()
    sent: dict[str, float] = {}

    with Receiver([200]) as receiver:
        pipeline = pipeline_file(workdir, receiver.url)

        def launch() -> Worker:
            log = workdir / f"worker{next(numbers)}.log"
            return Worker(start_worker(settings, pipeline, log, args.batch_events, loglevel="info", extra_args=extra),
                          log)

        def alive(workers: list[Worker]) -> None:
            for worker in workers:
                if worker.proc.poll() is not None:
                    raise SystemExit(f"worker {worker.log.name} exited with {worker.proc.returncode}; its log ends:\n"
                                     + worker.log.read_text(errors="replace")[-2000:])

        def settled(workers: list[Worker]) -> bool:
            """Every worker has partitions, none twice, all of them owned."""
            alive(workers)
            owned = [metrics_partitions(w.log, metrics_topic) for w in workers]
            return all(owned) and sum(map(len, owned)) == len(everything) and set().union(*owned) == everything

        def settle(workers: list[Worker], what: str) -> float:
            """Waits for a settled group and an alert raised after it; returns when it settled."""
            wait_until(lambda: settled(workers), args.recovery_timeout, what)
            since = time.time()
            wait_until(lambda: any(at > since for _, at in firing(receiver)), args.recovery_timeout,
                       f"an alert after {what}")
            time.sleep(args.settle)
            return since

        workers = [launch() for _ in range(2)]
        publisher = Publisher(settings, spool_dir=workdir / "spool")

        def load() -> None:
            sent["values"], sent["probes"], _ = drive(publisher, args.load_values_per_s, math.inf, args.width,
                                                      args.runs, stop=stop_load, probe_log=probes)

        loader = threading.Thread(target=load, name="load", daemon=True)
        try:
            say("starting 2 workers (loglevel info) ...")
            wait_until(lambda: settled(workers), 120, "2 workers to join")
            say(f"driving {args.load_values_per_s:,.0f} values/s and the NaN probe ...")
            loader.start()
            probe_partition = wait_until(lambda: client.query(
                "SELECT groupUniqArray(src_partition) FROM metric_points WHERE run = {r:String}",
                parameters={"r": PROBE_RUN}).result_rows[0][0], 60, "the probe's rows")
            if len(probe_partition) != 1:
                raise SystemExit(f"the probe run's rows came from partitions {probe_partition}")
            probe_partition = probe_partition[0]
            say(f"the probe run is on partition {probe_partition} of {args.partitions}")
            for repeat, mode in itertools.product(range(args.repeats), args.modes):
                stable = settle(workers, "the group to settle")
                victim = next(w for w in workers if probe_partition in metrics_partitions(w.log, metrics_topic))
                killed_at = time.time()
                victim.proc.send_signal(signal.SIGKILL)
                victim.proc.wait()
                workers.remove(victim)
                steady.append((stable, killed_at - 3))  # alerts of the last 3 s may be lost with the worker
                if mode == "restart":
                    workers.append(launch())
                say(f"--- {mode} {repeat + 1}/{args.repeats}: SIGKILLed {victim.log.name} "
                    f"(pid {victim.proc.pid}), {'restarted it' if mode == 'restart' else 'waiting for the survivor'}")
                deadline = time.monotonic() + args.recovery_timeout
                first = None
                while first is None and time.monotonic() < deadline:
                    after = [arrived for arrived, at in firing(receiver) if at > killed_at]
                    first = min(after) if after else None
                    time.sleep(0.05)
                alive(workers)
                owner = next((w for w in workers if probe_partition in metrics_partitions(w.log, metrics_topic)), None)
                kill = {"mode": mode, "recovery": (first - killed_at) if first else math.nan,
                        **(log_times(owner.log, killed_at) if owner else {})}
                if mode == "restart":  # the new process's first log line: its start-up
                    kill["worker_up"] = first_line(workers[-1].log, killed_at)
                kills.append(kill)
                say(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in kill.items()}))
                if first is None:
                    say(f"no alert within {args.recovery_timeout:.0f}s of the kill")
                if mode == "failover":
                    workers.append(launch())
            settle(workers, "the group to settle")
        finally:
            stop_load.set()
            if loader.is_alive():
                loader.join(30)
            say("load stopped; draining ...")
            publisher.flush(120)
            publisher.close()
            try:
                expected = sent.get("values", 0) + sent.get("probes", 0)
                wait_visible(client, expected, args.drain_timeout)
                time.sleep(3)  # the last alerts, and a duplicate row if there were one
                visible = client.query("SELECT count() FROM metric_points").result_rows[0][0]
            finally:
                for worker in workers:
                    stop_worker(worker)

    # every NaN episode (a NaN after a finite loss) alerted once
    episodes = [at for (at, loss), (_, before) in zip(probes, [(0.0, 1.0)] + probes) if math.isnan(loss)
                and not math.isnan(before)]
    alerted = sorted(at for _, at in firing(receiver))
    per_episode = [sum(1 for a in alerted if abs(a - at) < 0.001) for at in episodes]
    steady_ms = [(arrived - at) * 1000 for arrived, at in firing(receiver)
                 if any(start < at < end for start, end in steady)]
    checks = {
        "nan_episodes": float(len(episodes)),
        "nan_episodes_not_alerted": float(per_episode.count(0)),
        "nan_episodes_alerted_twice_or_more": float(sum(1 for n in per_episode if n > 1)),
        "recovery_phase_values_lost_or_doubled": float(visible - expected),
        "steady_alert_p50_ms": quantiles(steady_ms)[0],
        "steady_alert_p99_ms": quantiles(steady_ms)[1],
    }
    return kills, checks



def throughput_phase(args: argparse.Namespace, settings: Settings) -> list[dict]:
    """bench/pipeline.py's throughput phase, durable and not in turn (ABBA: drifts hit both alike)."""
    phase = argparse.Namespace(workers=2, batch_events=args.batch_events, warmup=args.warmup, seconds=args.seconds,
                               width=args.width, runs=args.runs, drain_timeout=args.drain_timeout)
    extra = ("--session-timeout", f"{args.session_timeout:g}")
    runs = []
    for repeat in range(args.repeats):
        for state in ("durable", "no_state") if repeat % 2 == 0 else ("no_state", "durable"):
            say(f"--- throughput {repeat + 1}/{args.repeats}: {state.replace('_', ' ')}")
            with tempfile.TemporaryDirectory() as tmp:
                figures = run_once(phase, settings, Path(tmp), args.values_per_s,
                                   worker_args=extra + (() if state == "durable" else ("--no-durable-state",)))
                # a worker told at a heartbeat that the group rebalances (warning level): one is the second
                # worker joining; more are workers that missed their session timeout under load
                rebalances = sum(log.read_text(errors="replace").count("because it is rebalancing")
                                 for log in Path(tmp).glob("worker*.log"))
            runs.append({"state": state, **figures, "rebalances_seen": float(rebalances),
                         "values_lost_or_doubled": figures["values_visible"] - figures["values_sent"]
                         - figures["probe_values"]})
            say(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in runs[-1].items()}))
    return runs


STEPS = [("worker_up", "restarted worker's first log line"), ("rebalance_seen", "rebalance reaches the new owner"),
         ("assigned", "partitions assigned to it"), ("state_ready", "their state restored"),
         ("recovery", "first alert at the webhook")]


def figures_of(kills: list[dict], checks: dict[str, float], runs: list[dict],
               args: argparse.Namespace) -> dict[str, float]:
    figures: dict[str, float] = {}
    if kills:
        done = [k["recovery"] for k in kills if not math.isnan(k["recovery"])]
        figures.update(recovery_p50_s=statistics.median(done) if done else math.nan,
                       recovery_min_s=min(done, default=math.nan), recovery_max_s=max(done, default=math.nan),
                       recoveries=float(len(kills)), recoveries_missed=float(len(kills) - len(done)))
        for mode in args.modes:
            for step in [name for name, _ in STEPS] + ["restore"]:
                values = [k[step] for k in kills if k["mode"] == mode and not math.isnan(k.get(step, math.nan))]
                if values:
                    figures[f"{mode}_{step}_p50_s"] = statistics.median(values)
                    figures[f"{mode}_{step}_min_s"] = min(values)
                    figures[f"{mode}_{step}_max_s"] = max(values)
        figures.update(checks)
        figures["session_timeout_s"] = args.session_timeout
        figures["recovery_load_values_per_s"] = args.load_values_per_s
    for state in ("durable", "no_state"):
        mine = [r for r in runs if r["state"] == state]
        if not mine:
            continue
        rates = [r["values_per_s"] for r in mine]
        figures[f"values_per_s_{state}"] = statistics.median(rates)
        figures[f"values_per_s_{state}_min"] = min(rates)
        figures[f"values_per_s_{state}_max"] = max(rates)
        figures[f"values_lost_or_doubled_{state}"] = max((r["values_lost_or_doubled"] for r in mine), key=abs)
        figures[f"cpu_workers_pct_{state}"] = statistics.median(r["cpu_workers_pct"] for r in mine)
        figures[f"worker_peak_rss_mb_{state}"] = max(r["worker_peak_rss_mb"] for r in mine)
        figures[f"rebalances_seen_max_{state}"] = max(r["rebalances_seen"] for r in mine)
    if "values_per_s_durable" in figures and "values_per_s_no_state" in figures:
        figures["throughput_cost_pct"] = 100 * (1 - figures["values_per_s_durable"] / figures["values_per_s_no_state"])
        durable = [r["values_per_s"] for r in runs if r["state"] == "durable"]
        no_state = [r["values_per_s"] for r in runs if r["state"] == "no_state"]
        # each repeat's pair ran back to back: their ratio is less exposed to slow drifts in machine load
        figures["throughput_cost_paired_pct"] = statistics.median(100 * (1 - d / n) for d, n in zip(durable, no_state))
        figures["offered_values_per_s"] = args.values_per_s
    return figures


def table(figures: dict[str, float], args: argparse.Namespace) -> None:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    if "recoveries" in figures:
        print(f"\nrecovery after a SIGKILL, seconds after the kill "
              f"(session timeout {figures['session_timeout_s']:g} s)")
        print(f"{'mode':<9} {'step':<36} {'median':>8} {'min':>8} {'max':>8}  goal")
        for mode in args.modes:
            for step, label in STEPS:
                if f"{mode}_{step}_p50_s" not in figures:
                    continue
                goal = ""
                if step == "recovery":
                    goal = f"< 10 s {verdict(figures[f'{mode}_recovery_p50_s'] < 10)}"
                print(f"{mode:<9} {label:<36} " + " ".join(f"{figures[f'{mode}_{step}_{q}_s']:>8.2f}"
                                                            for q in ('p50', 'min', 'max')) + f"  {goal}")
            if f"{mode}_restore_p50_s" in figures:
                print(f"{mode:<9} {'(of which restoring the snapshots)':<36} "
                      + " ".join(f"{figures[f'{mode}_restore_{q}_s']:>8.2f}" for q in ("p50", "min", "max")))
        print(f"{'all':<9} {'first alert at the webhook':<36} {figures['recovery_p50_s']:>8.2f} "
              f"{figures['recovery_min_s']:>8.2f} {figures['recovery_max_s']:>8.2f}  "
              f"< 10 s {verdict(figures['recovery_p50_s'] < 10)}")
        print(f"kills: {figures['recoveries']:.0f} ({figures['recoveries_missed']:.0f} without an alert in "
              f"{args.recovery_timeout:.0f} s); NaN episodes {figures['nan_episodes']:.0f}: not alerted "
              f"{figures['nan_episodes_not_alerted']:.0f}, alerted twice or more "
              f"{figures['nan_episodes_alerted_twice_or_more']:.0f}; values lost or doubled "
              f"{figures['recovery_phase_values_lost_or_doubled']:.0f}; alert latency between kills p50 "
              f"{figures['steady_alert_p50_ms']:.0f} ms, p99 {figures['steady_alert_p99_ms']:.0f} ms "
              f"at {args.load_values_per_s:,.0f} values/s")
    if "throughput_cost_pct" in figures:
        print(f"\nthroughput at {args.values_per_s:,.0f} offered values/s, 2 workers, "
              f"{args.repeats} runs of {args.seconds:.0f} s each way, session timeout "
              f"{args.session_timeout:g} s")
        print(f"{'figure':<34} {'durable':>14} {'no state':>14}  goal")
        rate = {s: f"{figures[f'values_per_s_{s}']:,.0f}" for s in ("durable", "no_state")}
        print(f"{'values/s, median':<34} {rate['durable']:>14} {rate['no_state']:>14}  durable >= 200,000 "
              f"{verdict(figures['values_per_s_durable'] >= 200_000)}")
        for s in ("min", "max"):
            print(f"{'values/s, ' + s:<34} {figures[f'values_per_s_durable_{s}']:>14,.0f} "
                  f"{figures[f'values_per_s_no_state_{s}']:>14,.0f}")
        print(f"{'values lost or doubled (worst run)':<34} {figures['values_lost_or_doubled_durable']:>14,.0f} "
              f"{figures['values_lost_or_doubled_no_state']:>14,.0f}  0")
        print(f"{'workers, % of one core':<34} {figures['cpu_workers_pct_durable']:>14,.0f} "
              f"{figures['cpu_workers_pct_no_state']:>14,.0f}")
        print(f"{'worker peak RSS, MB':<34} {figures['worker_peak_rss_mb_durable']:>14,.0f} "
              f"{figures['worker_peak_rss_mb_no_state']:>14,.0f}")
        print(f"{'rebalances seen, worst run':<34} {figures['rebalances_seen_max_durable']:>14,.0f} "
              f"{figures['rebalances_seen_max_no_state']:>14,.0f}  <= 1 (the 2nd worker joining)")
        print(f"{'cost of durable state, % (medians)':<34} {figures['throughput_cost_pct']:>14.1f} {'':>14}  <= 15 "
              f"{verdict(figures['throughput_cost_pct'] <= 15)}")
        print(f"{'  same, median of the pairs, %':<34} {figures['throughput_cost_paired_pct']:>14.1f}")
    print(f"\n{args.partitions} partitions, events of {args.width} values over {args.runs} runs, batches of up to "
          f"{args.batch_events:,} events, everything on this machine ({os.cpu_count()} CPUs)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", default="recovery,throughput",
                        help="which phases, comma-separated: recovery, throughput (default both)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="kills per recovery mode, and throughput runs each way (default 3)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="recovery modes, comma-separated: failover (the survivor takes over), restart "
                        "(the killed worker started again at once) (default both)")
    parser.add_argument("--session-timeout", type=float, default=Settings().processors_session_timeout, metavar="SECONDS",
                        help="every worker's `trainmon process --session-timeout` (default: that option's "
                        "default, %(default)g)")
    parser.add_argument("--load-values-per-s", type=float, default=50_000,
                        help="steady load during the recovery phase (default 50,000)")
    parser.add_argument("--settle", type=float, default=3,
                        help="seconds of steady alerts before each kill (default 3)")
    parser.add_argument("--recovery-timeout", type=float, default=90,
                        help="max wait for the group to settle, or for an alert after a kill (default 90)")
    parser.add_argument("--values-per-s", type=float, default=400_000,
                        help="offered load of the throughput runs, above capacity (default 400,000)")
    parser.add_argument("--seconds", type=float, default=20, help="length of each throughput run's load (default 20)")
    parser.add_argument("--warmup", type=float, default=12,
                        help="seconds for a throughput run's workers to join (default 12)")
    parser.add_argument("--drain-timeout", type=float, default=120,
                        help="max wait for a backlog to be written (default 120)")
    parser.add_argument("--width", type=int, default=64, help="values per metrics event (default 64)")
    parser.add_argument("--runs", type=int, default=24, help="runs the load is spread over (default 24)")
    parser.add_argument("--batch-events", type=int, default=5000,
                        help="each worker's `trainmon process --batch-events` (default 5000)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions per topic (default 6)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    parser.add_argument("--logs", metavar="DIR", help="keep the recovery phase's worker logs in DIR (default: "
                        "a temporary directory, removed)")
    args = parse_args(parser, argv, repeats=1, seconds=10.0)
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not phases <= {"recovery", "throughput"} or not phases or not set(args.modes) <= set(MODES) or not args.modes:
        parser.error("--phases takes recovery and/or throughput; --modes failover and/or restart")

    settings = bench_settings(args.partitions, database="trainmon_bench_recovery")
    say(f"starting Kafka, ClickHouse and Alertmanager under {settings.home} ...")
    kills: list[dict] = []
    checks: dict[str, float] = {}
    runs: list[dict] = []
    try:
        services.start_all(settings, progress=say)
        create_topics(settings, progress=lambda m: None)
        migrate(settings, progress=lambda m: None)
        if "recovery" in phases:
            with tempfile.TemporaryDirectory() as tmp:
                logs = Path(args.logs or tmp)
                logs.mkdir(parents=True, exist_ok=True)
                kills, checks = recovery_phase(args, settings, logs)
        if "throughput" in phases:
            runs = throughput_phase(args, settings)
    finally:
        try:
            connect(settings, database="default").command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
        finally:
            delete_topics(settings)
            services.stop_all(settings, progress=say)

    figures = figures_of(kills, checks, runs, args)
    table(figures, args)
    if args.json:
        Path(args.json).write_text(json.dumps({**figures, "kills": kills, "throughput_runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
