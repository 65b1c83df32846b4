"""The disk spool: ordered append/read, delivered watermark, torn tails, size cap, one owner."""

from __future__ import annotations

import errno
import logging
import os
import pickle
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from trainmon.agent import spool as spool_module
from trainmon.agent.orphans import orphaned
from trainmon.agent.spool import HEADER, Spool, SpoolLocked


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
    assert len(list(tmp_path.glob("*.seg"))) == segments  # not before the watermark is durable
    spool.write_acked()
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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def abandon(spool: Spool) -> None:
    """What SIGKILL leaves: no close(), no last watermark write; the kernel drops the fd and the lock."""
    spool._close_fd()
    spool._lock.close()


def acked_on_disk(path) -> int:
    return int((path / "acked").read_text())


def test_the_watermark_is_made_durable_on_its_own_timer_while_data_keeps_being_written(tmp_path):
    clock = Clock()
    spool = open_spool(tmp_path, segment_bytes=2000, clock=clock)
    for start in range(0, 500, 10):  # training logs all the time: a data fsync every second
        clock.now += 0.1
        spool.append(records(10, start))
        spool.ack(start + 5)
    assert acked_on_disk(tmp_path) >= 485, "written at least once a second while it moves"
    assert spool.durable == acked_on_disk(tmp_path)
    assert all(segment.last > spool.durable for segment in spool.segments[:-1])  # delivered ones are gone
    abandon(spool)


def test_after_sigkill_exactly_the_undelivered_replay_and_a_second_reopen_replays_nothing(tmp_path):
    clock = Clock()
    spool = open_spool(tmp_path, segment_bytes=2000, clock=clock)
    for start in range(0, 100, 10):
        spool.append(records(10, start))
    spool.ack(60)
    clock.now += 1.5
    spool.maintain()  # the timer fired: 60 is durable
    abandon(spool)

    again = open_spool(tmp_path, segment_bytes=2000)
    assert again.acked == 60 and again.pending == 40
    replay = again.read(again.acked + 1, 1000)
    assert [r.seq for r in replay] == list(range(61, 101))
    assert replay[0].value.startswith(b"value-60")
    again.ack(replay[-1].seq)
    assert again.pending == 0  # flush() would now be True
    again.close()

    third = open_spool(tmp_path, segment_bytes=2000)
    assert third.pending == 0 and third.read(third.acked + 1, 1000) == []
    third.close()
    assert not list(tmp_path.glob("*.seg"))


def test_delivered_segments_stay_until_the_watermark_is_durable_so_a_kill_loses_nothing(tmp_path):
    clock = Clock()
    spool = open_spool(tmp_path, segment_bytes=2000, clock=clock)
    for start in range(0, 100, 10):
        spool.append(records(10, start))
    spool.ack(30)
    clock.now += 1.5
    spool.maintain()
    spool.ack(90)  # delivered, but killed before the timer writes it
    abandon(spool)

    again = open_spool(tmp_path, segment_bytes=2000)
    assert again.acked == 30
    assert [r.seq for r in again.read(31, 1000)] == list(range(31, 101))  # 31..90 re-sent, nothing lost
    again.ack(100)
    assert again.pending == 0
    again.close()


def test_a_watermark_pointing_into_a_missing_segment_is_reconciled_on_open(tmp_path, caplog):
    """The spool an earlier version left after SIGKILL: delivered segments unlinked, `acked` stale."""
    spool = open_spool(tmp_path, segment_bytes=2000)
    for start in range(0, 100, 10):
        spool.append(records(10, start))
    abandon(spool)
    (tmp_path / "acked").write_text("5\n")
    segments = sorted(tmp_path.glob("*.seg"))
    for path in segments[:3]:  # seqs 1..first of the 4th segment - 1 are gone
        path.unlink()
    first_left = int(segments[3].stem)

    with caplog.at_level(logging.INFO, logger="trainmon.agent"):
        again = open_spool(tmp_path, segment_bytes=2000)
    assert "no longer on disk" in caplog.text
    assert again.acked == first_left - 1 and acked_on_disk(tmp_path) == first_left - 1
    assert again.pending == 100 - first_left + 1
    got = again.read(again.acked + 1, 1000)
    assert [r.seq for r in got] == list(range(first_left, 101))
    again.ack(100)
    assert again.pending == 0
    assert again.append(records(1)) == (101, 101)
    again.close()


