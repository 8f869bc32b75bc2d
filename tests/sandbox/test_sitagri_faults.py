"""Sitagri sandbox maintenance reboots and the websocket-refusal switch (own sandboxes: they disrupt)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec
from services.sandbox.sitagri import DEFAULT_TOKEN

HEADERS = {"X-Session-Token": DEFAULT_TOKEN}
QUOTE = "/market/sources/FOREX/currency/EURUSD/terms/EURUSDSP"


@pytest.fixture
async def sb() -> AsyncIterator[SandboxRunner]:
    async with SandboxRunner(load_spec("sitagri"), port=0, seed=3, rate=20.0, longpoll_timeout=0.5) as runner:
        yield runner


async def connect(sb: SandboxRunner) -> Any:
    return await websockets.connect(sb.ws_url + "/api/netbus", subprotocols=[DEFAULT_TOKEN])  # type: ignore[list-item]


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_reboot_drops_refuses_and_forgets_listeners(sb: SandboxRunner) -> None:
    async with httpx.AsyncClient(base_url=sb.url, headers=HEADERS, timeout=5) as http:
        await http.post("/api", json=[QUOTE + "/price/register"])  # a long-polling registration
        ws = await connect(sb)
        await ws.send(json.dumps({"seq": 1, "data": QUOTE + "/price/register"}))
        assert (await http.post("/_sandbox/reboot", params={"seconds": 1.0})).status_code == 200
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 3)
        # during maintenance: no connection at all
        with pytest.raises((OSError, InvalidStatus, httpx.TransportError)):
            await connect(sb)

        async def back() -> bool:
            try:
                return (await http.get("/api/session")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(back, timeout=6)
        assert (await http.get("/api/netbus")).json() == []  # the long-polling listener was forgotten
        async with await connect(sb) as ws2:
            await ws2.send(json.dumps({"seq": 2, "data": "/session"}))
            assert json.loads(await asyncio.wait_for(ws2.recv(), 3))["seq"] == 2
            with pytest.raises(asyncio.TimeoutError):  # the old registration did not survive
                await asyncio.wait_for(ws2.recv(), 0.5)
        state = (await http.get("/_sandbox/faults")).json()
        assert state["counts"]["reboots"] == 1


async def test_ws_refuse_forces_long_polling(sb: SandboxRunner) -> None:
    async with httpx.AsyncClient(base_url=sb.url, headers=HEADERS, timeout=5) as http:
        r = await http.post("/_sandbox/sitagri/ws_refuse", params={"enabled": "true"})
        assert r.json() == {"ws_refuse": True}
        with pytest.raises(InvalidStatus):
            await connect(sb)
        # HTTP still works: register via batch and long-poll
        await http.post("/api", json=[QUOTE + "/price/register"])
        updates = (await http.get("/api/netbus")).json()
        assert updates and updates[0]["quote"] == QUOTE
        await http.post("/_sandbox/sitagri/ws_refuse", params={"enabled": "false"})
        async with await connect(sb) as ws:
            assert ws.subprotocol == DEFAULT_TOKEN


async def test_scheduled_maintenance_reboot() -> None:
    async with SandboxRunner(load_spec("sitagri"), port=0, reboot_every_s=0.5, reboot_seconds=0.3) as sb:
        async with httpx.AsyncClient(base_url=sb.url, timeout=5) as admin:

            async def rebooted() -> bool:
                try:
                    return (await admin.get("/_sandbox/faults")).json()["counts"].get("reboots", 0) >= 1
                except httpx.TransportError:
                    return False

            await wait_until(rebooted, timeout=5)
