"""Benchmark: TickSupply ingest, from a sandbox artifact (gzipped CSV) to JetStream-acked publishes.

Setup: an embedded nats-server and the TickSupply sandbox in this process; one real export of
~40 minutes of one instrument at 100 trades/s (~240k rows) is downloaded once. Then, each on a
fresh set of event ids:
- reference, the same for every ``bench/ingest_*.py`` (``bench/common.py:raw_pipelined_rate``):
  raw nats-py pipelined JetStream publishes (reply inbox + one ack subscription, a Nats-Msg-Id
  each) of the first artifact's trades, pre-encoded, on their subject, messages/s;
- single: ``publish_artifact`` with one message per trade (gunzip, parse, Decimal, ids, encode,
  publish, every ack awaited), events/s;
- batch: the same with batch envelopes (the ingestor's default), events/s.
The three alternate over ``ROUNDS`` rounds; medians are reported, and each path's ratio is to
the reference of its own round (median, min-max).
Prints markdown table rows (figure, target, reference measured in the same run, ratio).

Run: ``.venv/bin/python bench/ingest_ticksupply.py``
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

import httpx
import nats

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared"), str(ROOT / "bench")]

from common import Rounds, raw_pipelined_rate  # noqa: E402

from marketbus.contracts import codec, subjects  # noqa: E402
from marketbus.contracts.streams import ensure_all  # noqa: E402
from marketbus.runtime.natsserver import NatsServer  # noqa: E402
from services.ingest_ticksupply import normalize  # noqa: E402
from services.ingest_ticksupply.app import TickSupplyIngestor  # noqa: E402
from services.sandbox.common.base import SandboxRunner  # noqa: E402
from services.sandbox.registry import load_spec  # noqa: E402

KEY = "ts_sandbox_key"
DS = 101
MINUTES = 30
ROUNDS = 3
RATE = 100.0


async def fetch_artifacts(sb: SandboxRunner) -> list[bytes]:
    start = (time.time_ns() - MINUTES * 60_000_000_000) // 1000 * 1000
    end = start + MINUTES * 60_000_000_000
    async with httpx.AsyncClient(base_url=sb.url, headers={"X-Api-Key": KEY}, timeout=60) as http:
        r = await http.post(
            "/_sandbox/ticksupply/backfill", json={"datastream_id": DS, "start_ns": start, "end_ns": end}
        )
        r.raise_for_status()
        job = (await http.post("/v1/exports", json={"datastream_id": DS, "start_time": str(start),
                                                    "end_time": str(end)})).json()
        while (status := (await http.get(f"/v1/exports/{job['id']}")).json()["status"]) != "succeeded":
            assert status in ("queued", "running"), status
            await asyncio.sleep(0.1)
        listing = (await http.get(f"/v1/exports/{job['id']}/download")).json()
        return [(await http.get(a["url"])).content for a in listing["artifacts"]]


async def ingest_rate(svc: TickSupplyIngestor, artifacts: list[bytes], ds_id: int,
                      mode: str) -> tuple[tuple[float, float], int]:
    svc.settings.publish_mode = mode  # type: ignore[misc]
    ds = normalize.DatastreamRef(datastream_id=ds_id, exchange="binance", instrument=f"BENCH{ds_id}",
                                 stream_type="trade", wire_format="json")
    began, cpu = time.perf_counter(), time.process_time()
    events = 0
    for data in artifacts:
        events += await svc.publish_artifact(ds, data)  # returns once every message is acked
    return (events / (time.perf_counter() - began), events / (time.process_time() - cpu)), events


async def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(data_dir=Path(tmp), port=0).start()
        try:
            async with SandboxRunner(load_spec("ticksupply"), port=0, rate=RATE, export_queued_s=0.0,
                                     export_running_s=0.0, requests_per_s=0, max_export_rows=10_000_000) as sb:
                artifacts = await fetch_artifacts(sb)
                rows = sum(normalize.parse_artifact(a).total_lines for a in artifacts)
                nc = await nats.connect(server.url)
                await ensure_all(nc.jetstream())
                ds = normalize.DatastreamRef(datastream_id=DS, exchange="binance", instrument="BTCUSDT",
                                             stream_type="trade")
                # the reference: the first artifact's trades, encoded, on their subject
                sample = normalize.trades(ds, normalize.parse_artifact(artifacts[0]).rows, time.time_ns())
                payloads = codec.encode_many(sample)
                subjects_ = [subjects.for_event(t) for t in sample]
                svc = TickSupplyIngestor(nats_url=server.url, base_url=sb.url + "/v1", datastreams=[],
                                         catalog_interval_s=0, log_level="WARNING")
                r = Rounds()
                async with svc:
                    # warm-up (imports, caches, stream files)
                    await raw_pipelined_rate(server.url, subjects_[:20_000], payloads[:20_000])
                    await ingest_rate(svc, artifacts[:1], 9000, "batch")
                    for i in range(ROUNDS):
                        r.add("raw", await raw_pipelined_rate(server.url, subjects_, payloads))
                        r.add("single", (await ingest_rate(svc, artifacts, 9100 + i, "single"))[0])
                        r.add("batch", (await ingest_rate(svc, artifacts, 9200 + i, "batch"))[0])
                await nc.close()
        finally:
            server.cleanup()
    ref = r.median("raw")
    print(f"<!-- {len(artifacts)} artifacts, {rows} rows; reference: {len(payloads):,} trades of "
          f"{len(payloads[0])} bytes; {ROUNDS} alternating rounds -->")
    print("| figure (medians of alternating rounds) | target | reference: raw nats-py pipelined JetStream publish of "
          "the same trades (bench/common.py), same rounds | ratio to the same round's reference: median (min-max) |")
    print("|---|---|---|---|")
    print(f"| ticksupply artifact -> acked publish, single events: {r.median('single'):,.0f} events/s "
          f"| >= 0.8 of the reference | {ref:,.0f} msgs/s | {r.ratio_text('single', 'raw')} |")
    print(f"| ticksupply artifact -> acked publish, batch envelopes: {r.median('batch'):,.0f} events/s "
          f"| >= 300,000 events/s | {ref:,.0f} msgs/s | {r.ratio_text('batch', 'raw')} |")


if __name__ == "__main__":
    asyncio.run(main())
