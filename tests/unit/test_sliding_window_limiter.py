"""The sliding-window limiter counts a call from its send until a window after its reply: calls
in flight hold their places however long they take, so a server counting arrivals in any window
never sees more than the limit."""

from __future__ import annotations

import asyncio
import time

from marketbus.runtime.ratelimit import SlidingWindowLimiter


async def test_calls_in_flight_hold_their_places_until_a_window_after_the_reply() -> None:
    limiter = SlidingWindowLimiter([(2, 0.3)], margin=0.0)
    release = asyncio.Event()
    finished: list[float] = []

    async def slow_call() -> None:
        async with limiter.slot():
            await release.wait()
        finished.append(time.monotonic())

    calls = [asyncio.create_task(slow_call()) for _ in range(2)]
    await asyncio.sleep(0.05)
    third = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.5)  # longer than the window: a send-time count would have let it through
    assert not third.done() and limiter.in_flight == 2
    release.set()
    await asyncio.gather(*calls)
    await asyncio.wait_for(third, 5)
    assert time.monotonic() - min(finished) >= 0.3  # a window after the first reply


async def test_every_window_must_allow_a_call_and_retry_after_blocks_everyone() -> None:
    limiter = SlidingWindowLimiter([(1000, 1.0), (3, 0.2)])  # the default margin: 2 % of a window
    stamps = []
    for _ in range(9):
        await limiter.acquire()
        stamps.append(time.monotonic())
    assert max(sum(1 for t in stamps if s <= t < s + 0.2) for s in stamps) <= 3  # the tighter window
    limiter.penalize(0.3)
    start = time.monotonic()
    await asyncio.wait_for(limiter.acquire(), 5)
    assert time.monotonic() - start >= 0.29


async def test_tighter_limits_apply_to_calls_already_counted() -> None:
    limiter = SlidingWindowLimiter([(5, 0.5)], margin=0.0)
    for _ in range(2):
        await limiter.acquire()
    limiter.set_limits([(2, 0.5)])
    waiting = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.1)
    assert not waiting.done()  # two already in the window
    await asyncio.wait_for(waiting, 5)
