"""Benchmark: TickSupply ingest, from a sandbox artifact (gzipped CSV) to JetStream-acked publishes.

Setup: an embedded nats-server and the TickSupply sandbox in this process; one real export of
~40 minutes of one instrument at 100 trades/s (~240k rows) is downloaded once. Then, each on a
fresh set of event ids:
- reference: raw nats-py pipelined JetStream publishes (reply inbox + one ack subscription,
  trade-sized payloads with Nats-Msg-Id), messages/s;
- single: ``publish_artifact`` with one message per trade (gunzip, parse, Decimal, ids, encode,
  publish, every ack awaited), events/s;
- batch: the same with batch envelopes (the ingestor's default), events/s.
The three are interleaved over ``ROUNDS`` rounds and the best of each is reported (the machine is
shared: the best run is the least disturbed one); the median is printed in a comment.
Prints markdown table rows (figure, target, reference measured in the same run, ratio).

Run: ``.venv/bin/python bench/ingest_ticksupply.py``
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import nats

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared")]

from marketbus.contracts import codec  # noqa: E402
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
RAW_MESSAGES = 100_000
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


async def raw_pipelined(nc: nats.NATS, payload: bytes, n: int, window: int = 8192) -> float:
    """Messages/s of the bare nats-py pipeline: publish with a reply inbox, count acks."""
    inbox = nc.new_inbox()
    done = asyncio.Event()
    acked = 0
    slots = asyncio.Semaphore(window)

    async def on_ack(_msg: object) -> None:
        nonlocal acked
        acked += 1
        slots.release()
        if acked == n:
            done.set()

    sub = await nc.subscribe(inbox + ".*", cb=on_ack, pending_msgs_limit=-1, pending_bytes_limit=-1)
    subject = "md.trade.ticksupply.binance.BENCHRAW"
    began = time.perf_counter()
    for i in range(n):
        await slots.acquire()
        await nc.publish(subject, payload, reply=f"{inbox}.{i}", headers={"Nats-Msg-Id": f"raw-{began}-{i}"})
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - began
    await sub.unsubscribe()
    return n / elapsed


async def ingest_rate(svc: TickSupplyIngestor, artifacts: list[bytes], ds_id: int, mode: str) -> tuple[float, int]:
    svc.settings.publish_mode = mode  # type: ignore[misc]
    ds = normalize.DatastreamRef(datastream_id=ds_id, exchange="binance", instrument=f"BENCH{ds_id}",
                                 stream_type="trade", wire_format="json")
    began = time.perf_counter()
    events = 0
    for data in artifacts:
        events += await svc.publish_artifact(ds, data)  # returns once every message is acked
    return events / (time.perf_counter() - began), events


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
                sample = normalize.trades(ds, normalize.parse_artifact(artifacts[0]).rows[:1], time.time_ns())[0]
                payload = codec.encode(sample)
                svc = TickSupplyIngestor(nats_url=server.url, base_url=sb.url + "/v1", datastreams=[],
                                         catalog_interval_s=0, log_level="WARNING")
                async with svc:
                    # warm-up (imports, caches, stream files)
                    await raw_pipelined(nc, payload, 20_000)
                    await ingest_rate(svc, artifacts[:1], 9000, "batch")
                    raws, singles, batches = [], [], []
                    for r in range(ROUNDS):
                        raws.append(await raw_pipelined(nc, payload, RAW_MESSAGES))
                        singles.append((await ingest_rate(svc, artifacts, 9100 + r, "single"))[0])
                        batches.append((await ingest_rate(svc, artifacts, 9200 + r, "batch"))[0])
                await nc.close()
        finally:
            server.cleanup()
    ref, single, batch = max(raws), max(singles), max(batches)
    med = statistics.median
    print(
        f"<!-- {len(artifacts)} artifacts, {rows} rows, {len(payload)}-byte trade payload; best of {ROUNDS} rounds; "
        f"medians: raw {med(raws):,.0f} msgs/s, single {med(singles):,.0f} events/s, "
        f"batch {med(batches):,.0f} events/s -->"
    )
    print("| figure | target | reference (raw nats-py pipelined JetStream publish, same run) | ratio |")
    print("|---|---|---|---|")
    print(f"| ticksupply artifact -> acked publish, single events: {single:,.0f} events/s "
          f"| >= 50,000 events/s | {ref:,.0f} msgs/s | {single / ref:.2f} |")
    print(f"| ticksupply artifact -> acked publish, batch envelopes: {batch:,.0f} events/s "
          f"| >= 300,000 events/s | {ref:,.0f} msgs/s | {batch / ref:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
