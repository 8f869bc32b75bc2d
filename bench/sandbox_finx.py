"""Benchmark: FinX sandbox throughput with one lock-step client.

Starts the sandbox in its own process (as ``python -m services.sandbox finx``), then measures for a
few seconds each: tickHistory rows/s over one websocket (100 rows a call), tickSnap replies/s over
the websocket, and REST snaps/s over one keep-alive HTTP connection. Prints one markdown table row.

Run: ``.venv/bin/python bench/sandbox_finx.py [seconds_per_phase]``
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx
import websockets
from common import start_sandbox, wait_ready

KEY = "public"
START = 1_655_251_200_000  # 2022-06-15T00:00:00Z in ms


async def history_rows_per_s(ws_url: str, seconds: float) -> float:
    rows, page = 0, 0
    async with websockets.connect(f"{ws_url}/streamer/{KEY}", max_size=None) as ws:
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            # Walk forward one second per call so no two requests hit the same window.
            ms = START + page * 1000
            date = time.strftime("%Y-%m-%d", time.gmtime(ms // 1000))
            clock = time.strftime("%H:%M:%S", time.gmtime(ms // 1000))
            await ws.send(
                json.dumps(
                    {"APIKey": KEY, "functionName": "tickHistory", "pair": "BTC:USD", "date": date, "time": clock}
                )
            )
            rows += len(json.loads(await ws.recv()))
            page += 1
        return rows / (time.perf_counter() - began)


async def ws_snaps_per_s(ws_url: str, seconds: float) -> float:
    n = 0
    message = json.dumps({"APIKey": KEY, "functionName": "tickSnap", "pair": "BTC:USD"})
    async with websockets.connect(f"{ws_url}/streamer/{KEY}") as ws:
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            await ws.send(message)
            json.loads(await ws.recv())
            n += 1
        return n / (time.perf_counter() - began)


async def rest_snaps_per_s(url: str, seconds: float) -> float:
    n = 0
    async with httpx.AsyncClient(base_url=url) as http:
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            (await http.get(f"/backend/observations/tick/snap?APIKey={KEY}&pair=BTC:USD")).json()
            n += 1
        return n / (time.perf_counter() - began)


async def main(seconds: float) -> None:
    proc, host = start_sandbox("finx")
    try:
        url, ws_url = f"http://{host}", f"ws://{host}"
        await wait_ready(url)
        history = await history_rows_per_s(ws_url, seconds)
        snaps = await ws_snaps_per_s(ws_url, seconds)
        rest = await rest_snaps_per_s(url, seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(
        f"| sandbox finx (1 client) | tickHistory {history:,.0f} rows/s | ws tickSnap {snaps:,.0f}/s | REST snap "
        f"{rest:,.0f}/s |"
    )


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 5.0))
