"""Disk spool throughput: events/s written (write-ahead, as the publisher does) and read back.

Write: batches of 10-value metrics events appended to a Spool, as the publisher's thread does, with
the default fsync policy (every 1 s) and with fsync on every batch; each policy twice:
- `write_encode_*`: the events are dicts and each batch is encoded in the timed loop with the
  contract's encoder (partition key, topic code, `encode`), exactly as Publisher._spool_queued does:
  the publisher's own path, bound by encoding (about 10-15 us an event);
- `write_preencoded_*`: the same records encoded beforehand: what the spool alone costs.
Read back: a restarted process opens the spool (which scans every segment and checks each record's
CRC) and reads everything in order. `replay_read_warm`: right after writing, the segments still in
the OS page cache (a process restarted soon after a crash); `replay_read_cold`: the segments fsynced
and evicted from the page cache first (posix_fadvise DONTNEED), so they come from the disk (after a
reboot, or memory pressure); the share of the files still cached when the cold read starts is
reported (`replay_read_cold_resident_pct`, from mincore) so a cold figure that was not cold shows.
With --kafka, also the rate at which a Publisher replays a full spool to a real broker (delivered and
acknowledged). Medians of --repeats; JSON names carry their unit.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quick import parse_args  # noqa: E402
from trainmon.agent.publisher import KIND_CODE  # noqa: E402
from trainmon.agent.spool import SUFFIX, Spool  # noqa: E402
from trainmon.contract import encode, envelope, partition_key  # noqa: E402

Record = tuple[int, bytes, bytes]
WRITES = {  # figure name -> (encode in the timed loop, fsync interval s)
    "write_encode_fsync_1s": (True, 1.0),
    "write_encode_fsync_each_batch": (True, 0.0),
    "write_preencoded_fsync_1s": (False, 1.0),
    "write_preencoded_fsync_each_batch": (False, 0.0),
}
LABELS = {
    "write_encode_fsync_1s": "write: encode + append, fsync every 1 s (the publisher's path)",
    "write_encode_fsync_each_batch": "write: encode + append, fsync every batch",
    "write_preencoded_fsync_1s": "write: pre-encoded append, fsync every 1 s (spool alone)",
    "write_preencoded_fsync_each_batch": "write: pre-encoded append, fsync every batch",
    "replay_read_warm": "read back: open + read, page cache (warm)",
    "replay_read_cold": "read back: open + read, evicted (cold, disk)",
    "replay_to_kafka": "replay into Kafka, delivered",
}


def sample_events(count: int) -> list[dict[str, Any]]:
    """What run.log hands the publisher: event dicts, 10 values each."""
    return [envelope("metrics", project="bench", run="run-bench", rank=step % 8, host="node-1", step=step,
                     time=1_764_230_400.0 + step, values={f"metric_{i}": 0.5 + i + step for i in range(10)})
            for step in range(count)]


def encoded(event: dict[str, Any]) -> Record:
    """One spool record, as Publisher._spool_queued makes it."""
    return KIND_CODE[event["kind"]], partition_key(event), encode(event)


def write_rate(directory: Path, events: list[dict[str, Any]], records: list[Record], batch: int,
               fsync_interval_s: float, encode_in_loop: bool) -> float:
    """Events/s appended in batches of `batch`; encoding the dicts inside the timed loop if asked."""
    spool = Spool(directory, max_bytes=1 << 34, segment_bytes=16 << 20, fsync_interval_s=fsync_interval_s)
    start = time.perf_counter()
    if encode_in_loop:
        for offset in range(0, len(events), batch):
            spool.append([encoded(event) for event in events[offset : offset + batch]])
    else:
        for offset in range(0, len(records), batch):
            spool.append(records[offset : offset + batch])
    spool.sync()
    elapsed = time.perf_counter() - start
    spool.close()  # nothing is acknowledged, so the segments stay for the replay runs
    return len(records) / elapsed


def evict(directory: Path) -> None:
    """Drop the segments from the OS page cache (written back first: only clean pages can be dropped)."""
    for path in directory.glob(f"*{SUFFIX}"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]


def resident_pct(directory: Path) -> float:
    """% of the segments' pages in the page cache now (mincore on a mapping that is never touched)."""
    resident = total = 0
    for path in directory.glob(f"*{SUFFIX}"):
        size = path.stat().st_size
        if not size:
            continue
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        fd = os.open(path, os.O_RDONLY)
        try:
            address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if address is None or address == ctypes.c_void_p(-1).value:
                raise OSError(ctypes.get_errno(), f"mmap {path}")
            try:
                vector = (ctypes.c_ubyte * pages)()
                if _libc.mincore(address, size, vector) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore {path}")
                resident += sum(byte & 1 for byte in vector)
            finally:
                _libc.munmap(address, size)
        finally:
            os.close(fd)
        total += pages
    return 100.0 * resident / total if total else 0.0


