"""Benchmark: the order router against the Digitex sandbox (sandbox in its own process).

1. Throughput: N limit orders (resting, far from the market) published at once on the ORDERS_CMD
   work queue; commands/s until the router has validated, risk-checked and sent all of them to the
   sandbox. Reference in the same run: bare POSTs to the same sandbox with the router's HTTP
   client library (aiohttp), 32 concurrent on 8 connections; and the same with httpx. Also: the
   rate at which the same commands reach their order's ``submitted`` event (persisted, published)
   and every command is acked. The sandbox accepts orders after 50 ms (its default), so the
   router's tracking of acceptances runs during the measurement.
2. Latency at 100 commands/s: time from the command's JetStream publish to the router sending its
   REST request (p50 / p99). Reference: the sandbox's own place round trip (p50).

The commands are published by a separate process (``--client``), as a user's client would be;
the router runs in this one.

Run: ``.venv/bin/python bench/order_router.py [n_orders]``
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import nats
from nats.aio.msg import Msg

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared")]

from common import start_sandbox, wait_ready  # noqa: E402

from marketbus.contracts import codec, streams, subjects  # noqa: E402
from marketbus.runtime.http import free_port  # noqa: E402
from marketbus.runtime.loop import run  # noqa: E402
from marketbus.runtime.natsserver import NatsServer  # noqa: E402
from marketbus.runtime.provision import provision_url  # noqa: E402
from services.order_router import requests as rq  # noqa: E402
from services.order_router.app import OrderRouter  # noqa: E402

TOKEN = {"Authorization": "Token dgtx_sandbox_token"}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


PLACE = "/dapi/v1/exchange/bot/trader/order/"
LATENCY_RATE = 100  # commands/s of the latency run


async def reference_rest(url: str, n: int, concurrency: int, price: Decimal, library: str) -> tuple[float, float]:
    """Bare place requests (no bus, no checks): requests/s and the p50 round trip in ms."""
    body = {"market_id": 1, "side": 1, "type": 2, "duration": 2, "leverage": 1, "quantity": "1", "price": str(price)}
    lat: list[float] = []
    queue = list(range(n))
    if library == "aiohttp":
        session = aiohttp.ClientSession(headers=TOKEN, connector=aiohttp.TCPConnector(limit=8))

        async def post(payload: dict) -> None:
            async with session.post(url + PLACE, json=payload) as r:
                r.raise_for_status()
                await r.read()
    else:
        client = httpx.AsyncClient(base_url=url, headers=TOKEN, limits=httpx.Limits(max_connections=8))

        async def post(payload: dict) -> None:
            (await client.post(PLACE, json=payload)).raise_for_status()

    async def worker() -> None:
        while queue:
            queue.pop()
            t0 = time.perf_counter()
            await post({**body, "client_id": str(uuid.uuid4())})
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    await (session.close() if library == "aiohttp" else client.aclose())
    async with httpx.AsyncClient(base_url=url, headers=TOKEN) as http:
        await http.post(PLACE + "cancel/", json={})
    return n / elapsed, pct(lat, 0.5) * 1000


async def client(nats_url: str, mode: str, price: Decimal, count: int) -> dict[str, Any]:
    """The command publisher, in its own process (as a user's client would be): ``latency`` sends
    ``count`` commands at 100/s, ``throughput`` sends ``count`` at once and waits for every order's
    ``submitted`` event. Times are wall-clock ns, comparable with the router's process."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        if mode == "latency":
            published: dict[str, int] = {}
            start = time.perf_counter()
            for i in range(count):
                c = rq.place("FS-BTCUSD", "buy", 1, price)
                published[c.client_id] = time.time_ns()
                await js.publish(rq.command_subject(c), codec.encode(c), headers=rq.command_headers(c))
                await asyncio.sleep(max(0.0, (i + 1) / LATENCY_RATE - (time.perf_counter() - start)))
            return {"published": published}
        cmds = [rq.place("FS-BTCUSD", "buy", 1, price) for _ in range(count)]
        ids = {c.client_id for c in cmds}
        submitted: set[str] = set()
        all_submitted = asyncio.Event()

        async def on_event(msg: Msg) -> None:
            if b'"state":"submitted"' in msg.data:
                cid = subjects.parse_order_event(msg.subject)[1]
                if cid in ids:
                    submitted.add(cid)
                    if len(submitted) == len(ids):
                        all_submitted.set()

        await nc.subscribe(subjects.ALL_ORDER_EVENTS, cb=on_event)
        t0 = time.time_ns()
        futures = [await js.publish_async(rq.command_subject(c), codec.encode(c), headers=rq.command_headers(c))
                   for c in cmds]
        await asyncio.gather(*futures)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(all_submitted.wait(), 60)
        return {"t0": t0, "done_at": time.time_ns(), "submitted": len(submitted)}
    finally:
        await nc.drain()


async def run_client(nats_url: str, mode: str, price: Decimal, count: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(sys.executable, __file__, "--client", nats_url, mode, str(price),
                                                str(count), stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"command publisher ({mode}) failed")
    return json.loads(out)


async def main(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-router-"))
    server = NatsServer(data_dir=tmp / "nats", port=free_port()).start()
    await provision_url(server.url)  # what `marketbus provision` does before the services start
    # The sandbox on its defaults: orders are accepted 50 ms after they are placed, so the router
    # tracks (and publishes) acceptances while it takes in commands, as it would in production.
    sandbox, address = start_sandbox("digitex")
    url = f"http://{address}"
    router = None
    try:
        await wait_ready(url)
        async with httpx.AsyncClient(base_url=url) as http:
            book = (await http.get("/dapi/v1/exchange/bot/order_book/", params={"market_id": 1})).json()
        price = (Decimal(book["bids"][0][0]) - 1000).quantize(Decimal(5))
        ref_rate, ref_p50 = await reference_rest(url, n, 32, price, "aiohttp")
        httpx_rate, _ = await reference_rest(url, min(n, 1000), 32, price, "httpx")

        router = OrderRouter(
            nats_url=server.url, digitex_url=url, rate_per_second=1_000_000, rate_per_minute=100_000_000,
            max_orders_per_second=1_000_000, max_open_orders=10_000_000, max_position=Decimal(10**9),
            max_order_notional=Decimal(10**12), poll_interval_s=60, idle_poll_s=60, reconcile_interval_s=600,
            request_timeout_s=10, log_level="WARNING", heartbeat_interval_s=60)
        await router.start()
        sent: dict[str, int] = {}

        def on_send(path: str, body: dict) -> None:
            if path == "trader/order/":
                sent[body["client_id"]] = time.time_ns()

        router.client.on_send = on_send

        # 2. latency at 100 commands/s
        published = (await run_client(server.url, "latency", price - 5, LATENCY_RATE * 10))["published"]
        deadline = time.monotonic() + 10
        while len(sent) < len(published) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        lat = [(sent[k] - published[k]) / 1e6 for k in published if k in sent]
        sent.clear()
        # 1. throughput
        result = await run_client(server.url, "throughput", price, n)
        throughput = len(sent) / ((max(sent.values()) - result["t0"]) / 1e9)
        done = result["submitted"]
        completed = done / ((result["done_at"] - result["t0"]) / 1e9)
        await asyncio.sleep(1.0)  # let the replies and acks land
        info = await router.js.consumer_info(streams.ORDER_COMMANDS.name, router.settings.durable)

        print("| figure | target | reference (same run) | ratio |")
        print("|---|---|---|---|")
        print(f"| router: place commands validated, risk-checked and sent to the sandbox: {throughput:,.0f}/s "
              f"({n} commands) | >= 1,000/s | bare REST place to the sandbox, 32 concurrent on 8 connections: "
              f"{ref_rate:,.0f}/s with aiohttp (the router's client), {httpx_rate:,.0f}/s with httpx | "
              f"{throughput / ref_rate:.2f} |")
        print(f"| router: the same commands through to their order's `submitted` event (state persisted, "
              f"published): {completed:,.0f}/s ({done}/{n}; commands left unacked: {info.num_ack_pending}) | "
              f"- (the target is at the send; client, NATS and sandbox share the 2 cores) | - | - |")
        print(f"| router: command published -> REST request sent at {LATENCY_RATE}/s: p50 {pct(lat, 0.5):.2f} ms, "
              f"p99 {pct(lat, 0.99):.2f} ms ({len(lat)}/{len(published)}) | p99 < 5 ms | sandbox place round trip "
              f"p50 {ref_p50:.2f} ms | {pct(lat, 0.99) / 5:.2f} of target |")
    finally:
        if router is not None:
            await router.stop()
        sandbox.terminate()
        sandbox.wait(10)
        server.cleanup()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        _, _, nats_url, mode, price_text, count_text = sys.argv
        print(json.dumps(run(client(nats_url, mode, Decimal(price_text), int(count_text)))))
    else:
        run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))  # uvloop, as the services run
