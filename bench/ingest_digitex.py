"""Benchmark: Digitex ingestor, normalize + publish with JetStream acks.

Starts the Digitex sandbox in its own process with a fast tape (so that successive
``recent_trades`` polls return new trades), records recent_trades pages (1000 trades each) from
the three markets over HTTP, then on fresh nats-servers feeds them through the ingestor pipeline:
- single: ``normalize.recent_trades`` (de-duplicated by trade_id, as the poll loop does) then
  ``DigitexIngestor.emit_trades``, the poll loop's publish path (one message per trade, metrics
  per page), until every ack is in;
- single via ``Ingestor.emit``: the same, with the generic per-event ``emit`` of the runtime
  (shows what the runtime's per-event path costs);
- batch: the same, each page published with ``Ingestor.emit_batch``.
Reference, the same for every ``bench/ingest_*.py`` (``bench/common.py:raw_pipelined_rate``):
raw nats-py pipelined JetStream publishes of the same trades, pre-encoded, on their subjects.
The reference and the three paths alternate over ``rounds`` rounds (a fresh server each); each
path's ratio is to the reference of its own round.

Run: ``.venv/bin/python bench/ingest_digitex.py [seconds_of_recording] [rounds]``; prints markdown rows.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared"), str(ROOT / "bench")]

from common import FreshNats, Rounds, raw_pipelined_rate, start_sandbox, wait_ready  # noqa: E402

from marketbus.contracts import codec, subjects  # noqa: E402
from services.ingest_digitex import normalize  # noqa: E402
from services.ingest_digitex.app import DigitexIngestor  # noqa: E402

MARKETS = {1: "FS-BTCUSD", 2: "FS-ETHUSD", 3: "S-BTCUSDC"}
VENUE = "DIGITEX"


class Fed(DigitexIngestor):
    """The ingestor with its bus plumbing, fed recorded pages instead of its own poll loops."""

    async def on_start(self) -> None:
        pass


async def record(url: str, seconds: float, wanted: int) -> list[tuple[bytes, int, int | None]]:
    """(payload, market_id, after_id) for successive recent_trades polls, as the poll loop sees them."""
    pages: list[tuple[bytes, int, int | None]] = []
    last: dict[int, int | None] = dict.fromkeys(MARKETS)
    total = 0
    async with httpx.AsyncClient(base_url=f"{url}/dapi/v1/exchange/bot/") as http:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and total < wanted:
            for market_id in MARKETS:
                body = (await http.get("recent_trades/", params={"market_id": market_id, "max_trades": 1000})).content
                trades, _bad, _oldest = normalize.recent_trades(body, MARKETS[market_id], VENUE, 0, last[market_id])
                if trades:
                    pages.append((body, market_id, last[market_id]))
                    last[market_id] = int(trades[-1].trade_id or 0)
                    total += len(trades)
    return pages


async def run_fed(url: str, pages: list[tuple[bytes, int, int | None]], mode: str) -> tuple[tuple[float, float], int]:
    """mode: ``page`` (emit_trades, the poll loop's path), ``emit`` (Ingestor.emit per trade) or
    ``batch`` (emit_batch)."""
    ing = Fed(nats_url=url, heartbeat_interval_s=3600, log_level="WARNING")
    await ing.start()
    try:
        n = 0
        began, cpu = time.perf_counter(), time.process_time()
        for body, market_id, after in pages:
            trades, _bad, _oldest = normalize.recent_trades(body, MARKETS[market_id], VENUE, time.time_ns(), after)
            if mode == "page":
                n += await ing.emit_trades(trades)
            elif mode == "batch":
                n += await ing.emit_batch(trades)
            else:
                for trade in trades:
                    await ing.emit(trade)
                n += len(trades)
        await ing.flush()
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
        assert ing.publisher is not None and ing.publisher.duplicates == 0
    finally:
        await ing.stop()
    return (n / elapsed, n / cpu), n


async def main(seconds: float, rounds: int) -> None:
    # 20k trades/s per market: each poll finds ~1000 new trades
    proc, host = start_sandbox("digitex", {"MARKETBUS_SANDBOX_DIGITEX_RATE": "20000",
                                           "MARKETBUS_SANDBOX_DIGITEX_HISTORY_S": "60"})
    try:
        await wait_ready(f"http://{host}")
        pages = await record(f"http://{host}", seconds, 150_000)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    trades = [t for body, m, after in pages for t in normalize.recent_trades(body, MARKETS[m], VENUE, 0, after)[0]]
    payloads = codec.encode_many(trades)
    subjects_ = [subjects.for_event(t) for t in trades]
    r = Rounds()
    counts = {}
    for _ in range(rounds):  # alternating: each round's paths see the same host
        async with FreshNats() as url:
            r.add("raw", await raw_pipelined_rate(url, subjects_, payloads))
        for mode in ("page", "emit", "batch"):
            async with FreshNats() as url:
                rate, counts[mode] = await run_fed(url, pages, mode)
                r.add(mode, rate)
    raw = r.median("raw")
    print("| figure (medians of alternating rounds) | measured | target | reference: raw nats-py pipelined "
          "JetStream publish of the same trades (bench/common.py), same rounds | ratio to the same round's "
          "reference: median (min-max) |")
    print("|---|---|---|---|---|")
    print(f"| ingest_digitex single trades (normalize + emit_trades + ack, one message per trade), "
          f"{counts['page']:,} trades | {r.median('page'):,.0f} ev/s | >= 0.8 of the reference | {raw:,.0f} msg/s "
          f"| {r.ratio_text('page', 'raw')} |")
    print(f"| ingest_digitex single trades via the generic Ingestor.emit per trade, {counts['emit']:,} trades "
          f"| {r.median('emit'):,.0f} ev/s | (runtime path, for comparison) | {raw:,.0f} msg/s "
          f"| {r.ratio_text('emit', 'raw')} |")
    print(f"| ingest_digitex recent_trades pages as batches (normalize + emit_batch + ack), {counts['batch']:,} trades "
          f"| {r.median('batch'):,.0f} ev/s | >= 300,000 ev/s | {raw:,.0f} msg/s | {r.ratio_text('batch', 'raw')} |")


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 8.0, int(sys.argv[2]) if len(sys.argv) > 2 else 3))