def test_a_gap_between_segments_is_skipped_not_awaited(tmp_path):
    spool = open_spool(tmp_path, segment_bytes=2000)
    for start in range(0, 100, 10):
        spool.append(records(10, start))
    abandon(spool)
    segments = sorted(tmp_path.glob("*.seg"))
    missing = segments[2]
    lost = int(segments[3].stem) - int(missing.stem)
    missing.unlink()  # lost with a power cut, say
    again = open_spool(tmp_path, segment_bytes=2000)
    assert again.pending == 100 - lost
    present = [r.seq for r in again.read(1, 1000)]
    assert len(present) == 100 - lost and present == sorted(present)
    again.ack(present[-1])
    assert again.pending == 0
    again.close()


def test_a_failed_write_leaves_the_spool_intact_and_raises(tmp_path, monkeypatch):
    spool = open_spool(tmp_path)
    spool.append(records(10))
    real_write = spool_module.os.write

    def half_then_enospc(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))  # a short write first, as a filling disk gives
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module.os, "write", half_then_enospc)
    with pytest.raises(OSError):
        spool.append(records(10, 10))
    monkeypatch.setattr(spool_module.os, "write", real_write)
    assert spool.last_seq == 10 and spool.pending == 10
    assert spool.append(records(5, 10)) == (11, 15)
    assert [r.seq for r in spool.read(1, 100)] == list(range(1, 16))
    abandon(spool)
    again = open_spool(tmp_path)
    assert [r.seq for r in again.read(1, 100)] == list(range(1, 16))
    again.close()


def test_the_cap_counts_as_lost_only_what_was_never_handed_to_kafka(tmp_path):
    spool = open_spool(tmp_path, max_bytes=10_000, segment_bytes=2_000)
    spool.handed = 25  # the publisher gave seqs 1..25 to librdkafka already
    for start in range(0, 500, 10):
        spool.append(records(10, start))
    assert spool.dropped > 25 and spool.lost == spool.dropped - 25
    assert acked_on_disk(tmp_path) == spool.acked  # a reopen does not wait for what the cap removed
    spool.close()


# --- a spool root shared with the node agent -----------------------------------------------------------

SHARED_ROOT_MODE = 0o3773  # setgid + sticky, group rwx, others wx: as deploy/systemd/tmpfiles.d/trainmon.conf makes it


def modes(directory) -> dict[str, int]:
    return {path.name: stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()}


@pytest.fixture
def strict_umask():
    """The umask careful cluster users set: what the agent may do must not depend on it."""
    previous = os.umask(0o077)
    yield
    os.umask(previous)


def test_a_spool_in_a_shared_root_is_open_to_the_root_group_whatever_the_umask(tmp_path, strict_umask):
    root = tmp_path / "spool"
    root.mkdir()
    root.chmod(SHARED_ROOT_MODE)
    spool = open_spool(root / "proj-run-rank0", ack_interval_s=0)
    spool.append(records(3))
    spool.ack(1)  # writes the watermark at once (ack_interval_s=0)
    assert stat.S_IMODE((root / "proj-run-rank0").stat().st_mode) == 0o770
    assert set(modes(root / "proj-run-rank0").values()) == {0o666}, modes(root / "proj-run-rank0")
    assert {"lock", "acked"} <= set(modes(root / "proj-run-rank0"))
    spool.close()


