"""A big fetch is handled in pieces, each checkpointed at once if it raised alerts (app.in_pieces)."""

from __future__ import annotations

import asyncio

from trainmon.stream_processors.app import in_pieces


def test_an_alert_in_the_first_piece_is_checkpointed_before_the_rest_is_handled():
    calls: list[str] = []

    async def handle(events: list[int]) -> bool:
        calls.append(f"handle {events[0]}..{events[-1]}")
        return 0 in events  # the fetch's first event raises an alert

    async def checkpoint() -> None:
        calls.append("checkpoint")

    asyncio.run(in_pieces(list(range(1200)), 500, handle, checkpoint))
    assert calls == ["handle 0..499", "checkpoint", "handle 500..999", "handle 1000..1199"]


def test_pieces_without_alerts_leave_the_checkpoint_to_its_timer():
    calls: list[str] = []

    async def handle(events: list[int]) -> bool:
        calls.append(f"handle {len(events)}")
        return False

    async def checkpoint() -> None:
        calls.append("checkpoint")

    asyncio.run(in_pieces(list(range(300)), 500, handle, checkpoint))
    assert calls == ["handle 300"]
