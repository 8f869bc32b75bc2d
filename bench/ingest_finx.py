"""Benchmark: FinX ingestor, normalize + publish with JetStream acks.

1. Starts the FinX sandbox in its own process and fetches distinct tickHistory pages over one
   websocket (recorded vendor frames, 100 unsorted rows each), then for each phase starts a fresh
   nats-server (so no phase is de-duplicated against another) and an ingestor whose pipeline is
   fed those frames:
   - single: ``normalize.history`` then ``Ingestor.emit`` per tick, until every ack is in;
   - batch: ``normalize.history`` then ``Ingestor.emit_batch`` (one envelope per page and exchange).
2. Reference, the same for every ``bench/ingest_*.py`` (``bench/common.py:raw_pipelined_rate``):
   raw nats-py pipelined JetStream publishes (reply inbox + one ack subscription, 8192 in
   flight, a Nats-Msg-Id each) of the single path's ticks, pre-encoded, on their subjects, on the
   same kind of fresh server. Reference, single and batch alternate over ``rounds`` rounds; each
   path's ratio is to the reference of its own round.
3. End to end from the sandbox: the real ingestor back-filling over its websocket session for a
   few seconds (bounded by the sandbox's lock-step reply rate, measured alongside).

Run: ``.venv/bin/python bench/ingest_finx.py [pages] [rounds]``; prints markdown table rows.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared")]

from common import FreshNats, Rounds, raw_pipelined_rate, start_sandbox, wait_ready  # noqa: E402

from marketbus.contracts import codec, subjects  # noqa: E402
from services.ingest_finx import normalize  # noqa: E402
from services.ingest_finx.app import FinxIngestor  # noqa: E402

KEY = "public"
START_NS = 1_655_251_200_000_000_000  # 2022-06-15T00:00:00Z


class Fed(FinxIngestor):
    """The ingestor with its bus plumbing, fed recorded frames instead of its own session."""

    async def on_start(self) -> None:
        pass


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


async def run_fed(url: str, frames: list[str], batch: bool) -> tuple[tuple[float, float], int]:
    ing = Fed(nats_url=url, heartbeat_interval_s=3600, log_level="WARNING")
    await ing.start()
    try:
        n = 0
        began, cpu = time.perf_counter(), time.process_time()
        for frame in frames:
            ticks, _bad = normalize.history(frame, time.time_ns())
            if batch:
                n += await ing.emit_batch(ticks, replay=True)
            else:
                for tick in ticks:
                    await ing.emit(tick)
                n += len(ticks)
        await ing.flush()
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
        assert ing.publisher is not None and ing.publisher.duplicates == 0
    finally:
        await ing.stop()
    return (n / elapsed, n / cpu), n


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


async def main(pages: int, rounds: int) -> None:
    proc, host = start_sandbox("finx")
    try:
        await wait_ready(f"http://{host}")
        began = time.perf_counter()
        frames = await fetch_pages(f"ws://{host}", pages)
        fetch_rate = pages * 100 / (time.perf_counter() - began)
        single_frames = frames[: max(1, pages // 2)]
        # the reference payloads: the single path's ticks, encoded once, on their own subjects
        ticks = [t for f in single_frames for t in normalize.history(f, time.time_ns())[0]]
        payloads = codec.encode_many(ticks)
        subjects_ = [subjects.for_event(t) for t in ticks]
        r = Rounds()
        n_single = n_batch = 0
        for _ in range(rounds):  # alternating: each round's paths see the same host
            async with FreshNats() as url:
                r.add("raw", await raw_pipelined_rate(url, subjects_, payloads))
            async with FreshNats() as url:
                rate, n_single = await run_fed(url, single_frames, batch=False)
                r.add("single", rate)
            async with FreshNats() as url:
                rate, n_batch = await run_fed(url, frames, batch=True)
                r.add("batch", rate)
        async with FreshNats() as url:
            e2e = await end_to_end(url, f"ws://{host}", 3.0)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    raw = r.median("raw")
    print("| figure (medians of alternating rounds) | measured | target | reference: raw nats-py pipelined "
          "JetStream publish of the same ticks (bench/common.py), same rounds | ratio to the same round's "
          "reference: median (min-max) |")
    print("|---|---|---|---|---|")
    print(f"| ingest_finx single events (normalize + emit + ack), {n_single:,} ticks | {r.median('single'):,.0f} ev/s "
          f"| >= 0.8 of the reference | {raw:,.0f} msg/s | {r.ratio_text('single', 'raw')} |")
    print(f"| ingest_finx history pages as batches (normalize + emit_batch + ack), {n_batch:,} ticks "
          f"| {r.median('batch'):,.0f} ev/s | >= 300,000 ev/s | {raw:,.0f} msg/s | {r.ratio_text('batch', 'raw')} |")
    print(f"| ingest_finx end to end from the sandbox (ws back-fill, 3 s) | {e2e:,.0f} ev/s | sandbox-bound "
          f"| sandbox tickHistory alone {fetch_rate:,.0f} rows/s | {e2e / fetch_rate:.2f} |")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000, int(sys.argv[2]) if len(sys.argv) > 2 else 3))
