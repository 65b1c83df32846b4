"""How fast the shipped rules find each fault kind, and what they page on clean runs (issue 10).

The real pipeline: Kafka and ClickHouse of the bench stack (127.0.0.1:29092 and :28123, started and
stopped here), one `trainmon process` worker with the shipped rules (stream_processors/pipeline.yml)
and one route, a local webhook that timestamps every arrival.

1. faults, --repeats times: one simulation (agent/simulator, in this process, through the agent's
   Publisher) with a run on a node of its own for every fault kind; each kind is injected into its own
   run or node at --inject-at s, once every rule has learned the cadences. A fault's delay is from the
   wall time the simulator injected it (a NaN: the first non-finite value published, since a NaN
   injected while the run evaluates reaches the data only when it trains again; the delay from the
   injection is reported too) to the arrival of the first page (an incident's notification,
   stream_processors/incidents.py) with an alert of its detecting rule about its run or host among
   its members; its pages are the incidents with a member about its run or host (a dead node is also
   its ranks' and its run's); a page about nothing injected is unexpected.
2. clean: the same cluster without faults for --clean-minutes; every firing alert is a false page.

Both phases run the simulator's --hazards (default: all of them: checkpoint pauses, evaluation
phases, warm-up spikes, noisy loss, a resume per run, one node's events 2-4 s late and out of order,
one node's clock 90 s behind; docs/simulate.md), so clean runs are hard and faults land among them.

    .venv/bin/python bench/detection.py --json bench/results/detection.json
    .venv/bin/python bench/detection.py --repeats 1 --clean-minutes 1     # a quick look
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainmon.agent.publisher import Publisher  # noqa: E402
from trainmon.agent.simulator import FaultSpec, SimConfig, Simulation  # noqa: E402
from trainmon.agent.simulator.faults import FAULTS, Planned  # noqa: E402
from bench.pipeline import alerting_stack, bench_settings, say, write_figures  # noqa: E402
from bench.quick import parse_args  # noqa: E402
from tests.receivers import Receiver  # noqa: E402

# fault kind -> the shipped rule that detects it; the goal (s) where issue 10 names one
DETECTOR = {
    "nan": ("loss_non_finite", 1.0), "plateau": ("loss_plateau", None), "overfitting": ("overfitting", None),
    "stall": ("run_stalled", 30.0), "straggler": ("straggler", 60.0), "dead_rank": ("rank_heartbeat_lost", 10.0),
    "dead_node": ("node_silent", 10.0), "hot_gpu": ("gpu_temperature_high", 15.0),
    "throttled_gpu": ("gpu_throttled", 15.0), "memory_pressure": ("gpu_memory_high", 15.0),
    "idle_gpu": ("gpu_idle", 60.0),
}
RUN_FAULTS = [name for name in DETECTOR if FAULTS[name].target == "run"]
NODE_FAULTS = [name for name in DETECTOR if FAULTS[name].target == "node"]
GPUS = 4  # per node: one run of 4 ranks per node, so a fault's run and host are its own


@dataclass
class Injected:
    kind: str
    run: str | None  # the run a run fault hit
    host: str  # the node a node fault hit, or the run's node
    runs_on_host: set[str]
    at: float = 0.0  # wall time the fault is in the data: injected, or for a NaN its first publication
    injected_at: float = 0.0
    delay_s: float | None = None
    pages: dict[str, str] = field(default_factory=dict)  # fingerprint -> rule of each firing alert about it

    def owns(self, alert: dict) -> bool:
        """About its run, its node (each run has one of its own) or a run on that node."""
        labels = alert["labels"]
        runs = {alert.get("run"), *labels.get("runs", "").split(",")} - {None, ""}
        return labels.get("host") == self.host or bool(runs & ({self.run} | self.runs_on_host))


def cluster_config(args: argparse.Namespace, project: str, faults: tuple[FaultSpec, ...], minutes: float) -> SimConfig:
    nodes = len(RUN_FAULTS) + len(NODE_FAULTS)
    hazards = () if args.hazards == "none" else tuple(args.hazards.split(","))
    return SimConfig(nodes=nodes, gpus=GPUS, runs=nodes, world_size=GPUS, duration=minutes * 60, project=project,
                     prefix=project, faults=faults, seed=args.seed, hazards=hazards)


def fault_specs(args: argparse.Namespace) -> tuple[FaultSpec, ...]:
    """Run faults on runs 1.., node faults on the nodes after them (each node runs one run)."""
    specs = [FaultSpec(kind, f"run-{i + 1}", args.inject_at) for i, kind in enumerate(RUN_FAULTS)]
    first = len(RUN_FAULTS) + 1
    specs += [FaultSpec(kind, f"node-{first + i}", args.inject_at) for i, kind in enumerate(NODE_FAULTS)]
    return tuple(specs)


def injected(planned: Planned) -> Injected:
    subject = planned.subject
    if planned.fault.target == "run":
        return Injected(planned.fault.name, subject.id, subject.ranks[0].node.host, {subject.id})
    return Injected(planned.fault.name, None, subject.host, {rank.run.id for rank in subject.ranks})


class FirstNaN:
    """The simulator's publisher, noting when each run's first non-finite value is published: a NaN
    injected while a run evaluates exists in the data only once it trains and logs again."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher, self.at = publisher, {}

    def publish(self, event: dict) -> bool:
        if event["kind"] == "metrics" and event["run"] not in self.at and not all(
                math.isfinite(v) for v in event["values"].values() if isinstance(v, float)):
            self.at[event["run"]] = time.time()
        return self.publisher.publish(event)

    def close(self, timeout_s: float = 5.0) -> None:
        self.publisher.close(timeout_s)


