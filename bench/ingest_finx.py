"""Benchmark: FinX ingestor, normalize + publish with JetStream acks.

1. Starts the FinX sandbox in its own process and fetches distinct tickHistory pages over one
   websocket (recorded vendor frames, 100 unsorted rows each), then for each phase starts a fresh
   nats-server (so no phase is de-duplicated against another) and an ingestor whose pipeline is
   fed those frames:
   - single: ``normalize.history`` then ``Ingestor.emit`` per tick, until every ack is in;
   - batch: ``normalize.history`` then ``Ingestor.emit_batch`` (one envelope per page and exchange).
2. Reference in the same run: raw nats-py pipelined JetStream publishes (reply inbox + one ack
   subscription, 8192 in flight) of pre-encoded tick JSON, on the same kind of fresh server.
3. End to end from the sandbox: the real ingestor back-filling over its websocket session for a
   few seconds (bounded by the sandbox's lock-step reply rate, measured alongside).

Run: ``.venv/bin/python bench/ingest_finx.py [pages]``; prints markdown table rows.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared")]

from common import start_sandbox, wait_ready  # noqa: E402

from marketbus.contracts import codec  # noqa: E402
from marketbus.contracts.streams import ensure_all  # noqa: E402
from marketbus.runtime.natsserver import NatsServer  # noqa: E402
from services.ingest_finx import normalize  # noqa: E402
from services.ingest_finx.app import FinxIngestor  # noqa: E402

KEY = "public"
START_NS = 1_655_251_200_000_000_000  # 2022-06-15T00:00:00Z


class Fed(FinxIngestor):
    """The ingestor with its bus plumbing, fed recorded frames instead of its own session."""

    async def on_start(self) -> None:
        pass


class Nats:
    """A fresh nats-server with the marketbus streams."""

    async def __aenter__(self) -> str:
        self.dir = tempfile.TemporaryDirectory()
        self.server = NatsServer(data_dir=Path(self.dir.name), port=0).start()
        nc = await nats.connect(self.server.url)
        await ensure_all(nc.jetstream())
        await nc.close()
        return self.server.url

    async def __aexit__(self, *exc: object) -> None:
        self.server.cleanup()
        self.dir.cleanup()


async def raw_pipelined_rate(url: str, payloads: list[bytes], subject_of: Any, window: int = 8192) -> float:
    """Raw nats-py: publish with a reply inbox, one wildcard ack subscription, ``window`` in
    flight; returns acked messages per second."""
    nc = await nats.connect(url)
    prefix = nc.new_inbox() + "."
    acked = 0
    done = asyncio.Event()
    slots = asyncio.Semaphore(window)
    total = len(payloads)

    async def on_ack(msg: Any) -> None:
        nonlocal acked
        acked += 1
        slots.release()
        if acked == total:
            done.set()

    await nc.subscribe(prefix + "*", cb=on_ack, pending_msgs_limit=-1, pending_bytes_limit=-1)
    began = time.perf_counter()
    for i, payload in enumerate(payloads):
        await slots.acquire()
        await nc.publish(subject_of(i), payload, reply=f"{prefix}{i}", headers={"Nats-Msg-Id": f"raw-{i}"})
    await asyncio.wait_for(done.wait(), 60)
    elapsed = time.perf_counter() - began
    await nc.close()
    return total / elapsed


async def fetch_pages(ws_url: str, pages: int) -> list[str]:
    """Distinct history windows (2 s apart; a page spans ~0.33 s at the default rate)."""
    frames = []
    async with websockets.connect(f"{ws_url}/streamer/{KEY}", max_size=None) as ws:
        await ws.send(json.dumps({"APIKey": KEY, "functionName": "authenticate"}))
        await ws.recv()
        for i in range(pages):
            date, clock = normalize.request_date_time(START_NS + i * 2_000_000_000)
            await ws.send(
                json.dumps(
                    {"APIKey": KEY, "functionName": "tickHistory", "pair": "BTC:USD", "date": date, "time": clock}
                )
            )
            frames.append(await ws.recv())
    return frames


async def run_fed(url: str, frames: list[str], batch: bool) -> tuple[float, int]:
    ing = Fed(nats_url=url, heartbeat_interval_s=3600, log_level="WARNING")
    await ing.start()
    try:
        n = 0
        began = time.perf_counter()
        for frame in frames:
            ticks, _bad = normalize.history(frame, time.time_ns())
            if batch:
                n += await ing.emit_batch(ticks, replay=True)
            else:
                for tick in ticks:
                    await ing.emit(tick)
                n += len(ticks)
        await ing.flush()
        elapsed = time.perf_counter() - began
        assert ing.publisher is not None and ing.publisher.duplicates == 0
    finally:
        await ing.stop()
    return n / elapsed, n


async def end_to_end(url: str, ws_url: str, seconds: float) -> float:
    ing = FinxIngestor(nats_url=url, ws_url=ws_url, history_start="2022-06-15T00:00:00Z", heartbeat_interval_s=3600,
                       snap_interval_s=3600, log_level="WARNING")
    await ing.start()
    try:
        state = ing.pairs["BTC:USD"]
        while ing.metrics.events_out.labels("finx", "tick")._value.get() == 0:
            await asyncio.sleep(0.01)
        first = ing.metrics.events_out.labels("finx", "tick")._value.get()
        began = time.perf_counter()
        await asyncio.sleep(seconds)
        await ing.flush()
        n = ing.metrics.events_out.labels("finx", "tick")._value.get() - first
        rate = n / (time.perf_counter() - began)
        assert state.cursor > START_NS
    finally:
        await ing.stop()
    return rate


async def main(pages: int) -> None:
    proc, host = start_sandbox("finx")
    try:
        await wait_ready(f"http://{host}")
        began = time.perf_counter()
        frames = await fetch_pages(f"ws://{host}", pages)
        fetch_rate = pages * 100 / (time.perf_counter() - began)
        # the reference payloads: the same ticks, encoded once, on their own subjects
        ticks = [t for f in frames[: max(1, pages // 2)] for t in normalize.history(f, time.time_ns())[0]]
        payloads = codec.encode_many(ticks)
        subjects = [f"md.tick.finx.{t.venue}.{t.symbol}" for t in ticks]
        async with Nats() as url:
            raw = await raw_pipelined_rate(url, payloads, subjects.__getitem__)
        async with Nats() as url:
            single, n_single = await run_fed(url, frames[: max(1, pages // 2)], batch=False)
        async with Nats() as url:
            batched, n_batch = await run_fed(url, frames, batch=True)
        async with Nats() as url:
            e2e = await end_to_end(url, f"ws://{host}", 3.0)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print("| figure | measured | target | reference (raw nats-py pipelined, same run) | ratio |")
    print("|---|---|---|---|---|")
    print(
        f"| ingest_finx single events (normalize + emit + ack), {n_single:,} ticks | {single:,.0f} ev/s | >= 50,000 "
        f"ev/s | {raw:,.0f} msg/s | {single / raw:.2f} |"
    )
    print(
        f"| ingest_finx history pages as batches (normalize + emit_batch + ack), {n_batch:,} ticks | {batched:,.0f} "
        f"ev/s | >= 300,000 ev/s | {raw:,.0f} msg/s | {batched / raw:.2f} |"
    )
    print(f"| ingest_finx end to end from the sandbox (ws back-fill, 3 s) | {e2e:,.0f} ev/s | sandbox-bound "
          f"| sandbox tickHistory alone {fetch_rate:,.0f} rows/s | {e2e / fetch_rate:.2f} |")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
