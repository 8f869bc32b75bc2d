"""TickSupply pacing is the shared vendor limiter (:class:`marketbus.vendor.limits.LimiterHold`):
the declared window holds against the sandbox, for every client of the host in the process together."""

from __future__ import annotations

import asyncio
import time

from marketbus.runtime.settings import Secret, load_settings
from marketbus.vendor.limits import TICKSUPPLY, RateWindow, per_second
from services.ingest_ticksupply.client import TickSupplyClient
from services.ingest_ticksupply.settings import TickSupplySettings
from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec
from tests.vendor.pacing import most_in_any_window, record_sends

KEY = Secret("ts_sandbox_key")


def test_the_default_pacing_is_the_declared_window() -> None:
    settings = load_settings(TickSupplySettings, env={})
    assert per_second(settings.requests_per_s) == TICKSUPPLY.limits[0]
    assert per_second(2.5) == RateWindow(2, 1.0) and per_second(0.5) == RateWindow(1, 2.0)


async def test_two_clients_of_one_host_together_stay_within_the_declared_window() -> None:
    limit = 20
    # The sandbox refuses (429) beyond a bucket of `limit` per second with a burst of `limit`.
    async with SandboxRunner(load_spec("ticksupply"), port=0, requests_per_s=limit, burst=limit) as sb:
        a = TickSupplyClient(sb.url + "/v1", KEY, requests_per_s=limit)
        b = TickSupplyClient(sb.url + "/v1", KEY, requests_per_s=limit)
        try:
            assert a.limiter is b.limiter  # one limiter per vendor host and process
            sent_a, sent_b = record_sends(a.http.client), record_sends(b.http.client)
            began = time.monotonic()
            await asyncio.gather(*[c.exchanges() for c in (a, b) for _ in range(15)])
            elapsed = time.monotonic() - began
        finally:
            await a.aclose()
            await b.aclose()
        assert len(sent_a) == len(sent_b) == 15
        assert most_in_any_window(sent_a + sent_b, 1.0) <= limit
        assert a.rate_limited_total == b.rate_limited_total == 0  # the sandbox never had to refuse
        assert elapsed >= 1.0  # 30 calls under 20 per second cannot all go at once
