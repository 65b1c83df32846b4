"""Encode and decode+validate throughput of the event contract on one core.

Two representative events: a 64-value training-metrics event and an 8-GPU system sample (host
figures plus ~16 per GPU, as the node daemon sends). Each figure is the median of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quick import parse_args  # noqa: E402
from trainmon.contract import decode, encode, envelope  # noqa: E402

NOW = 1_764_230_400.0
GPU_FIGURES = ["util_percent", "mem_util_percent", "mem_used_bytes", "mem_total_bytes", "temperature_c",
               "power_w", "power_limit_w", "sm_clock_mhz", "mem_clock_mhz", "pcie_tx_bytes_per_s",
               "pcie_rx_bytes_per_s", "throttle_reasons", "ecc_corrected", "ecc_uncorrected", "fan_percent",
               "energy_j"]
HOST_FIGURES = ["cpu_percent", "cpu_percent_min", "cpu_percent_max", "load1", "load5", "load15",
                "mem_used_bytes", "mem_total_bytes", "swap_used_bytes", "disk_read_bytes_per_s",
                "disk_write_bytes_per_s", "disk_used_percent", "net_rx_bytes_per_s", "net_tx_bytes_per_s"]


def metrics_event() -> dict:
    values = {f"layer_{i:02d}/grad_norm": 0.001 * i + 0.123456789 for i in range(60)}
    values.update({"loss": 2.345678, "val_loss": 2.5, "lr": 3e-4, "accuracy": 0.71})
    return envelope("metrics", project="llm", run="run-2f9c1d", rank=17, host="gpu-node-017", step=123_456,
                    epoch=3, time=NOW, values=values)


def system_event() -> dict:
    gpus = [{"index": i, "uuid": f"GPU-5d3c1a0e-{i:04d}-7b1f-9f3a-1c2d3e4f5a6b", "name": "NVIDIA H100 80GB HBM3",
             "figures": {name: 1000.0 * i + j + 0.5 for j, name in enumerate(GPU_FIGURES)}} for i in range(8)]
    return envelope("system", host="gpu-node-017", time=NOW, interval_s=1.0, runs=["run-2f9c1d"],
                    figures={name: 10.0 + j for j, name in enumerate(HOST_FIGURES)}, gpus=gpus)


def value_count(event: dict) -> int:
    if event["kind"] == "metrics":
        return len(event["values"])
    return len(event["figures"]) + sum(len(g["figures"]) for g in event["gpus"])


def rate(work, seconds: float) -> float:
    """Events per second of `work`, run in a loop for about `seconds`."""
    count, start = 0, time.perf_counter()
    while True:
        for _ in range(200):
            work()
        count += 200
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def measure(name: str, event: dict, seconds: float, repeats: int) -> dict[str, float]:
    raw = encode(event)
    values = value_count(event)
    encode_rates = [rate(lambda: encode(event), seconds) for _ in range(repeats)]
    decode_rates = [rate(lambda: decode(raw), seconds) for _ in range(repeats)]
    enc, dec = statistics.median(encode_rates), statistics.median(decode_rates)
    return {
        f"{name}_values_per_event": values,
        f"{name}_bytes_per_event": len(raw),
        f"{name}_encode_events_per_s": enc,
        f"{name}_encode_values_per_s": enc * values,
        f"{name}_decode_events_per_s": dec,
        f"{name}_decode_values_per_s": dec * values,
        f"{name}_decode_spread_pct": 100 * (max(decode_rates) - min(decode_rates)) / dec,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one timed run (default 1.0)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure; the median is reported (default 5)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = parse_args(parser, argv, seconds=0.3, repeats=3)

    figures: dict[str, float] = {}
    for name, event in (("metrics64", metrics_event()), ("system8gpu", system_event())):
        print(f"measuring {name} ({args.repeats} x {args.seconds:.1f}s each for encode and decode)...",
              file=sys.stderr, flush=True)
        figures.update(measure(name, event, args.seconds, args.repeats))
    figures["decode_values_per_s"] = figures["metrics64_decode_values_per_s"]

    print(f"\n{'event':<12} {'values':>6} {'bytes':>6} {'encode ev/s':>12} {'encode val/s':>13} "
          f"{'decode ev/s':>12} {'decode val/s':>13} {'spread':>7}")
    for name in ("metrics64", "system8gpu"):
        f = {k.removeprefix(name + "_"): v for k, v in figures.items() if k.startswith(name + "_")}
        print(f"{name:<12} {f['values_per_event']:>6.0f} {f['bytes_per_event']:>6.0f} "
              f"{f['encode_events_per_s']:>12,.0f} {f['encode_values_per_s']:>13,.0f} "
              f"{f['decode_events_per_s']:>12,.0f} {f['decode_values_per_s']:>13,.0f} "
              f"{f['decode_spread_pct']:>6.1f}%")
    goal = 1_000_000
    verdict = "meets" if figures["decode_values_per_s"] >= goal else "MISSES"
    print(f"\ndecode+validate: {figures['decode_values_per_s']:,.0f} values/s on one core ({verdict} the {goal:,} goal)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
