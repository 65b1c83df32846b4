"""Cost at rest: what the local stack costs while the demo's simulated cluster runs.

Starts Kafka, ClickHouse and Alertmanager on the bench ports (.trainmon/bench), the topics and the
schema, then what `make demo` runs beside them: a processors worker with the shipped rules (its one
route a local webhook receiver), the dashboard with nobody looking, this machine's node daemon, and
the simulated cluster (--nodes x --gpus, --runs runs, the demo's faults). After --warmup seconds it
measures for --duration seconds, per component: CPU as % of one core (process and children, from
/proc), RSS (median and peak of 1 s samples); and, from ClickHouse's own counters (system.events),
inserts, rows inserted, parts written, merges and selects per second; and the machine's speed just
before the stack starts and after it stops (calibration_before_ms / calibration_after_ms: bench/pipeline.py's
fixed piece of work, median of three, lower is faster). Goal (issue 13): ClickHouse + worker < 10 % of one core.
Everything it starts is stopped by PID at the end.

    python bench/idle.py --json bench/results/idle.json            # 60 s warm-up, 300 s measured
    python bench/idle.py --quick                                    # 20 s + 30 s, a quick look
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import psutil  # noqa: E402

from pipeline import (PORT_OFFSET, CpuShare, bench_settings, calibration_ms, delete_topics, pipeline_file,  # noqa: E402
                      say, write_figures)
from tests.receivers import Receiver  # noqa: E402
from trainmon import kafka_client  # noqa: E402
from trainmon.clickhouse import connect  # noqa: E402
from trainmon.contract import Topic, topic_name  # noqa: E402
from trainmon.deploy import services  # noqa: E402
from trainmon.deploy.demo import DEFAULT_FAULTS, Children  # noqa: E402
from trainmon.deploy.migrate import migrate  # noqa: E402
from trainmon.deploy.topics import create_topics  # noqa: E402
from trainmon.settings import Settings  # noqa: E402

GOAL_PCT = 10.0  # ClickHouse + worker, % of one core
# The machine's speed, before the stack starts and after it stops: bench/pipeline.py's fixed piece of work
# (encoding 20,000 metrics events of this many values). On a shared VM the same code's figure here moved
# from 9.5 to 14 % of a core between hours of one day: a run is read beside its calibration.
CALIBRATION_WIDTH = 64


def machine_speed_ms() -> float:
    """The median of three calibrations: one can land on a moment the machine is busy elsewhere."""
    return statistics.median(calibration_ms(CALIBRATION_WIDTH) for _ in range(3))
# --part-log: ClickHouse's own log of every part written and merged, switched on for one run by a config
# file beside the server's config (removed afterwards: the log writes parts of its own).
PART_LOG_XML = ("<clickhouse><part_log><database>system</database><table>part_log</table>"
                "<flush_interval_milliseconds>3000</flush_interval_milliseconds></part_log></clickhouse>\n")
PART_LOG_SQL = (
    "SELECT table, countIf(event_type = 'NewPart'), sumIf(rows, event_type = 'NewPart'), "
    "countIf(event_type = 'MergeParts'), sumIf(duration_ms, event_type = 'MergeParts') / 1000, "
    "sumIf(read_rows, event_type = 'MergeParts') FROM system.part_log "
    "WHERE database = {d:String} AND event_time >= {start:DateTime} AND event_time < {end:DateTime} "
    "GROUP BY table ORDER BY 5 DESC")
# ClickHouse's cumulative counters (system.events) whose rates say why it works at rest
EVENTS = ("InsertQuery", "InsertedRows", "MergeTreeDataWriterBlocks", "Merge", "MergedRows", "SelectQuery")


class RssSamples(threading.Thread):
    """RSS of each component's process tree, once a second."""

    def __init__(self, parts: dict[str, list[int]]) -> None:
        super().__init__(daemon=True)
        self.parts = parts
        self.samples: dict[str, list[int]] = {name: [] for name in parts}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            for name, pids in self.parts.items():
                total = 0
                for pid in pids:
                    try:
                        proc = psutil.Process(pid)
                        total += sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
                    except psutil.Error:
                        pass
                self.samples[name].append(total)


