"""The disk spool: ordered append/read, delivered watermark, torn tails, size cap, one owner."""

from __future__ import annotations

import logging

import pytest

from agent.spool import HEADER, Spool, SpoolLocked


def open_spool(path, **overrides):
    options = dict(max_bytes=1 << 30, segment_bytes=1 << 20, fsync_interval_s=1.0) | overrides
    return Spool(path, **options)


def records(n, start=0, size=100):
    return [(i % 3, f"key-{i % 7}".encode(), f"value-{i}".encode().ljust(size, b".")) for i in range(start, start + n)]


def test_append_then_read_in_order(tmp_path):
    spool = open_spool(tmp_path)
    assert spool.append(records(50)) == (1, 50)
    assert spool.append(records(50, 50)) == (51, 100)
    got = spool.read(1, 1000)
    assert [r.seq for r in got] == list(range(1, 101))
    assert got[10].value.startswith(b"value-10") and got[10].key == b"key-3" and got[10].topic == 1
    assert [r.seq for r in spool.read(40, 5)] == [40, 41, 42, 43, 44]
    assert [r.seq for r in spool.read(45, 3)] == [45, 46, 47]  # sequential reads continue from the cursor
    spool.close()


def test_reopen_replays_only_what_was_not_acked(tmp_path):
    spool = open_spool(tmp_path, segment_bytes=2000)
    for start in range(0, 100, 10):
        spool.append(records(10, start))
    spool.ack(60)
    spool.close()
    again = open_spool(tmp_path, segment_bytes=2000)
    assert again.acked == 60 and again.pending == 40
    assert [r.seq for r in again.read(61, 1000)] == list(range(61, 101))
    assert again.append(records(1)) == (101, 101)
    again.close()


def test_acked_segments_are_deleted_and_a_fully_delivered_spool_leaves_nothing(tmp_path):
    spool = open_spool(tmp_path, segment_bytes=2000)
    for start in range(0, 100, 10):  # one append is one write, into one segment
        spool.append(records(10, start))
    segments = len(list(tmp_path.glob("*.seg")))
    assert segments > 3
    spool.ack(100)
    assert len(list(tmp_path.glob("*.seg"))) == 1  # the active one stays while open
    spool.close()
    assert not list(tmp_path.glob("*.seg")) and not (tmp_path / "acked").exists()


def test_a_torn_tail_is_cut_and_the_intact_records_kept(tmp_path, caplog):
    spool = open_spool(tmp_path)
    spool.append(records(10))
    spool._close_fd()
    segment = next(tmp_path.glob("*.seg"))
    data = segment.read_bytes()
    segment.write_bytes(data + data[: HEADER.size + 20])  # a record cut short, as when killed mid-write
    spool._lock.close()
    with caplog.at_level(logging.WARNING, logger="trainmon.agent"):
        again = open_spool(tmp_path)
    assert "torn record" in caplog.text
    assert [r.seq for r in again.read(1, 100)] == list(range(1, 11))
    assert again.append(records(1)) == (11, 11)
    assert [r.seq for r in again.read(1, 100)] == list(range(1, 12))
    again.close()


def test_the_size_cap_drops_the_oldest_counts_and_says_so(tmp_path, caplog):
    spool = open_spool(tmp_path, max_bytes=10_000, segment_bytes=2_000)
    with caplog.at_level(logging.WARNING, logger="trainmon.agent"):
        for start in range(0, 500, 10):
            spool.append(records(10, start))
    assert spool.size <= 10_000 + 2_000
    assert spool.dropped > 0 and "dropped" in caplog.text
    assert spool.acked == spool.dropped  # what was dropped counts as gone, never silently
    left = spool.read(spool.acked + 1, 10_000)
    assert [r.seq for r in left] == list(range(spool.acked + 1, 501))
    spool.close()


def test_one_process_owns_a_spool(tmp_path):
    spool = open_spool(tmp_path)
    with pytest.raises(SpoolLocked):
        open_spool(tmp_path)
    spool.close()
    open_spool(tmp_path).close()
