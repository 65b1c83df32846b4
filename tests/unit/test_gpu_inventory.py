"""The `gpus` table is written when a GPU's row changes or its refresh is due, not with every sample
(issue 13: cost at rest)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from trainmon.stream_processors.gpu_inventory import GpuInventory

T = datetime(2026, 12, 6, tzinfo=timezone.utc)


def row(gpu: int, second: float, error: str = "", uuid: str | None = None, host: str = "n1") -> dict:
    return {"host": host, "gpu": gpu, "gpu_uuid": uuid or f"GPU-{gpu}", "gpu_name": "H100", "last_error": error,
            "last_seen": T + timedelta(seconds=second)}


def test_the_first_sight_of_each_gpu_is_written_once_per_flush_the_newest_row() -> None:
    inventory = GpuInventory()
    written = inventory.to_write([row(0, 0), row(1, 0), row(0, 1), row(1, 1), row(0, 0.5, host="n2")])
    assert sorted((r["host"], r["gpu"], r["last_seen"]) for r in written) == [
        ("n1", 0, T + timedelta(seconds=1)), ("n1", 1, T + timedelta(seconds=1)), ("n2", 0, T + timedelta(seconds=0.5))]


def test_unchanged_gpus_are_not_written_again_until_their_refresh() -> None:
    inventory = GpuInventory(refresh_s=300)
    inventory.to_write([row(0, 0), row(1, 0)])
    for second in range(2, 300, 2):  # a flush every 2 s for five minutes
        assert inventory.to_write([row(0, second - 1), row(0, second), row(1, second)]) == []
    refreshed = inventory.to_write([row(0, 300), row(1, 300)])
    assert [(r["gpu"], r["last_seen"]) for r in refreshed] == [(0, T + timedelta(seconds=300)), (1, T + timedelta(seconds=300))]


def test_an_error_a_swap_or_its_end_is_written_at_once() -> None:
    inventory = GpuInventory()
    inventory.to_write([row(0, 0), row(1, 0)])
    assert [r["last_error"] for r in inventory.to_write([row(0, 2), row(1, 2, error="GPU is lost")])] == ["GPU is lost"]
    assert [r["gpu_uuid"] for r in inventory.to_write([row(0, 4, uuid="GPU-new"), row(1, 4, error="GPU is lost")])] \
        == ["GPU-new"]
    assert [(r["gpu"], r["last_error"]) for r in inventory.to_write([row(0, 6, uuid="GPU-new"), row(1, 6)])] == [(1, "")]


def test_a_replayed_older_sample_does_not_move_the_refresh() -> None:
    inventory = GpuInventory(refresh_s=300)
    inventory.to_write([row(0, 100)])
    assert inventory.to_write([row(0, 10)]) == []  # older and the same: nothing
    assert inventory.to_write([row(0, 399)]) == []  # 299 s after the row written, not after the replay
    assert len(inventory.to_write([row(0, 400)])) == 1
