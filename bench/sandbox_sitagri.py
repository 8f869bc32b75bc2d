"""Sitagri sandbox benchmark: sustained price pushes/s over one websocket, and a batch crawl of the tree.

The sandbox runs in its own process (as in production use); one client registers every market
quote (250) on one socket and counts pushes for a fixed window, then crawls the whole reference
tree breadth-first with batch POSTs of up to 250 references. Prints one markdown table row.

    .venv/bin/python bench/sandbox_sitagri.py
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

from marketbus.runtime.http import free_port
from services.sandbox.sitagri import DEFAULT_TOKEN

ROOT = Path(__file__).resolve().parents[1]
RATE = 100.0  # ticks/s per quote: 250 quotes offer 25k updates/s
WINDOW_S = 8.0
HEADERS = {"X-Session-Token": DEFAULT_TOKEN, "Accept-Encoding": "gzip"}


def start_sandbox(port: int) -> subprocess.Popen[bytes]:
    env = os.environ | {"MARKETBUS_SANDBOX_SITAGRI_PORT": str(port), "MARKETBUS_SANDBOX_SITAGRI_RATE": str(RATE),
                        "PYTHONPATH": f"{ROOT}:{ROOT / 'shared'}"}
    return subprocess.Popen([sys.executable, "-m", "services.sandbox", "sitagri"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL)


async def wait_up(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        for _ in range(200):
            try:
                if (await client.get("/_sandbox/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("sandbox did not start")


def refs_in(value: Any) -> list[str]:
    """Every reference a reply mentions (the tree cross-links by reference; embedded currency
    terms and option strikes are addressed under their parent)."""
    if isinstance(value, str):
        return [value] if value.startswith(("/market/", "/news/sources/", "/l10n/")) else []
    if isinstance(value, dict):
        own = []
        if "currencyClass" in value:
            own.append(f"{value['currencyClass']}/terms/{value['code']}")
        if "optionSeries" in value:
            own.append(f"{value['optionSeries']}/strikes/{value['code']}")
        return own + [r for v in value.values() for r in refs_in(v)]
    if isinstance(value, list):
        return [r for v in value for r in refs_in(v)]
    return []


async def crawl(url: str) -> tuple[int, float, int]:
    started = time.perf_counter()
    seen = {"/market/sources", "/market/units", "/market/geoSites", "/market/incoterms", "/market/prodcats",
            "/news/sources"}
    todo, batches = list(seen), 0
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=30) as client:
        while todo:
            chunk, todo = todo[:250], todo[250:]
            replies = (await client.post("/api", json=chunk)).json()
            batches += 1
            for ref in refs_in(replies):
                if ref not in seen:
                    seen.add(ref)
                    todo.append(ref)
    return len(seen), time.perf_counter() - started, batches


async def pushes(url: str, ws_url: str) -> tuple[int, float]:
    async with httpx.AsyncClient(base_url=url, headers=HEADERS) as client:
        tree = (await client.get("/_sandbox/sitagri/tree")).json()
    quotes = [q["ref"] for q in tree["quotes"] if q["price"] == "marketPrice"][:250]
    async with websockets.connect(ws_url + "/api/netbus", subprotocols=[DEFAULT_TOKEN], max_queue=None,
                                  compression=None) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"seq": 1, "data": [q + "/price/register" for q in quotes]}))
        while json.loads(await ws.recv())["seq"] != 1:
            pass
        await asyncio.sleep(0.5)  # let the pump settle
        count, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < WINDOW_S:
            msg = await ws.recv()
            count += msg.startswith('{"seq":-1')
    return len(quotes), count / elapsed


async def main() -> None:
    port = free_port()
    proc = start_sandbox(port)
    try:
        url, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
        await wait_up(url)
        n_quotes, rate = await pushes(url, ws_url)
        n_refs, crawl_s, batches = await crawl(url)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print("| sandbox | websocket price pushes/s (1 socket) | tree crawl via batch POST |")
    print("|---|---|---|")
    print(f"| sitagri | {rate:,.0f} ({n_quotes} quotes at {RATE:g} ticks/s) | {n_refs} refs in {crawl_s:.2f} s "
          f"({batches} batches) |")


if __name__ == "__main__":
    asyncio.run(main())