def topic_ends(settings: Settings) -> dict[str, int]:
    """Messages ever written to each agent topic (the sum of its partitions' high watermarks)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**kafka_client.config(settings), "group.id": "bench-idle-watermarks"})
    try:
        return {topic.value: sum(consumer.get_watermark_offsets(
                    TopicPartition(topic_name(topic, settings.kafka_topic_prefix), p), timeout=10)[1]
                    for p in range(settings.kafka_partitions))
                for topic in (Topic.METRICS, Topic.SYSTEM, Topic.RUNS)}
    finally:
        consumer.close()


def clickhouse_events(settings: Settings) -> dict[str, int]:
    with connect(settings) as client:
        rows = client.query("SELECT event, value FROM system.events WHERE event IN {names:Array(String)}",
                            parameters={"names": list(EVENTS)}).result_rows
    return {name: int(value) for name, value in rows}


def part_log_file(settings: Settings) -> Path:
    return services.services(settings, ["clickhouse"])[0].dir / "run" / "config.d" / "zz-bench-part-log.xml"


def part_log(settings: Settings, start: str, end: str) -> dict[str, tuple]:
    """table -> (new parts, rows written, merges, merge seconds, rows merged) between start and end (the
    server's own clock), once the log's last rows are flushed."""
    with connect(settings) as client:
        client.command("SYSTEM FLUSH LOGS")
        rows = client.query(PART_LOG_SQL, parameters={"d": settings.clickhouse_database, "start": start,
                                                      "end": end}).result_rows
    return {table: tuple(values) for table, *values in rows}


def server_now(settings: Settings) -> str:
    with connect(settings) as client:
        return str(client.query("SELECT toString(now())").result_rows[0][0])


def measure(args: argparse.Namespace) -> dict[str, float]:
    settings = bench_settings(4, database="trainmon_bench_idle")
    calibration_before = machine_speed_ms()
    cli = [sys.executable, "-m", "trainmon.cli"]
    log_file = part_log_file(settings)
    if args.part_log:
        if services.services(settings, ["clickhouse"])[0].pid():
            raise SystemExit("idle: --part-log needs the bench ClickHouse stopped first (it reads its config at start)")
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(PART_LOG_XML)
    say(f"starting Kafka, ClickHouse and Alertmanager under {settings.home} ...")
    try:
        services.start_all(settings, progress=say)
    finally:
        log_file.unlink(missing_ok=True)  # read at the start; the next start runs without it
    try:
        create_topics(settings, progress=lambda m: None)
        migrate(settings, progress=lambda m: None)
        if args.pair is not None:
            migrate(pair_settings(settings), progress=lambda m: None)
        with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp, Receiver([200] * 100_000) as receiver:
            logs = Path(tmp)
            children = Children(settings, logs, say)
            try:
                flags = [] if args.insert_max_delay is None else ["--insert-max-delay", str(args.insert_max_delay)]
                flags += shlex.split(args.worker_args)
                worker = children.start("worker", [*cli, "process", "--pipeline", str(pipeline_file(logs, receiver.url)),
                                                   "--group", "bench", "--loglevel", "info", *flags])
                dashboard = children.start("dashboard", [*cli, "dashboard", "--port", str(28501 + PORT_OFFSET)])
                agent = children.start("agent", [*cli, "agent", "--interval", "1"])
                simulate = [*cli, "simulate", "--nodes", str(args.nodes), "--gpus", str(args.gpus), "--runs",
                            str(args.runs), "--duration", str(int(args.warmup + args.duration + 120))]
                for index, fault in enumerate(DEFAULT_FAULTS):
                    simulate += ["--fault", f"{fault}:{20 + 10 * index}"]
                simulator = children.start("simulator", simulate)
                if args.pair is not None:  # after the simulator: both workers' first fetches see the same topics
                    paired = children.start("paired", [*cli, "process", "--pipeline", str(pipeline_file(logs, receiver.url)),
                                                       "--group", "bench-pair", "--loglevel", "info", *flags,
                                                       *shlex.split(args.pair)],
                                            TRAINMON_CLICKHOUSE_DATABASE=pair_settings(settings).clickhouse_database)
                parts = {"clickhouse": [], "kafka": [], "alertmanager": []}
                for service in services.services(settings):
                    if service.pid() and service.name in parts:
                        parts[service.name].append(service.pid())
                parts.update({"worker": [worker.pid], "dashboard": [dashboard.pid], "agent": [agent.pid],
                              "simulator": [simulator.pid]})
                if args.pair is not None:
                    parts["paired"] = [paired.pid]
                say(f"idle: warming up for {args.warmup:.0f} s ...")
                time.sleep(args.warmup)
                for name, code in children.exited():
                    raise RuntimeError(f"{name} exited with {code}:\n" + (logs / f"{name}.log").read_text(errors="replace")[-2000:])
                before, sent_before = clickhouse_events(settings), topic_ends(settings)
                window_start = server_now(settings)
                rss = RssSamples(parts)
                cpu = CpuShare(parts)
                rss.start()
                began, ratios, last = time.monotonic(), [], cpu.used()
                for elapsed in range(0, int(args.duration), 30):
                    time.sleep(min(30, args.duration - elapsed))
                    say(f"idle: {min(elapsed + 30, int(args.duration))}/{args.duration:.0f} s measured")
                    if args.pair is not None:  # per 30 s window: the paired worker's CPU over the worker's
                        now = cpu.used()
                        worker_s = now["worker"] - last["worker"]
                        if worker_s > 0:
                            ratios.append((now["paired"] - last["paired"]) / worker_s)
                            say(f"idle: paired / worker CPU in this window {ratios[-1]:.3f}")
                        last = now
                used, wall = cpu.used(), time.monotonic() - began
                rss.done.set()
                after, sent_after = clickhouse_events(settings), topic_ends(settings)
                with connect(settings) as client:
                    parts_now = dict(client.query(
                        "SELECT table, count() FROM system.parts WHERE database = {d:String} AND active GROUP BY table",
                        parameters={"d": settings.clickhouse_database}).result_rows)
                logged = part_log(settings, window_start, server_now(settings)) if args.part_log else {}
            finally:
                children.stop_all()
    finally:
        delete_topics(settings)
        services.stop_all(settings, progress=say)

    figures: dict[str, float] = {"calibration_before_ms": round(calibration_before, 1),
                                 "calibration_after_ms": round(machine_speed_ms(), 1)}
    for name in parts:
        figures[f"{name}_cpu_pct"] = round(100.0 * used[name] / wall, 2)
        samples = rss.samples[name] or [0]
        figures[f"{name}_rss_median_mb"] = round(statistics.median(samples) / 2**20, 1)
        figures[f"{name}_rss_peak_mb"] = round(max(samples) / 2**20, 1)
    figures["clickhouse_plus_worker_cpu_pct"] = round(figures["clickhouse_cpu_pct"] + figures["worker_cpu_pct"], 2)
    for key in EVENTS:
        figures[f"clickhouse_{key}_per_s"] = round((after.get(key, 0) - before.get(key, 0)) / wall, 2)
    for topic, count in sent_after.items():
        figures[f"{topic}_events_per_s"] = round((count - sent_before[topic]) / wall, 1)
    figures["clickhouse_active_parts"] = float(sum(parts_now.values()))
    for table, (new_parts, new_rows, merges, merge_s, merged_rows) in logged.items():
        figures.update({f"part_log_{table}_new_parts_per_s": round(new_parts / wall, 2),
                        f"part_log_{table}_new_rows_per_s": round(new_rows / wall, 1),
                        f"part_log_{table}_merges_per_s": round(merges / wall, 2),
                        f"part_log_{table}_merge_s_per_s": round(merge_s / wall, 4),
                        f"part_log_{table}_merged_rows_per_s": round(merged_rows / wall, 1)})
    if ratios:
        figures["paired_over_worker_cpu_ratio_median"] = round(statistics.median(ratios), 3)
        figures["paired_over_worker_cpu_ratio_min"] = round(min(ratios), 3)
        figures["paired_over_worker_cpu_ratio_max"] = round(max(ratios), 3)
    figures["measured_s"] = round(wall, 1)
    return figures


def pair_settings(settings: Settings) -> Settings:
    """The paired worker's own database: it writes every row the worker writes, so nothing is doubled."""
    return settings.replace(clickhouse_database=f"{settings.clickhouse_database}_pair")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=8, help="simulated nodes (default 8, as the demo)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per simulated node (default 8)")
    parser.add_argument("--runs", type=int, default=3, help="simulated runs (default 3)")
    parser.add_argument("--warmup", type=float, default=60, help="seconds before measuring (default 60)")
    parser.add_argument("--duration", type=float, default=300, help="seconds measured (default 300)")
    parser.add_argument("--quick", action="store_true", help="20 s warm-up, 30 s measured: a quick look")
    parser.add_argument("--part-log", action="store_true",
                        help="also switch on ClickHouse's system.part_log for this run (the bench ClickHouse must be "
                             "stopped) and report each table's new parts and merges over the measured window: merge "
                             "seconds and rows merged per second against rows written (figures part_log_<table>_*). "
                             "The log writes parts of its own: compare CPU figures only between runs without it")
    parser.add_argument("--insert-max-delay", type=float, metavar="S",
                        help="the worker's [processors] insert_max_delay (default: the worker's own, 1.5 s: an insert "
                             "per table every 2 s at rest); what a longer cadence saves at rest, paid in visible "
                             "latency (checked once a second: 1.5 inserts every 2 s, 3.5 every 4 s)")
    parser.add_argument("--worker-args", metavar="ARGS", default="",
                        help="extra `trainmon process` flags for the worker (and the paired one, before its own), "
                             "e.g. --worker-args '--hardware-insert-max-delay 1.5': a setting's cost at rest on the "
                             "whole stack, ClickHouse included, in runs of its own (interleave them with default runs)")
    parser.add_argument("--pair", metavar="ARGS",
                        help="also run a second worker beside the first, on the same traffic (its own consumer group "
                             "and database, so the ClickHouse figures include its inserts), with these extra "
                             "`trainmon process` flags, e.g. --pair '--fetch-max-wait 0.1'; '' runs an identical one "
                             "(A/A: how far the pair's own noise goes). Reports its CPU over the worker's in every 30 s "
                             "window (figures paired_over_worker_cpu_ratio_median/min/max): both live through the "
                             "same machine's moments, so the ratio holds where separate runs differ by a fifth")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures (names carry the unit)")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.duration = 20.0, 30.0
    figures = measure(args)
    print(f"\nidle cost over {figures['measured_s']:.0f} s: {args.nodes} nodes x {args.gpus} GPUs, {args.runs} runs "
          f"simulated ({psutil.cpu_count()} CPUs)")
    print(f"{'component':14s} {'CPU % of a core':>16s} {'RSS median MB':>14s} {'RSS peak MB':>12s}")
    for name in ("clickhouse", "worker", "paired", "kafka", "alertmanager", "dashboard", "agent", "simulator"):
        if f"{name}_cpu_pct" not in figures:
            continue
        print(f"{name:14s} {figures[f'{name}_cpu_pct']:16.2f} {figures[f'{name}_rss_median_mb']:14.1f} "
              f"{figures[f'{name}_rss_peak_mb']:12.1f}")
    total = figures["clickhouse_plus_worker_cpu_pct"]
    print(f"ClickHouse + worker: {total:.2f} % of one core (goal < {GOAL_PCT:g} %: {'MET' if total < GOAL_PCT else 'NOT MET'})")
    print("events sent to Kafka, per second: " + ", ".join(f"{t.value} {figures[f'{t.value}_events_per_s']:g}"
                                                           for t in (Topic.METRICS, Topic.SYSTEM, Topic.RUNS)))
    rates = {k: v for k, v in figures.items() if k.startswith("clickhouse_") and k.endswith("_per_s")}
    print("ClickHouse, per second: " + ", ".join(f"{k[len('clickhouse_'):-6]} {v:g}" for k, v in rates.items()))
    print(f"ClickHouse active parts at the end: {figures['clickhouse_active_parts']:.0f}")
    print(f"machine speed (bench/pipeline.py's calibration, lower is faster): {figures['calibration_before_ms']:.1f} ms "
          f"before, {figures['calibration_after_ms']:.1f} ms after")
    if "paired_over_worker_cpu_ratio_median" in figures:
        print(f"paired worker ({args.pair!r}) over the worker, CPU per 30 s window: median "
              f"{figures['paired_over_worker_cpu_ratio_median']:.3f} (min {figures['paired_over_worker_cpu_ratio_min']:.3f}, "
              f"max {figures['paired_over_worker_cpu_ratio_max']:.3f})")
    tables = sorted({k[len("part_log_"):-len("_merge_s_per_s")] for k in figures if k.endswith("_merge_s_per_s")},
                    key=lambda t: -figures[f"part_log_{t}_merge_s_per_s"])
    if tables:
        print("\nsystem.part_log over the measured window, per second (costliest merges first):")
        print(f"{'table':20s} {'new parts':>10s} {'rows written':>13s} {'merges':>7s} {'merge s':>8s} {'rows merged':>12s} "
              f"{'merged/written':>15s}")
        for t in tables:
            written, merged = figures[f"part_log_{t}_new_rows_per_s"], figures[f"part_log_{t}_merged_rows_per_s"]
            ratio = f"{merged / written:.1f}" if written else "-"
            print(f"{t:20s} {figures[f'part_log_{t}_new_parts_per_s']:10.2f} {written:13.1f} "
                  f"{figures[f'part_log_{t}_merges_per_s']:7.2f} {figures[f'part_log_{t}_merge_s_per_s']:8.4f} "
                  f"{merged:12.1f} {ratio:>15s}")
    if args.json:
        write_figures(args.json, args, figures)
        say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
