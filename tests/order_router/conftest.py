"""Fixtures of the order router tests: a private nats-server per test (the ORDERS_CMD work queue
and the KV buckets start empty), a fresh Digitex sandbox, and helpers to run a router and
collect what it publishes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest_asyncio

from marketbus.contracts import codec, subjects
from marketbus.contracts.streams import ensure_all
from services.order_router.app import OrderRouter
from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec

FAST = {
    "request_timeout_s": 0.5, "poll_interval_s": 0.1, "idle_poll_s": 0.3, "reconcile_interval_s": 1.0,
    "rate_per_second": 10_000, "rate_per_minute": 1_000_000, "unknown_poll_s": 0.1, "unknown_absent_polls": 2,
    "max_orders_per_second": 1000, "heartbeat_interval_s": 60.0,
}


class Bus:
    """Everything the router publishes on orders.> (order events by client id, fills, ...)."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    async def on_msg(self, msg: Any) -> None:
        self.events.append(codec.decode(msg.data))

    def orders(self, client_id: str) -> list[Any]:
        return [e for e in self.events if type(e).__name__ == "OrderEvent" and e.client_id == client_id]

    def states(self, client_id: str) -> list[str]:
        return [e.state for e in self.orders(client_id)]

    def of(self, kind: str) -> list[Any]:
        return [e for e in self.events if type(e).__name__ == kind]


class Env:
    def __init__(self, nats_url: str, sandbox: SandboxRunner, nc: nats.NATS, bus: Bus) -> None:
        self.nats_url = nats_url
        self.sandbox = sandbox
        self.nc = nc
        self.bus = bus
        self.routers: list[OrderRouter] = []
        self.http = httpx.AsyncClient(base_url=sandbox.url)

    async def router(self, **overrides: Any) -> OrderRouter:
        settings = {**FAST, **overrides}
        router = OrderRouter(nats_url=self.nats_url, digitex_url=self.sandbox.url, **settings)
        await router.start()
        self.routers.append(router)
        return router

    async def metrics(self, router: OrderRouter) -> dict[str, float]:
        """The router's /metrics as {sample with labels: value}."""
        from prometheus_client.parser import text_string_to_metric_families

        text = (await self.http.get(f"{router.http_url}/metrics")).text
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out

    async def admin_orders(self) -> dict[str, Any]:
        return (await self.http.get("/_sandbox/digitex/orders")).json()

    async def faults(self, **switches: Any) -> None:
        (await self.http.post("/_sandbox/digitex/faults", json=switches)).raise_for_status()

    async def cross(self, market_id: int, price: Any) -> dict[str, Any]:
        response = await self.http.post("/_sandbox/digitex/cross", params={"market_id": market_id, "price": str(price)})
        response.raise_for_status()
        return response.json()

    async def mid(self, market_id: int) -> Any:
        from decimal import Decimal

        book = (await self.http.get("/dapi/v1/exchange/bot/order_book/", params={"market_id": market_id})).json()
        return Decimal(book["bids"][0][0]), Decimal(book["asks"][0][0])

    async def close(self) -> None:
        for router in self.routers:
            await router.stop()
        await self.http.aclose()


@pytest_asyncio.fixture
async def env(nats_server: Any) -> AsyncIterator[Env]:
    async with SandboxRunner(load_spec("digitex"), port=0) as sandbox:
        nc = await nats.connect(nats_server.url)
        await ensure_all(nc.jetstream())
        bus = Bus()
        await nc.subscribe("orders.>", cb=bus.on_msg)
        e = Env(nats_server.url, sandbox, nc, bus)
        try:
            yield e
        finally:
            await e.close()
            await nc.drain()
            await asyncio.sleep(0)


__all__ = ["FAST", "Bus", "Env", "subjects"]
