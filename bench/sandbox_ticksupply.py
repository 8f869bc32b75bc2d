"""TickSupply sandbox benchmark: export artifact rows/s produced and downloaded, and API requests/s.

One client. Prints one markdown table row:
| sandbox | export rows/s produced | rows/s downloaded+parsed | requests/s |
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import time

import httpx
import requests

from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec

KEY = "ts_sandbox_key"
RATE = 20_000  # ticks/s per instrument
SPAN_S = 10  # seconds of history exported -> 200k rows
HOUR_NS = 3_600_000_000_000


def hammer(url: str, seconds: float) -> float:
    session = requests.Session()
    session.headers["X-Api-Key"] = KEY
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        r = session.get(f"{url}/v1/datastreams", params={"exchange": "binance", "limit": 10})
        assert r.status_code == 200
        n += 1
    return n / (time.perf_counter() - t0)


async def main() -> None:
    async with SandboxRunner(load_spec("ticksupply"), port=0, rate=RATE, requests_per_s=0,
                             export_queued_s=0, export_running_s=0) as sb, \
            httpx.AsyncClient(base_url=sb.url, headers={"X-Api-Key": KEY}, timeout=60) as http:
        start = time.time_ns() // HOUR_NS * HOUR_NS - 2 * HOUR_NS - 5 * 10**9  # crosses an hour boundary
        end = start + SPAN_S * 10**9
        await http.post("/_sandbox/ticksupply/backfill", json={"datastream_id": 101, "start_ns": start, "end_ns": end})

        t0 = time.perf_counter()
        job = (await http.post("/v1/exports", json={"datastream_id": 101, "start_time": str(start),
                                                    "end_time": str(end)})).json()
        while job["status"] not in ("succeeded", "failed"):
            await asyncio.sleep(0.01)
            job = (await http.get(f"/v1/exports/{job['id']}")).json()
        produce_s = time.perf_counter() - t0
        assert job["status"] == "succeeded", job

        t1 = time.perf_counter()
        rows = 0
        for art in (await http.get(f"/v1/exports/{job['id']}/download")).json()["artifacts"]:
            data = (await http.get(art["url"], headers={"X-Api-Key": ""})).content
            rows += sum(1 for _ in csv.reader(io.StringIO(gzip.decompress(data).decode()))) - 1
        download_s = time.perf_counter() - t1

        # A blocking client in its own thread, like a real user process. (httpx.AsyncClient in the
        # server's own loop stalls ~40 ms per keep-alive request on Nagle/delayed-ACK, which would
        # measure the client, not the sandbox.)
        req_s = await asyncio.to_thread(hammer, sb.url, 3.0)

    print("| sandbox | export rows/s produced | rows/s downloaded+parsed | requests/s |")
    print("|---|---|---|---|")
    print(f"| ticksupply ({rows} rows, {SPAN_S}s at {RATE}/s) | {rows / produce_s:,.0f} | "
          f"{rows / download_s:,.0f} | {req_s:,.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
