"""The publisher's write-ahead log: every event is on disk before it is handed to Kafka.

So a process killed with SIGKILL loses only what had not been written yet, and the next process that
opens the same directory replays everything after the durable delivered watermark, in order.

Layout of a spool directory:
- `<first seq, 20 digits>.seg`: append-only segments of framed records, rolled at `segment_bytes`;
  each process appends only to segments it created itself;
- `acked`: the durable delivered watermark: every record with a sequence number up to it was
  delivered (or given up by the size cap). It is rewritten atomically (temp file, fsync, rename,
  directory fsync) on its own timer, at most every `ack_interval_s` while it moves, and at close;
- `lock`: an flock held while a process owns the spool (one writer per directory).

A segment is unlinked only when it lies wholly behind the durable watermark, so after a SIGKILL the
next process finds every record after that watermark still on disk: it re-sends what was delivered
in the last interval (at most ~`ack_interval_s` of deliveries, recognised downstream by the events'
producer and seq) and loses nothing. Opening reconciles what it finds: torn tails are cut, segments
behind the watermark removed, and sequence numbers that no segment holds any more (a watermark left
behind by a killed process, or a tail lost by a power cut) are skipped rather than waited for.

A record is a 16-byte header (body length, CRC-32 of the body, sequence number) and a body (topic code,
key length, key, value). A torn record at the tail (killed mid-write) fails its length or CRC check
and is cut off when the spool is opened; a failed write is cut off at once.

A spool directory in a *shared root* (setgid and sticky, like /var/spool/trainmon made by
deploy/systemd/tmpfiles.d/trainmon.conf) is also the node agent's to replay once its process is gone: the
directory is opened to the root's group, the agent's (0770), and its files to whoever may enter it
(see `_share_directory`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
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
ACK_INTERVAL_S = 1.0
SHARED_ROOT = stat.S_ISGID | stat.S_ISVTX  # the mode bits that mark a spool root shared with the agent


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
    previous = -1
    while offset + HEADER.size <= len(data):
        length, crc, seq = HEADER.unpack_from(data, offset)
        start, end = offset + HEADER.size, offset + HEADER.size + length
        if end > len(data) or length < BODY.size or zlib.crc32(data[start:end]) != crc:
            return
        if previous >= 0 and seq != previous + 1:  # a segment is written contiguously by one process
            return
        topic, key_len = BODY.unpack_from(data, start)
        key_end = start + BODY.size + key_len
        yield end, Record(seq, topic, data[start + BODY.size : key_end], data[key_end:end])
        previous = seq
        offset = end


def _share_directory(directory: Path) -> bool:
    """Whether the spool is in a shared root; if so, open it to the root's group and nobody else.

    The SDK's process and the agent that may replay its spool later are different users, and either
    may write a file the other must read, cut or replace (the watermark, the lock, a torn segment). A
    file takes its creator's group (a non-member's chmod drops the setgid bit), so group bits cannot
    serve both: the directory (0770: its owner and the agent's group) is the boundary, and its files
    are 0666 inside it. Group membership is all the agent needs, rather than capabilities that would
    let it write any user's files. A directory made by another user (a squatter who guessed this run's
    spool name) is refused unless the caller is in the root's group, as the agent is.
    """
    try:
        root = directory.parent.stat()
    except OSError:
        return False
    if root.st_mode & SHARED_ROOT != SHARED_ROOT:
        return False
    info = directory.lstat()
    mine = info.st_uid == os.geteuid()
    agent = info.st_gid == root.st_gid and (root.st_gid == os.getegid() or root.st_gid in os.getgroups())
    if not stat.S_ISDIR(info.st_mode) or not (mine or agent):
        raise PermissionError(f"spool {directory} in the shared root {directory.parent} is not a directory of yours "
                              f"(owner uid {info.st_uid}); set TRAINMON_SPOOL_DIR (or spool_dir=) to one of your own")
    if mine:
        os.chmod(directory, 0o770)  # mkdir's mode went through the umask, which may have left the group out
    return True


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Spool:
    """Segments on disk plus the delivered watermark. Used by one thread (the publisher's); `pending`
    and `acked` may be read from others."""

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int, fsync_interval_s: float,
                 ack_interval_s: float = ACK_INTERVAL_S, clock=time.monotonic) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._shared = _share_directory(self.dir)
        self._lock = open(self.dir / "lock", "a+")
        self._share_file(self._lock.fileno())
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise SpoolLocked(f"spool {self.dir} is in use by another process") from None
        self.max_bytes, self.segment_bytes, self.fsync_interval_s = max_bytes, segment_bytes, fsync_interval_s
        self.ack_interval_s = ack_interval_s
        self._clock = clock
        self.dropped = 0  # undelivered records removed by the size cap
        self.lost = 0  # of those, records never handed to Kafka (the rest may still be delivered)
        self.handed = 0  # the publisher's highest seq handed to Kafka (what the cap counts as lost)
        self.durable = self._read_acked()  # the watermark on disk
        self.acked = self.durable  # the watermark in memory: ahead of `durable` until the next write
        self._gaps: list[tuple[int, int]] = []  # (first, last) seqs above the watermark no segment holds
        self.segments = self._open_segments()
        self.last_seq = max(self.segments[-1].last if self.segments else 0, self.acked)
        self._fd = -1
        self._sealed = True  # segments found at open are never appended to: this process starts its own
        self._synced_at = self._acked_at = self._clock()
        self._reader: tuple[int, int, int] | None = None  # (segment first seq, byte offset, next seq)
        if self.acked != self.durable:
            self.write_acked()

    # --- opening ----------------------------------------------------------------------------------

    def _read_acked(self) -> int:
        try:
            return max(0, int((self.dir / "acked").read_text().strip() or 0))
        except (FileNotFoundError, ValueError):
            return 0

    def _open_segments(self) -> list[Segment]:
        """Reconcile what is on disk with the watermark: cut torn tails, remove empty and delivered
        segments, skip sequence numbers no segment holds any more."""
        found = []
        for path in sorted(self.dir.glob(f"*{SUFFIX}")):
            try:
                int(path.stem)
            except ValueError:
                continue
            end, first, last = 0, None, None
            for end, record in _scan(path):
                first = record.seq if first is None else first
                last = record.seq
            size = path.stat().st_size
            if end < size:
                log.warning("spool %s: cut a torn record at byte %d of %s (written when killed)", self.dir, end, path.name)
                os.truncate(path, end)
            if first is None or last <= self.acked:  # empty, or wholly delivered
                path.unlink(missing_ok=True)
                continue
            found.append(Segment(first, last, path, end))
        found.sort(key=lambda segment: segment.first)
        segments: list[Segment] = []
        for segment in found:
            if segments and segment.first <= segments[-1].last:  # overlapping: keep the earlier copy
                log.warning("spool %s: %s overlaps the segment before it; removed", self.dir, segment.path.name)
                segment.path.unlink(missing_ok=True)
                continue
            segments.append(segment)
        expected = self.acked + 1
        for segment in segments:
            if segment.first > expected:
                if expected == self.acked + 1:  # the watermark points before the first segment still held
                    log.info("spool %s: seqs %d..%d are no longer on disk (delivered or dropped by an earlier "
                             "process); the watermark moves past them", self.dir, expected, segment.first - 1)
                    self.acked = segment.first - 1
                else:
                    log.warning("spool %s: seqs %d..%d are missing (lost with a power cut?); skipped",
                                self.dir, expected, segment.first - 1)
                    self._gaps.append((expected, segment.first - 1))
            expected = segment.last + 1
        return segments

    # --- writing ----------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records on disk not yet delivered."""
        acked = self.acked
        missing = sum(last - max(first - 1, acked) for first, last in self._gaps if last > acked) if self._gaps else 0
        return max(0, self.last_seq - acked - missing)

    @property
    def size(self) -> int:
        return sum(segment.size for segment in self.segments)

    def append(self, records: Iterable[tuple[int, bytes, bytes]]) -> tuple[int, int]:
        """Write (topic, key, value) records in one write; returns their (first, last) sequence numbers.

        Raises OSError (disk full, I/O error) with the spool unchanged: a partial write is cut off."""
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
        try:
            view, written = memoryview(data), 0
            while written < len(data):  # in the page cache now: survives SIGKILL of this process
                written += os.write(self._fd, view[written:])
        except OSError:
            try:
                os.ftruncate(self._fd, segment.size)
            except OSError:
                log.error("spool %s: could not cut a failed write off %s", self.dir, segment.path.name)
                self._close_fd()
                self._sealed = True  # a later open cuts what is torn; we write elsewhere
            raise
        segment.last, segment.size = seq, segment.size + len(data)
        self.last_seq = seq
        if self.fsync_interval_s == 0 or self._clock() - self._synced_at >= self.fsync_interval_s:
            self.sync()
        self._enforce_cap()
        return first, seq

    def _active(self, first: int, incoming: int) -> Segment:
        segment = self.segments[-1] if self.segments else None
        if segment is None or self._sealed or (segment.size and segment.size + incoming > self.segment_bytes):
            self.sync()
            self._close_fd()
            path = self.dir / f"{first:020d}{SUFFIX}"
            if segment is not None and segment.path == path:  # ours and empty: its first write failed
                self.segments.pop()
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._share_file(self._fd)
            if os.fstat(self._fd).st_size:
                os.ftruncate(self._fd, 0)  # a leftover of ours with nothing valid in it
            segment = Segment(first, first - 1, path, 0)
            self.segments.append(segment)
            self._sealed = False
        elif self._fd < 0:
            self._fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return segment

    def sync(self) -> None:
        if self._fd >= 0:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                log.warning("spool %s: fsync failed (%s)", self.dir, exc)
        self._synced_at = self._clock()

    def _enforce_cap(self) -> None:
        while self.size > self.max_bytes and len(self.segments) > 1:
            oldest = self.segments[0]
            below = max(self.acked, oldest.first - 1)
            lost = oldest.last - below
            if lost > 0:
                unsent = oldest.last - max(below, self.handed)
                self.dropped += lost
                self.lost += max(0, unsent)
                self.acked = oldest.last
                log.warning("spool %s over its %d-byte cap: dropped %d undelivered events (seq %d..%d, %d of them "
                            "never sent); %d dropped so far", self.dir, self.max_bytes, lost, below + 1,
                            oldest.last, max(0, unsent), self.dropped)
                self.write_acked()  # before the unlink (write_acked unlinks it when it succeeds)
            if self.segments and self.segments[0] is oldest:
                self.segments.pop(0)
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
        """Everything up to seq is delivered (in memory at once; on disk by `maintain`)."""
        if seq > self.acked:
            self.acked = min(seq, self.last_seq)
        self.maintain()

    def maintain(self) -> None:
        """The watermark's timer: write it if it moved and `ack_interval_s` passed since the last
        write, then unlink the segments now wholly behind it. Cheap when there is nothing to do."""
        if self.acked != self.durable and self._clock() - self._acked_at >= self.ack_interval_s:
            self.write_acked()

    def _delete_acked(self) -> None:
        """Unlink segments wholly behind the durable watermark; the one being written stays."""
        segments = self.segments
        while segments and segments[0].last <= self.durable and (len(segments) > 1 or self._sealed):
            segments.pop(0).path.unlink(missing_ok=True)
        if self._gaps and self._gaps[0][1] <= self.durable:
            self._gaps = [gap for gap in self._gaps if gap[1] > self.durable]

    def write_acked(self) -> None:
        """Make the in-memory watermark durable: temp file, fsync, rename, directory fsync."""
        self._acked_at = self._clock()
        acked = self.acked
        if acked == self.durable:
            return
        tmp = self.dir / "acked.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                self._share_file(fd)
                os.write(fd, f"{acked}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.dir / "acked")
            _fsync_dir(self.dir)
        except OSError as exc:  # disk full: keep the segments, try again at the next interval
            log.warning("spool %s: could not write the delivered watermark (%s); segments are kept", self.dir, exc)
            return
        self.durable = acked
        self._delete_acked()

    def _share_file(self, fd: int) -> None:
        """In a shared spool, let the other side (owner or agent) read and rewrite a file we made."""
        if self._shared and os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, 0o666)

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        self.sync()
        self._close_fd()
        self._sealed = True
        if self.pending == 0:  # nothing left to replay: leave no files behind
            for segment in self.segments:
                segment.path.unlink(missing_ok=True)
            self.segments.clear()
            (self.dir / "acked").unlink(missing_ok=True)
        else:
            self.write_acked()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