def simulate(args: argparse.Namespace, settings, workdir: Path, project: str, faults: tuple[FaultSpec, ...],
             minutes: float) -> tuple[Simulation, FirstNaN]:
    sink = FirstNaN(Publisher(settings, spool_dir=workdir / f"spool-{project}"))
    simulation = Simulation(settings, cluster_config(args, project, faults, minutes), sink=sink)
    try:
        simulation.run(threading.Event())
    finally:
        sink.close()
    return simulation, sink


def firing(receiver: Receiver, project: str, since: int) -> list[tuple[float, dict]]:
    """Firing notifications received after request `since` about this round (its project, or its
    hosts, which the simulator names after the project)."""
    alerts = [(r.wall, r.json()) for r in list(receiver.requests)[since:]]
    return [(wall, a) for wall, a in alerts if a["state"] == "firing"
            and (a.get("project") == project or a["labels"].get("host", "").startswith(f"{project}-"))]


def fault_round(args: argparse.Namespace, settings, workdir: Path, receiver: Receiver, round_: int
                ) -> tuple[list[Injected], int]:
    project = f"det{round_}-{uuid.uuid4().hex[:4]}"
    since = len(receiver.requests)
    say(f"round {round_ + 1}: {len(DETECTOR)} faults at {args.inject_at:g} s, {args.fault_seconds:g} s in all...")
    simulation, sink = simulate(args, settings, workdir, project, fault_specs(args), args.fault_seconds / 60)
    time.sleep(args.settle)  # the last alerts reach the webhook
    faults = []
    for planned in simulation.faults:
        fault = injected(planned)
        fault.injected_at = simulation.injected[planned.describe()]
        fault.at = sink.at.get(fault.run, fault.injected_at) if fault.kind == "nan" else fault.injected_at
        faults.append(fault)
    unexpected = set()
    for wall, page in firing(receiver, project, since):
        members = [{"labels": m["labels"], "run": m["labels"].get("run"), "rule": m["rule"]}
                   for m in page.get("members") or [page]]  # an incident's, or an alert routed alone
        owners = [f for f in faults if any(f.owns(m) for m in members)]
        for fault in owners:
            fault.pages[page["fingerprint"]] = page["rule"]
            detector = DETECTOR[fault.kind][0]
            if fault.delay_s is None and any(m["rule"] == detector and fault.owns(m) for m in members):
                fault.delay_s = wall - fault.at
        if not owners:
            unexpected.add(page["fingerprint"])
            say(f"  unexpected: {page['rule']} {page['labels']}")
    for fault in faults:
        rules = ", ".join(f"{rule} x{n}" if n > 1 else rule for rule, n in Counter(fault.pages.values()).items())
        say(f"  {fault.kind:16} " + ("missed" if fault.delay_s is None else f"{fault.delay_s:6.1f} s") +
            f"  {len(fault.pages)} page(s): {rules}")
    return faults, len(unexpected)