def replay_rate(directory: Path, count: int) -> float:
    """Events/s a restarted process gets back: open the spool (a CRC scan of every segment), read all."""
    start = time.perf_counter()
    spool = Spool(directory, max_bytes=1 << 34, segment_bytes=16 << 20, fsync_interval_s=1.0)
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
    parser.add_argument("--batch", type=int, default=100,
                        help="events per append (default 100; the publisher appends slices of 32)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is reported (default 3)")
    parser.add_argument("--dir", type=Path, metavar="DIR",
                        help="where the spools are written (default: a temporary directory; the disk matters)")
    parser.add_argument("--kafka", metavar="BOOTSTRAP",
                        help="also replay a full spool into this broker (topics must exist: trainmon topics create)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = parse_args(parser, argv, events=50_000, repeats=1)

    print(f"building {args.events:,} sample events...", file=sys.stderr, flush=True)
    events = sample_events(args.events)
    records = [encoded(event) for event in events]
    event_bytes = statistics.mean(len(r[2]) for r in records)
    runs: dict[str, list[float]] = {name: [] for name in LABELS}
    resident: list[float] = []
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
    for repeat in range(args.repeats):
        print(f"run {repeat + 1}/{args.repeats}...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="trainmon-spool-bench-", dir=args.dir) as tmp:
            for name, (encode_in_loop, fsync_s) in WRITES.items():
                runs[name].append(write_rate(Path(tmp) / name, events, records, args.batch, fsync_s, encode_in_loop))
            written = Path(tmp) / "write_encode_fsync_1s"
            runs["replay_read_warm"].append(replay_rate(written, len(records)))
            evict(written)
            resident.append(resident_pct(written))
            runs["replay_read_cold"].append(replay_rate(written, len(records)))
            if args.kafka:
                runs["replay_to_kafka"].append(
                    kafka_replay_rate(args.kafka, Path(tmp) / "write_encode_fsync_each_batch", len(records)))

    figures: dict[str, float] = {"events": args.events, "event_bytes": event_bytes, "batch_events": args.batch,
                                 "replay_read_cold_resident_pct": max(resident)}
    print(f"\n{'operation':<64} {'events/s (median)':>18} {'MB/s':>8} {'min..max events/s':>24}")
    for name, rates in runs.items():
        if not rates:
            continue
        median = statistics.median(rates)
        figures[f"{name}_events_per_s"] = median
        figures[f"{name}_mb_per_s"] = median * event_bytes / 1e6
        print(f"{LABELS[name]:<64} {median:>18,.0f} {median * event_bytes / 1e6:>8.1f} "
              f"{min(rates):>11,.0f}..{max(rates):<11,.0f}")
    encode_us = (1e6 / figures["write_encode_fsync_1s_events_per_s"]
                 - 1e6 / figures["write_preencoded_fsync_1s_events_per_s"])
    print(f"\n{args.events:,} events of {event_bytes:.0f} bytes, {args.batch} per append, {args.repeats} run(s); "
          f"encoding costs the publisher {encode_us:.1f} us an event; cold read: at most {max(resident):.1f} % of "
          f"the spool still cached when it began")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
