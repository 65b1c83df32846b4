"""Disk spool throughput: events/s written (write-ahead, as the publisher does) and replayed.

Write: batches of encoded 10-value metrics events appended, as the publisher's thread does every
linger, with the default fsync policy (every 1 s) and with fsync on every batch. Replay: sequential
reads of everything back, as a restarted process does. With --kafka, also the rate at which a
Publisher replays a full spool to a real broker (delivered and acknowledged). Medians of --repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainmon.agent.spool import Spool  # noqa: E402
from trainmon.contract import encode, envelope, partition_key  # noqa: E402


def sample_records(count: int) -> list[tuple[int, bytes, bytes]]:
    records = []
    for step in range(count):
        event = envelope("metrics", project="bench", run="run-bench", rank=step % 8, host="node-1", step=step,
                         time=1_764_230_400.0 + step, values={f"metric_{i}": 0.5 + i + step for i in range(10)})
        records.append((0, partition_key(event), encode(event)))
    return records


def write_rate(directory: Path, records, batch: int, fsync_interval_s: float) -> float:
    spool = Spool(directory, max_bytes=1 << 34, segment_bytes=16 << 20, fsync_interval_s=fsync_interval_s)
    start = time.perf_counter()
    for offset in range(0, len(records), batch):
        spool.append(records[offset : offset + batch])
    spool.sync()
    elapsed = time.perf_counter() - start
    spool.close()  # nothing is acknowledged, so the segments stay for the replay runs
    return len(records) / elapsed


def replay_rate(directory: Path, count: int) -> float:
    spool = Spool(directory, max_bytes=1 << 34, segment_bytes=16 << 20, fsync_interval_s=1.0)
    start = time.perf_counter()
    seq, read = 1, 0
    while read < count:
        chunk = spool.read(seq, 2000)
        read += len(chunk)
        seq = chunk[-1].seq + 1
    elapsed = time.perf_counter() - start
    spool.close()
    return count / elapsed


def kafka_replay_rate(bootstrap: str, directory: Path, count: int) -> float:
    from trainmon.agent.publisher import Publisher
    from trainmon.settings import Settings

    publisher = Publisher(Settings(kafka_bootstrap_servers=bootstrap), spool_dir=directory)
    start = time.perf_counter()
    if not publisher.flush(300):
        raise SystemExit(f"replay to {bootstrap} did not finish: {publisher.stats}")
    elapsed = time.perf_counter() - start
    publisher.close()
    return count / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events per run (default 200,000)")
    parser.add_argument("--batch", type=int, default=100, help="events per append, as one publisher cycle (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is reported (default 3)")
    parser.add_argument("--kafka", metavar="BOOTSTRAP",
                        help="also replay a full spool into this broker (topics must exist: trainmon topics create)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)

    print(f"encoding {args.events:,} sample events...", file=sys.stderr, flush=True)
    records = sample_records(args.events)
    event_bytes = statistics.mean(len(r[2]) for r in records)
    runs: dict[str, list[float]] = {"write_fsync_1s": [], "write_fsync_each_batch": [], "replay_read": [],
                                    "replay_to_kafka": []}
    for repeat in range(args.repeats):
        print(f"run {repeat + 1}/{args.repeats}...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            runs["write_fsync_1s"].append(write_rate(Path(tmp) / "a", records, args.batch, 1.0))
            runs["write_fsync_each_batch"].append(write_rate(Path(tmp) / "b", records, args.batch, 0.0))
            runs["replay_read"].append(replay_rate(Path(tmp) / "a", len(records)))
            if args.kafka:
                runs["replay_to_kafka"].append(kafka_replay_rate(args.kafka, Path(tmp) / "b", len(records)))

    figures: dict[str, float] = {"event_bytes": event_bytes, "batch_events": args.batch}
    print(f"\n{'operation':<26} {'events/s (median)':>18} {'MB/s':>8} {'min..max events/s':>24}")
    for name, rates in runs.items():
        if not rates:
            continue
        median = statistics.median(rates)
        figures[f"{name}_events_per_s"] = median
        figures[f"{name}_mb_per_s"] = median * event_bytes / 1e6
        print(f"{name:<26} {median:>18,.0f} {median * event_bytes / 1e6:>8.1f} "
              f"{min(rates):>11,.0f}..{max(rates):<11,.0f}")
    print(f"\n{args.events:,} events of {event_bytes:.0f} bytes, {args.batch} per append, {args.repeats} runs")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
