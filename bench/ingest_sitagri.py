"""Benchmarks of the Sitagri ingestor (run: .venv/bin/python bench/ingest_sitagri.py).

1. Live push path: marketPrice pushes (raw JSON, as the netbus delivers them) normalized and
   published to JetStream through the ingestor's hot path (decode -> MarketPrice -> dedupe ->
   pipelined publish, acked). Target >= 30k/s and >= 0.8 of the reference, the same for every
   ``bench/ingest_*.py`` (``bench/common.py:raw_pipelined_rate``): raw nats-py pipelined
   JetStream publishes of the same events, pre-encoded, on their subjects (the bus's own limit).
2. Reference crawl of the whole sandbox tree with batch requests, published. Target < 10 s.
   Reference: one GET /api (the whole cache in one reply).
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import sys
import tempfile
import time

import httpx
import msgspec

from marketbus.contracts import codec, subjects
from marketbus.runtime.natsserver import NatsServer
from marketbus.runtime.provision import provision_url
from services.ingest_sitagri import normalize
from services.ingest_sitagri.app import RecentIds, SitagriIngestor
from services.ingest_sitagri.settings import SANDBOX_TOKEN
from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import raw_pipelined_rate  # bench/common.py: the reference of every ingest bench

N = 100_000


def pushes(n: int) -> list[msgspec.Raw]:
    out = []
    for i in range(n):
        q = f"/market/sources/EURONEX/future/EMA/deliveries/EMAX{i % 50:02d}"
        d = 1_700_000_000 + i / 1000
        out.append(msgspec.Raw(msgspec.json.encode({
            "code": "marketPrice", "quote": q, "quality": "REALTIME",
            "last": {"date": d, "value": 152.25 + (i % 40) / 4, "volume": 3, "totalVolume": 546 + i, "orders": 78},
            "stats": {"perf": -1.25, "relPerf": -0.8143, "perf1Y": -11.5, "relPerf1Y": -7.0229},
            "first": {"date": 1458295760, "value": 153.25}, "previousLast": {"date": 1458235984, "value": 153.5},
            "settlement": {"date": 1458063366, "value": 155, "openInterest": 14018},
            "high": {"date": 1458295760, "value": 153.25}, "low": {"date": 1458320259, "value": 152.25},
            "ask": {"date": d, "value": 154.5, "volume": 5, "orders": 1},
            "bid": {"date": d, "value": 151.25, "volume": 5, "orders": 1}})))
    return out


async def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    server = NatsServer(data_dir=pathlib.Path(tempfile.mkdtemp()), port=0).start()
    await provision_url(server.url)  # what `marketbus provision` does before the services start
    rows = []
    try:
        async with SandboxRunner(load_spec("sitagri"), port=0) as sb:
            ing = SitagriIngestor(nats_url=server.url, base_url=sb.url, quotes=[], news_sources=[],
                                  heartbeat_interval_s=60.0)
            async with ing:
                await ing.ready(timeout=30)
                # --- crawl -------------------------------------------------------------------
                ing.recent = RecentIds()  # publish everything again (a first crawl)
                t0 = time.perf_counter()
                result = await ing.refresh_reference()
                crawl_s = time.perf_counter() - t0
                async with httpx.AsyncClient(base_url=sb.url, headers={"X-Session-Token": SANDBOX_TOKEN}) as http:
                    t0 = time.perf_counter()
                    (await http.get("/api")).raise_for_status()
                    cache_s = time.perf_counter() - t0
                # --- live push path ------------------------------------------------------------
                raws = pushes(N)
                await ing.flush()
                t0 = time.perf_counter()
                for raw in raws:
                    await ing.on_push(raw)
                await ing.flush()
                push_rate = N / (time.perf_counter() - t0)
                # reference: raw nats-py pipelined publishes of the same events, pre-encoded
                events = [normalize.push(normalize.decode_push(r), time.time_ns()) for r in raws]
                pub_rate, _cpu = await raw_pipelined_rate(server.url, [subjects.for_event(e) for e in events],
                                                    codec.encode_many(events))
            rows.append(("live push path: marketPrice pushes normalized + published (acked)",
                         f"{push_rate:,.0f}/s", ">= 30,000/s and >= 0.8 of the reference",
                         f"raw nats-py pipelined publish of the same events {pub_rate:,.0f}/s",
                         f"{push_rate / pub_rate:.2f}"))
            rows.append((f"reference crawl: {len(result.events)} events, {result.references} refs in "
                         f"{result.requests} batch requests", f"{crawl_s:.2f} s", "< 10 s",
                         f"GET /api whole cache {cache_s:.2f} s", f"{crawl_s / cache_s:.2f}"))
    finally:
        server.cleanup()
    print("| figure | measured | target | reference (same run) | ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    asyncio.run(main())
