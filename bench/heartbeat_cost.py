"""What the SDK's heartbeats cost a training process: 1 s (the default since issue 10) against 5 s.

Each case is a fresh subprocess that starts one run (trainmon.init, the real Publisher, delivering to
the bench stack's Kafka on 127.0.0.1:29092, started and stopped here) and then does nothing else for
--seconds, as a training loop blocked in CUDA would: all the CPU it uses is the SDK's (the
heartbeat thread, the publisher's delivery thread, librdkafka). CPU time comes from the process's
own rusage (user + system, all threads), taken after a warm-up; the cases alternate over --repeats
rounds so drifts in machine load hit both alike. The figure that matters is the difference: what
four more heartbeats a second cost, per heartbeat and as a share of one core.

    .venv/bin/python bench/heartbeat_cost.py --json bench/results/heartbeat_cost.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pipeline import bench_settings, delete_topics, say, write_figures  # noqa: E402
from bench.quick import parse_args  # noqa: E402
from trainmon.deploy import services  # noqa: E402
from trainmon.deploy.topics import create_topics  # noqa: E402
from trainmon.settings import environment  # noqa: E402

CHILD = """
import os, resource, sys, time, trainmon
seconds, warmup, beat = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
run = trainmon.init(project="bench-heartbeat", heartbeat_s=beat, spool_dir=sys.argv[4])
run.log({"loss": 1.0}, step=0)
time.sleep(warmup)
before = resource.getrusage(resource.RUSAGE_SELF)
time.sleep(seconds)
after = resource.getrusage(resource.RUSAGE_SELF)
print((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
run.finish()
"""


def measure(settings, beat: float, args: argparse.Namespace, spool: Path) -> float:
    """CPU seconds the process used over args.seconds of idle training with heartbeats every `beat`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.update(environment(settings))
    out = subprocess.run([sys.executable, "-c", CHILD, str(args.seconds), str(args.warmup), str(beat), str(spool)],
                         env=env, capture_output=True, text=True, timeout=args.seconds + args.warmup + 60)
    if out.returncode != 0:
        raise SystemExit(f"the measuring process failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured time per case (default 60)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of both cases; medians (default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parse_args(parser, argv, seconds=15.0, warmup=3.0, repeats=1)

    settings = bench_settings(1, database="trainmon_bench_heartbeat")
    say(f"starting Kafka under {settings.home} ...")
    services.start_all(settings, ["kafka"], progress=say)
    cpu: dict[float, list[float]] = {1.0: [], 5.0: []}
    try:
        create_topics(settings, progress=lambda m: None)
        with tempfile.TemporaryDirectory(prefix="trainmon-heartbeat-") as tmp:
            for round_ in range(args.repeats):
                for beat in cpu:
                    say(f"round {round_ + 1}/{args.repeats}: heartbeat every {beat:g} s, {args.seconds:g} s...")
                    cpu[beat].append(measure(settings, beat, args, Path(tmp) / f"spool-{round_}-{beat:g}"))
    finally:
        delete_topics(settings)
        services.stop_all(settings, ["kafka"], progress=say)
    one, five = statistics.median(cpu[1.0]), statistics.median(cpu[5.0])
    extra_beats = args.seconds * (1.0 - 1.0 / 5.0)
    figures = {
        "cpu_1s_heartbeat_pct": 100 * one / args.seconds,
        "cpu_5s_heartbeat_pct": 100 * five / args.seconds,
        "cpu_added_pct": 100 * (one - five) / args.seconds,
        "cpu_per_heartbeat_us": 1e6 * (one - five) / extra_beats,
    }
    print(f"{'heartbeat':>10} {'CPU % of a core (median)':>26} {'rounds':>30}")
    for beat, values in cpu.items():
        print(f"{beat:>9g}s {100 * statistics.median(values) / args.seconds:>26.3f} "
              f"{' '.join(f'{100 * v / args.seconds:.3f}' for v in values):>30}")
    print(f"1 s instead of 5 s adds {figures['cpu_added_pct']:.3f} % of a core, "
          f"{figures['cpu_per_heartbeat_us']:.0f} µs per heartbeat")
    if args.json:
        write_figures(args.json, args, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