def clean_round(args: argparse.Namespace, settings, workdir: Path, receiver: Receiver) -> tuple[int, float]:
    project = f"clean-{uuid.uuid4().hex[:4]}"
    since = len(receiver.requests)
    say(f"clean: {args.clean_minutes:g} min without faults...")
    simulation, _ = simulate(args, settings, workdir, project, (), args.clean_minutes)
    time.sleep(args.settle)
    pages = {a["fingerprint"] for _, a in firing(receiver, project, since)}
    for _, alert in firing(receiver, project, since):
        say(f"  false page: {alert['rule']} {alert['labels']}")
    run_hours = len(simulation.cluster.runs) * simulation.elapsed_s / 3600
    return len(pages), run_hours


def summarise(rounds: list[list[Injected]], unexpected: int, false_pages: int, run_hours: float) -> dict[str, float]:
    figures: dict[str, float] = {}
    detected = injected_count = 0
    for kind in DETECTOR:
        delays = [f.delay_s for r in rounds for f in r if f.kind == kind and f.delay_s is not None]
        pages = [len(f.pages) for r in rounds for f in r if f.kind == kind]
        detected += len(delays)
        injected_count += len(pages)
        if delays:
            figures[f"{kind}_delay_p50_s"] = statistics.median(delays)
            figures[f"{kind}_delay_max_s"] = max(delays)
        figures[f"{kind}_detected"] = float(len(delays))
        figures[f"{kind}_pages_max"] = float(max(pages))
    from_injection = [f.delay_s + f.at - f.injected_at for r in rounds for f in r if f.kind == "nan" and f.delay_s]
    if from_injection:
        figures["nan_from_injection_p50_s"] = statistics.median(from_injection)
    figures["detected_ratio"] = detected / injected_count
    figures["unexpected_pages"] = float(unexpected)
    figures["false_pages"] = float(false_pages)
    figures["clean_run_hours"] = run_hours
    figures["false_pages_per_run_hour"] = false_pages / run_hours if run_hours else 0.0
    return figures


def table(figures: dict[str, float], repeats: int) -> str:
    lines = [f"{'fault':16} {'detected':>9} {'p50 s':>7} {'max s':>7} {'goal s':>7} {'pages':>6}"]
    for kind, (rule, goal) in DETECTOR.items():
        p50, worst = figures.get(f"{kind}_delay_p50_s"), figures.get(f"{kind}_delay_max_s")
        lines.append(f"{kind:16} {int(figures[f'{kind}_detected']):>5}/{repeats:<3} "
                     f"{'-' if p50 is None else f'{p50:.1f}':>7} {'-' if worst is None else f'{worst:.1f}':>7} "
                     f"{'-' if goal is None else f'{goal:g}':>7} {int(figures[f'{kind}_pages_max']):>6}")
    lines.append(f"detected {figures['detected_ratio']:.0%}; unexpected pages in the fault rounds "
                 f"{int(figures['unexpected_pages'])}; clean: {int(figures['false_pages'])} false page(s) in "
                 f"{figures['clean_run_hours']:.2f} run-hours ({figures['false_pages_per_run_hour']:.2f}/run-hour)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fault rounds, each injecting every kind once (default 3)")
    parser.add_argument("--inject-at", type=float, default=30.0,
                        help="seconds into each round the faults are injected (default 30)")
    parser.add_argument("--fault-seconds", type=float, default=110.0,
                        help="length of each fault round (default 110: the plateau needs 1,000 steps)")
    parser.add_argument("--clean-minutes", type=float, default=5.0, help="length of the clean round (default 5)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait for the last alerts (default 5)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="the simulator's seed (default 0)")
    parser.add_argument("--hazards", default="all",
                        help="the simulator's hazards in both phases: all, none, or names joined by commas "
                             "(default all; `trainmon simulate --list-hazards`)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parse_args(parser, argv, repeats=1, clean_minutes=1.0)

    settings = bench_settings(args.partitions, database="trainmon_bench_detection")
    with alerting_stack(settings, "trainmon-detection-", 1_000_000) as (workdir, receiver, worker):
        say("worker starting (joins the group)...")
        time.sleep(10)
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited with {worker.returncode}:\n"
                             f"{(workdir / 'worker.log').read_text(errors='replace')[-2000:]}")
        rounds, unexpected = [], 0
        for round_ in range(args.repeats):
            faults, stray = fault_round(args, settings, workdir, receiver, round_)
            rounds.append(faults)
            unexpected += stray
        false_pages, run_hours = clean_round(args, settings, workdir, receiver) if args.clean_minutes else (0, 0.0)
        figures = summarise(rounds, unexpected, false_pages, run_hours)
    print(table(figures, args.repeats))
    if args.json:
        write_figures(args.json, args, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