def test_a_spool_elsewhere_stays_private(tmp_path):
    previous = os.umask(0o022)
    try:
        spool = open_spool(tmp_path / "proj-run-rank0", ack_interval_s=0)
        spool.append(records(3))
        spool.ack(1)
        spool.close()
    finally:
        os.umask(previous)
    files = modes(tmp_path / "proj-run-rank0")
    assert {files["acked"]} | {mode for name, mode in files.items() if name.endswith(".seg")} == {0o600}


def test_a_link_planted_in_a_shared_root_is_refused(tmp_path):
    root = tmp_path / "spool"
    root.mkdir()
    root.chmod(SHARED_ROOT_MODE)
    elsewhere = tmp_path / "someone-elses"
    elsewhere.mkdir()
    (root / "proj-run-rank0").symlink_to(elsewhere)  # another user guessed the run's spool name
    with pytest.raises(PermissionError, match="TRAINMON_SPOOL_DIR"):
        open_spool(root / "proj-run-rank0")
    assert not list(elsewhere.iterdir())


# Users and the agent as numeric ids without passwd entries: file permissions need nothing more.
TRAINER, SQUATTER, AGENT = 64101, 64102, 64103


def as_user(uid: int, gid: int, action):
    """action() in a forked child running as uid:gid with a 077 umask; its result, or its error as text."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.umask(0o077)
            outcome = ("ok", action())
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as text
            outcome = ("error", f"{type(exc).__name__}: {exc}")
        os.write(write_end, pickle.dumps(outcome))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


@pytest.fixture
def shared_root():
    """A shared root that other uids can reach: pytest's own tmp directories are private to root."""
    if os.geteuid() != 0:
        pytest.skip("switching between users needs root; the mode tests above cover the rest")
    base = Path(tempfile.mkdtemp(prefix="trainmon-spool-"))
    base.chmod(0o711)
    root = base / "spool"
    root.mkdir()
    os.chown(root, 0, AGENT)
    root.chmod(SHARED_ROOT_MODE)
    yield root
    shutil.rmtree(base)


def test_the_agent_replays_a_dead_trainers_spool_and_the_trainer_can_reopen_it(shared_root):
    directory = shared_root / "proj-run-rank0"

    def train_then_die() -> None:
        spool = open_spool(directory)
        spool.append(records(3))
        segment = spool.segments[-1].path
        abandon(spool)
        with open(segment, "ab") as file:
            file.write(HEADER.pack(500, 0, 4)[:10])  # killed in the middle of the next write

    def agent_sweeps() -> tuple[list, list[int]]:
        found = orphaned(shared_root)
        spool = open_spool(directory, ack_interval_s=0)  # cuts the torn tail: a write to the trainer's file
        seqs = [record.seq for record in spool.read(1, 10)]
        spool.ack(2)  # Kafka went away again after two
        spool.close()  # the watermark, written by the agent, for whoever opens the spool next
        return found, seqs

    def trainer_reopens() -> tuple[int, list[int], tuple[int, int]]:
        spool = open_spool(directory)
        result = spool.acked, [record.seq for record in spool.read(spool.acked + 1, 10)], spool.append(records(1))
        spool.close()
        return result

    assert as_user(TRAINER, TRAINER, train_then_die) == ("ok", None)
    assert as_user(AGENT, AGENT, agent_sweeps) == ("ok", ([directory], [1, 2, 3]))
    assert as_user(TRAINER, TRAINER, trainer_reopens) == ("ok", (2, [3], (4, 4)))


def test_another_user_cannot_take_over_a_spool_in_a_shared_root(shared_root):
    directory = shared_root / "proj-run-rank0"
    assert as_user(SQUATTER, SQUATTER, lambda: open_spool(directory).close()) == ("ok", None)  # planted first
    status, error = as_user(TRAINER, TRAINER, lambda: open_spool(directory).close())
    assert status == "error" and "PermissionError" in error and f"owner uid {SQUATTER}" in error
