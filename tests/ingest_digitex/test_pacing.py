"""Digitex pacing against the sandbox enforcing the declared limits (50 per sliding second, 500 per
sliding minute, DRF-style): bursts of the ingestor's and the order router's clients never get a
429, counted by the sandbox itself, also when the event loop stalls in the middle of a burst;
a 429 with Retry-After (here a fault) is still waited out before the next call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from marketbus.runtime.settings import Secret
from marketbus.vendor.limits import DIGITEX, LimiterHold
from services.ingest_digitex.client import DigitexClient
from services.order_router.client import DigitexClient as RouterClient
from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec

TOKEN = "dgtx_sandbox_token"  # one account: the sandbox counts both clients in its windows


@pytest.fixture
async def sb() -> AsyncIterator[SandboxRunner]:
    async with SandboxRunner(load_spec("digitex"), port=0, rate_limit_enabled=True) as runner:
        yield runner


async def throttle_counts(sb: SandboxRunner) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=sb.url) as admin:
        counts: dict[str, int] = (await admin.get("/_sandbox/digitex/throttle")).json()
        return counts


def stall_loop(seconds: float) -> None:
    time.sleep(seconds)  # a blocked event loop: a slow callback, GC, a loaded host


async def test_bursts_and_a_stalled_loop_never_exceed_the_vendor_windows(sb: SandboxRunner) -> None:
    hold = LimiterHold(DIGITEX, sb.url + "/dapi")
    ingest = DigitexClient(sb.url + "/dapi", Secret(TOKEN), hold.limiter, max_attempts=1)
    router = RouterClient(sb.url, TOKEN, read_attempts=1)  # the same process-wide limiter
    try:
        assert router.limiter is ingest.limiter

        async def stall_mid_burst() -> None:
            await asyncio.sleep(0.01)  # calls let through and sent, not yet seen by the server
            stall_loop(1.5)

        first = [ingest.get("currency") for _ in range(90)] + [router.get("markets/")
                                                               for _ in range(30)]
        results = await asyncio.gather(*first, stall_mid_burst(), return_exceptions=True)
        stall_loop(1.2)  # idle, then a burst at once: everything in flight before counts against it
        second = [ingest.get("markets") for _ in range(60)] + [router.get("currency/")
                                                               for _ in range(20)]
        results += await asyncio.gather(*second, return_exceptions=True)
        counts = await throttle_counts(sb)
        assert counts == {"admitted": 200, "refused": 0}, counts
        assert not [r for r in results if isinstance(r, BaseException)]
        assert ingest.rate_limited == 0 and router.throttled == 0
    finally:
        await ingest.close()
        await router.close()
        hold.release()


async def test_a_429_retry_after_is_waited_out_by_every_caller(sb: SandboxRunner) -> None:
    hold = LimiterHold(DIGITEX, sb.url + "/dapi")
    ingest = DigitexClient(sb.url + "/dapi", Secret(TOKEN), hold.limiter, max_attempts=3)
    sent: list[float] = []

    async def stamp(_: httpx.Request) -> None:
        sent.append(time.monotonic())

    ingest.client.event_hooks["request"].append(stamp)
    try:
        async with httpx.AsyncClient(base_url=sb.url) as admin:
            await admin.post("/_sandbox/faults", json={"rate_limit_next": 1, "retry_after_s": 1})
        await ingest.get("currency")  # 429 Retry-After: 1, then the retry passes
        assert ingest.rate_limited == 1 and len(sent) == 2
        assert sent[1] - sent[0] >= 1.0  # Retry-After honoured
    finally:
        await ingest.close()
        hold.release()
