"""How soon an alert reaches the training loop it is about: from the alert firing on a worker to the
run's `on_alert` callback in its training thread (docs/sdk.md, "Alerts back into training").

The real pipeline: Kafka and ClickHouse of the bench stack (127.0.0.1:29092 and :28123, started and
stopped here), one `trainmon process` worker with the shipped rules and one route, a local webhook
that timestamps every arrival (the same alert reaching on-call, for comparison). Each repeat is one
run made with `trainmon.init`: it logs a loss every --step-ms, turns it NaN after --nan-after steps
and stays NaN (a diverged run), until its callback has requested the stop. A first run, not counted,
waits out the worker's start.

Figures, medians and worst over the repeats (ms), all clocks this machine's. "Fired" is when the
worker put the alert on the alerts topic (the message's timestamp, read by a consumer of the bench's
own): the rule's verdict plus the worker's state checkpoint that must precede every alert it sends.
- callback: fired -> the callback runs in the training thread (the follower's fetch, and the wait
  for the next `log`: up to one step);
- webhook: fired -> the route's webhook receives it (the page an on-call engineer gets);
- nan_to_fired: the NaN loss logged -> fired (publisher, worker batch, rule, checkpoint);
- nan_to_callback: the NaN loss logged -> the callback, end to end;
- log: run.log in the same loop by a run with the follower attached and by one without (control):
  p50 and p99 (us) over the second half of the steps before the NaN (the follower started and idle),
  and the slowest call of the first half (the follower's start: its Kafka consumer is built on its
  thread while the loop runs). Each log follows a sleep of one step, so it runs cold: slower than the
  tight loop of bench/sdk_overhead.py.

    .venv/bin/python bench/alert_callback.py --json bench/results/alert_callback.json
    .venv/bin/python bench/alert_callback.py --repeats 3 --step-ms 100
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import trainmon  # noqa: E402
from bench.pipeline import alerting_stack, bench_settings, say, write_figures  # noqa: E402
from bench.quick import parse_args  # noqa: E402
from bench.recovery import wait_until  # noqa: E402
from trainmon import kafka_client  # noqa: E402
from trainmon.contract import Topic, decode, topic_name  # noqa: E402
from tests.receivers import Receiver  # noqa: E402

RULE = "loss_non_finite"


class Fired(threading.Thread):
    """When each run's alert reached the alerts topic: a consumer of the bench's own, every partition
    of the bench's fresh topic assigned from its beginning, keeping the message timestamps of firings.
    (Not from the end: on a broker just started, that offset may be looked up only after a first alert.)"""

    def __init__(self, settings) -> None:
        super().__init__(daemon=True)
        self.at: dict[str, float] = {}  # run -> unix s the worker produced its firing
        self.done = threading.Event()
        self.consumer = Consumer(kafka_client.config(settings, **{"group.id": "bench-fired",
                                                                  "enable.auto.commit": False}))
        topic = topic_name(Topic.ALERTS, settings.kafka_topic_prefix)
        partitions = wait_until(lambda: self.consumer.list_topics(topic, timeout=10).topics[topic].partitions, 30,
                              f"the partitions of {topic}")  # none listed while a new topic has no leaders yet
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])

    def run(self) -> None:
        while not self.done.is_set():
            for message in self.consumer.consume(100, 0.2):
                if message.error() is None:
                    alert = decode(message.value())
                    if alert["state"] == "firing" and alert["rule"] == RULE:
                        self.at.setdefault(alert["run"], message.timestamp()[1] / 1000)
        self.consumer.close()


def loop(args: argparse.Namespace, run, on_step=None) -> tuple[list[int], float]:
    """The training loop: a loss every step, NaN from --nan-after on, until a stop is requested (or
    as many steps as `on_step` allows). Each log's time in ns, and when the first NaN was logged."""
    log_ns, step, nan_at = [], 0, math.inf
    deadline = time.monotonic() + args.timeout
    while not run.stop_requested and (on_step is None or on_step(step)):
        if time.monotonic() > deadline:
            raise SystemExit(f"no callback within {args.timeout:.0f} s")
        loss = math.nan if step >= args.nan_after else 1.0 / (step + 1)
        if step == args.nan_after:
            nan_at = time.time()
        started = time.perf_counter_ns()
        run.log({"loss": loss}, step=step)
        log_ns.append(time.perf_counter_ns() - started)
        step += 1
        time.sleep(args.step_ms / 1000)
    return log_ns, nan_at


def log_times_us(args: argparse.Namespace, log_ns: list[int], prefix: str) -> dict[str, float]:
    """p50, p99 of the steady half before the NaN, and the slowest call of the first half."""
    half = args.nan_after // 2
    steady = log_ns[half:args.nan_after]
    return {f"{prefix}_p50_us": statistics.median(steady) / 1000,
            f"{prefix}_p99_us": statistics.quantiles(steady, n=100)[98] / 1000,
            f"{prefix}_start_max_us": max(log_ns[:half]) / 1000}


