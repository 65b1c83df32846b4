"""The publisher's write-ahead log: every event is on disk before it is handed to Kafka.

So a process killed with SIGKILL loses only what had not been written yet, and the next process that
opens the same directory replays everything not acknowledged by Kafka, in order.

Layout of a spool directory:
- `<first seq, 20 digits>.seg`: append-only segments of framed records, rolled at `segment_bytes`;
- `acked`: the highest sequence number such that it and every one before it was delivered;
- `lock`: an flock held while a process owns the spool (one writer per directory).

A record is a 16-byte header (body length, CRC-32 of the body, sequence number) and a body (topic code,
key length, key, value). A torn record at the tail (killed mid-write) fails its length or CRC check
and is cut off when the spool is opened.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

log = logging.getLogger("trainmon.agent")

HEADER = struct.Struct("<IIQ")  # body length, crc32(body), seq
BODY = struct.Struct("<BH")  # topic code, key length
SUFFIX = ".seg"


class SpoolLocked(RuntimeError):
    """Another live process owns this spool directory."""


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    topic: int
    key: bytes
    value: bytes


@dataclass(slots=True)
class Segment:
    first: int  # sequence number of its first record
    last: int  # of its last record; first - 1 while empty
    path: Path
    size: int


def frame(seq: int, topic: int, key: bytes, value: bytes) -> bytes:
    body = BODY.pack(topic, len(key)) + key + value
    return HEADER.pack(len(body), zlib.crc32(body), seq) + body


def _scan(path: Path) -> Iterator[tuple[int, Record]]:
    """(end offset, record) for each intact record; stops at the first torn or corrupt one."""
    data = path.read_bytes()
    offset = 0
    while offset + HEADER.size <= len(data):
        length, crc, seq = HEADER.unpack_from(data, offset)
        start, end = offset + HEADER.size, offset + HEADER.size + length
        if end > len(data) or length < BODY.size or zlib.crc32(data[start:end]) != crc:
            return
        topic, key_len = BODY.unpack_from(data, start)
        key_end = start + BODY.size + key_len
        yield end, Record(seq, topic, data[start + BODY.size : key_end], data[key_end:end])
        offset = end


class Spool:
    """Segments on disk plus the delivered watermark. Used by one thread (the publisher's)."""

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int, fsync_interval_s: float) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / "lock", "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise SpoolLocked(f"spool {self.dir} is in use by another process") from None
        self.max_bytes, self.segment_bytes, self.fsync_interval_s = max_bytes, segment_bytes, fsync_interval_s
        self.acked = self._read_acked()
        self.dropped = 0  # records lost to the size cap
        self.segments = self._open_segments()
        self.last_seq = self.segments[-1].last if self.segments else self.acked
        self.acked = min(self.acked, self.last_seq)
        self._fd = -1
        self._synced_at = time.monotonic()
        self._acked_written = self.acked
        self._reader: tuple[int, int, int] | None = None  # (segment first seq, byte offset, next seq)

    # --- opening ----------------------------------------------------------------------------------

    def _read_acked(self) -> int:
        try:
            return int((self.dir / "acked").read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _open_segments(self) -> list[Segment]:
        segments = []
        for path in sorted(self.dir.glob(f"*{SUFFIX}")):
            first = int(path.stem)
            end, last = 0, first - 1
            for end, record in _scan(path):
                last = record.seq
            size = path.stat().st_size
            if end < size:
                log.warning("spool %s: cut a torn record at byte %d of %s (written when killed)", self.dir, end, path.name)
                os.truncate(path, end)
            if last < first and path != max(self.dir.glob(f"*{SUFFIX}")):
                path.unlink()
                continue
            segments.append(Segment(first, last, path, end))
        self._delete_acked(segments)
        return segments

    # --- writing ----------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records on disk not yet delivered."""
        return self.last_seq - self.acked

    @property
    def size(self) -> int:
        return sum(segment.size for segment in self.segments)

    def append(self, records: Iterable[tuple[int, bytes, bytes]]) -> tuple[int, int]:
        """Write (topic, key, value) records in one write; returns their (first, last) sequence numbers."""
        first = self.last_seq + 1
        seq = self.last_seq
        frames = []
        for topic, key, value in records:
            seq += 1
            frames.append(frame(seq, topic, key, value))
        if seq < first:
            return first, seq
        data = b"".join(frames)
        segment = self._active(first, len(data))
        os.write(self._fd, data)  # in the page cache now: survives SIGKILL of this process
        segment.last, segment.size = seq, segment.size + len(data)
        self.last_seq = seq
        if self.fsync_interval_s == 0 or time.monotonic() - self._synced_at >= self.fsync_interval_s:
            self.sync()
        self._enforce_cap()
        return first, seq

    def _active(self, first: int, incoming: int) -> Segment:
        segment = self.segments[-1] if self.segments else None
        if segment is None or (segment.size and segment.size + incoming > self.segment_bytes):
            self.sync()
            self._close_fd()
            segment = Segment(first, first - 1, self.dir / f"{first:020d}{SUFFIX}", 0)
            self.segments.append(segment)
        if self._fd < 0:
            self._fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return segment

    def sync(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
        self._synced_at = time.monotonic()

    def _enforce_cap(self) -> None:
        while self.size > self.max_bytes and len(self.segments) > 1:
            oldest = self.segments.pop(0)
            lost = oldest.last - max(self.acked, oldest.first - 1)
            if lost > 0:
                self.dropped += lost
                self.acked = oldest.last
                log.warning("spool %s over its %d-byte cap: dropped %d undelivered events (seq %d..%d); "
                            "%d dropped so far", self.dir, self.max_bytes, lost, oldest.last - lost + 1,
                            oldest.last, self.dropped)
            oldest.path.unlink(missing_ok=True)

    # --- reading (replay) ---------------------------------------------------------------------------

    def read(self, from_seq: int, limit: int) -> list[Record]:
        """Up to `limit` records with seq >= from_seq, in order (sequential reads continue cheaply)."""
        out: list[Record] = []
        for segment in self.segments:
            if segment.last < from_seq or len(out) >= limit:
                continue
            offset = 0
            if self._reader and self._reader[0] == segment.first and self._reader[2] <= from_seq:
                offset = self._reader[1]
            with open(segment.path, "rb") as handle:
                handle.seek(offset)
                data = handle.read(segment.size - offset)
            position = 0
            while position + HEADER.size <= len(data) and len(out) < limit:
                length, _crc, seq = HEADER.unpack_from(data, position)
                end = position + HEADER.size + length
                if seq >= from_seq:
                    body = data[position + HEADER.size : end]
                    topic, key_len = BODY.unpack_from(body)
                    out.append(Record(seq, topic, body[BODY.size : BODY.size + key_len], body[BODY.size + key_len :]))
                position = end
            self._reader = (segment.first, offset + position, (out[-1].seq + 1) if out else from_seq)
        return out

    # --- acknowledging ------------------------------------------------------------------------------

    def ack(self, seq: int) -> None:
        """Everything up to seq is delivered: drop segments that are wholly delivered."""
        if seq <= self.acked:
            return
        self.acked = seq
        self._delete_acked(self.segments)
        if time.monotonic() - self._synced_at >= max(self.fsync_interval_s, 0.2):
            self.write_acked()

    def _delete_acked(self, segments: list[Segment]) -> None:
        while len(segments) > 1 and segments[0].last <= self.acked:
            segments.pop(0).path.unlink(missing_ok=True)

    def write_acked(self) -> None:
        if self._acked_written == self.acked:
            return
        tmp = self.dir / "acked.tmp"
        tmp.write_text(f"{self.acked}\n")
        os.replace(tmp, self.dir / "acked")
        self._acked_written = self.acked

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        self.sync()
        self.write_acked()
        self._close_fd()
        if self.pending == 0:  # nothing left to replay: leave no files behind
            for segment in self.segments:
                segment.path.unlink(missing_ok=True)
            self.segments.clear()
            (self.dir / "acked").unlink(missing_ok=True)
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
