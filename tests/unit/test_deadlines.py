"""Deadlines: an append that takes too long fails with LogUnavailable; one in time is untouched."""

from __future__ import annotations

import asyncio

import pytest

from service.log.base import Deadlines, LogUnavailable, Position


async def test_an_overdue_append_fails_and_a_timely_one_succeeds() -> None:
    deadlines = Deadlines(tick_s=0.01)
    deadlines.start()
    loop = asyncio.get_running_loop()
    try:
        never: asyncio.Future[Position] = loop.create_future()
        with pytest.raises(LogUnavailable):
            await deadlines.watch(never, timeout_s=0.05)

        timely: asyncio.Future[Position] = loop.create_future()
        loop.call_soon(timely.set_result, Position("t", 0, 7))
        assert await deadlines.watch(timely, timeout_s=0.05) == Position("t", 0, 7)
        await asyncio.sleep(0.1)  # its deadline passes: nothing happens to a done future
        assert timely.result() == Position("t", 0, 7)

        unbounded: asyncio.Future[Position] = loop.create_future()
        loop.call_later(0.1, unbounded.set_result, Position("t", 0, 8))
        assert await deadlines.watch(unbounded, timeout_s=None) == Position("t", 0, 8)
    finally:
        await deadlines.stop()