def one_run(args: argparse.Namespace, settings, workdir: Path, receiver: Receiver, fired: Fired) -> dict[str, float]:
    """A control loop without the follower, then one with it until its NaN alert stops it: the
    delays of that alert, in ms, and the log times of both."""
    control = trainmon.init("bench-alerts", run_id=f"ctl-{uuid.uuid4().hex[:8]}", settings=settings,
                            spool_dir=workdir / "spool")
    try:  # finite only: the control fires nothing
        control_ns, _ = loop(args, control, on_step=lambda step: step < args.nan_after)
    finally:
        control.finish()
    run_id = f"cb-{uuid.uuid4().hex[:8]}"
    run = trainmon.init("bench-alerts", run_id=run_id, settings=settings, spool_dir=workdir / "spool")
    called: dict[str, float] = {}

    def on_nan(alert: dict) -> None:
        called["at"] = time.time()
        run.request_stop(alert)

    run.on_alert(on_nan, rules=RULE)
    try:
        log_ns, nan_at = loop(args, run)
    finally:
        run.finish()
    arrival = wait_webhook(receiver, run_id, args.timeout)
    fired_at = wait_until(lambda: fired.at.get(run_id), args.timeout, f"{run_id}'s alert on the alerts topic")
    return {"callback_ms": (called["at"] - fired_at) * 1000, "webhook_ms": (arrival - fired_at) * 1000,
            "nan_to_fired_ms": (fired_at - nan_at) * 1000, "nan_to_callback_ms": (called["at"] - nan_at) * 1000,
            **log_times_us(args, log_ns, "log"), **log_times_us(args, control_ns, "control_log")}


def wait_webhook(receiver: Receiver, run_id: str, timeout_s: float) -> float:
    """Wall time the route's webhook received the run's firing alert."""
    return wait_until(lambda: next((r.wall for r in list(receiver.requests) if r.json().get("run") == run_id
                                  and r.json()["rule"] == RULE and r.json()["state"] == "firing"), None),
                    timeout_s, f"{run_id}'s alert at the webhook")


DELAYS = [("callback", "alert fired -> on_alert callback in the training thread"),
          ("webhook", "alert fired -> webhook route receives it"),
          ("nan_to_fired", "NaN logged -> alert fired"),
          ("nan_to_callback", "NaN logged -> on_alert callback")]
LOG_TIMES = [("log", "run.log, follower attached"), ("control_log", "run.log, no follower (control)")]


def summarise(results: list[dict[str, float]]) -> dict[str, float]:
    """Medians and worst of the delays over the runs; medians of each run's log percentiles."""
    figures: dict[str, float] = {"runs": len(results), "load_average_1m": round(os.getloadavg()[0], 2)}
    for key, _ in DELAYS:
        values = [r[f"{key}_ms"] for r in results]
        figures[f"{key}_p50_ms"] = round(statistics.median(values), 1)
        figures[f"{key}_max_ms"] = round(max(values), 1)
    for key, _ in LOG_TIMES:
        for quantile in ("p50", "p99", "start_max"):
            figures[f"{key}_{quantile}_us"] = round(statistics.median(r[f"{key}_{quantile}_us"] for r in results), 2)
    return figures


def table(figures: dict[str, float], args: argparse.Namespace) -> str:
    lines = [f"{figures['runs']} runs, a step every {args.step_ms:g} ms, load average {figures['load_average_1m']}",
             f"{'':56} {'p50 ms':>9} {'max ms':>9}"]
    lines += [f"{label:56} {figures[f'{key}_p50_ms']:>9.1f} {figures[f'{key}_max_ms']:>9.1f}" for key, label in DELAYS]
    lines.append(f"{'':56} {'p50 us':>9} {'p99 us':>9} {'start max us':>13}")
    lines += [f"{label:56} {figures[f'{key}_p50_us']:>9.2f} {figures[f'{key}_p99_us']:>9.2f} "
              f"{figures[f'{key}_start_max_us']:>13.1f}" for key, label in LOG_TIMES]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="measured runs (default 10)")
    parser.add_argument("--step-ms", type=float, default=10.0, help="the training loop's step time (default 10)")
    parser.add_argument("--nan-after", type=int, default=300, help="finite steps before the loss turns NaN (300)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a run may wait for its callback")
    parser.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")
    parser.add_argument("--fetch-max-wait", type=float, metavar="S",
                        help="the worker's `trainmon process --fetch-max-wait` (default: the setting's, 0.25 s): at "
                             "this load the broker holds each fetch that long, so it adds to nan_to_fired")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parse_args(parser, argv, repeats=3)

    settings = bench_settings(args.partitions, database="trainmon_bench_alert_callback")
    worker_args = [] if args.fetch_max_wait is None else ["--fetch-max-wait", str(args.fetch_max_wait)]
    with alerting_stack(settings, "trainmon-alert-cb-", 100_000, worker_args) as (workdir, receiver, _worker):
        fired = Fired(settings)
        fired.start()
        say("warm-up run (the worker joins its group) ...")
        one_run(args, settings, workdir, receiver, fired)
        results = []
        for repeat in range(args.repeats):
            results.append(one_run(args, settings, workdir, receiver, fired))
            say(f"run {repeat + 1}/{args.repeats}: " + ", ".join(f"{k} {v:.1f}" for k, v in results[-1].items()))
        figures = summarise(results)
        fired.done.set()
    print(table(figures, args))
    if args.json:
        write_figures(args.json, args, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
