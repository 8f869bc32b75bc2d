"""Sitagri pacing is the shared vendor limiter (:class:`marketbus.vendor.limits.LimiterHold`): the
declared window holds against the sandbox, for every client of the host in the process together."""

from __future__ import annotations

import asyncio
import time

from marketbus.runtime.settings import Secret, load_settings
from marketbus.vendor.limits import SITAGRI, per_second
from services.ingest_sitagri.client import SitagriClient
from services.ingest_sitagri.settings import SANDBOX_TOKEN, SitagriIngestSettings
from tests.ingest_sitagri.conftest import sandbox
from tests.vendor.pacing import most_in_any_window, record_sends


def test_the_default_pacing_is_the_declared_window() -> None:
    settings = load_settings(SitagriIngestSettings, env={})
    assert per_second(settings.requests_per_s) == SITAGRI.limits[0]


async def test_two_clients_of_one_host_together_stay_within_the_declared_window() -> None:
    limit = 10
    async with sandbox() as sb:
        a = SitagriClient(sb.url, Secret(SANDBOX_TOKEN), requests_per_s=limit)
        b = SitagriClient(sb.url, Secret(SANDBOX_TOKEN), requests_per_s=limit)
        try:
            assert a.limiter is b.limiter  # one limiter per vendor host and process
            sent_a, sent_b = record_sends(a.http.client), record_sends(b.http.client)
            began = time.monotonic()
            await asyncio.gather(*[c.get_raw("/session") for c in (a, b) for _ in range(8)])
            elapsed = time.monotonic() - began
        finally:
            await a.close()
            await b.close()
        assert len(sent_a) == len(sent_b) == 8
        assert most_in_any_window(sent_a + sent_b, 1.0) <= limit
        assert elapsed >= 1.0  # 16 calls under 10 per second cannot all go at once
