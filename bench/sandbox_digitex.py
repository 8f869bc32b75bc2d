"""Digitex sandbox throughput with one client: order placements/s and market-data requests/s.

The sandbox runs in its own process (as in `make run`); one httpx client drives it sequentially,
the way the order router and the ingestor do. Prints one markdown table row.
Run: .venv/bin/python bench/sandbox_digitex.py
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
HEADERS = {"Authorization": "Token dgtx_sandbox_token", "Accept": "application/json",
           "User-Agent": "OpenAPI-Generator/0.0.1/python"}
SERVER = """
import asyncio
from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec
async def main():
    async with SandboxRunner(load_spec("digitex"), port=0, rate=20000.0, history_s=120, accept_delay_ms=0) as sb:
        print(sb.url, flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""


async def rate(call, seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        await call(done)
        done += 1
    return done / elapsed


async def run(url: str) -> tuple[float, float, float]:
    async with httpx.AsyncClient(base_url=url + "/dapi/v1/exchange/bot/", headers=HEADERS, timeout=30) as client:
        meta = (await client.get("exchange_info/")).json()["order_meta"]

        async def place(i: int) -> None:
            # Alternate sides so the position stays flat and margin never runs out.
            side = meta["side"]["BUY" if i % 2 == 0 else "SELL"]
            resp = await client.post("trader/order/", json={
                "market_id": 1, "side": side, "type": meta["type"]["MARKET"], "duration": meta["duration"]["IOC"],
                "leverage": 100, "quantity": "1", "price": "0"}, headers={"Content-Type": "application/json"})
            assert resp.status_code == 200, resp.text

        paths = [("order_book/", {"market_id": 1}), ("recent_trades/", {"market_id": 1, "max_trades": 100}),
                 ("markets/", {}), ("exchange_info/", {})]
        # OHLCV is left out: its first call aggregates every tick of the span exactly (at 20k ticks/s a
        # minute bar is 1.2M ticks); at the default rate (10/s) a bar costs ~3 ms and is then cached.

        async def market_data(i: int) -> None:
            path, params = paths[i % len(paths)]
            assert (await client.get(path, params=params)).status_code == 200

        async def tape(_: int) -> None:
            resp = await client.get("recent_trades/", params={"market_id": 1, "max_trades": 1000})
            assert len(resp.json()["recent_trades"]) == 1000

        return await rate(place, SECONDS), await rate(market_data, SECONDS), await rate(tape, SECONDS) * 1000


def main() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SERVER], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONPATH": f"{ROOT}:{ROOT / 'shared'}"})
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        places, md, ticks = asyncio.run(run(url))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print("| sandbox | order placements/s | market-data requests/s | tape ticks served/s (recent_trades) |")
    print("|---|---|---|---|")
    print(f"| digitex (1 client, rate 20k ticks/s) | {places:,.0f} | {md:,.0f} | {ticks:,.0f} |")


if __name__ == "__main__":
    main()
