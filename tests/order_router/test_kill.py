"""kill -9 of the order router process (``python -m services.order_router``) while it places
orders, some of them applied at the exchange with their replies still on the way; a new router
process takes over. What the router promises: every command is carried out once (one order at
the exchange per client id: no command lost, none sent twice) and each order's events are stored
once each, in sequence, and it reaches ``accepted`` (or ``filled``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from marketbus.contracts import codec, subjects
from marketbus.runtime.http import free_port
from services.order_router import requests as rq
from tests.helpers import wait_for

from .conftest import FAST, Env

ROOT = Path(__file__).resolve().parents[2]
BTC = "FS-BTCUSD"


def _spawn(env: Env, log: Path, port: int) -> subprocess.Popen[bytes]:
    settings = {**FAST, "request_timeout_s": 10.0, "log_level": "WARNING"}
    variables = {f"MARKETBUS_ORDER_ROUTER_{k.upper()}": str(v) for k, v in settings.items()}
    return subprocess.Popen(
        [sys.executable, "-m", "services.order_router"], cwd=ROOT,
        env={**os.environ, **variables, "MARKETBUS_ORDER_ROUTER_NATS_URL": env.nats_url,
             "MARKETBUS_ORDER_ROUTER_DIGITEX_URL": env.sandbox.url, "MARKETBUS_ORDER_ROUTER_HTTP_PORT": str(port)},
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )


async def _healthy(port: int) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1.0) as http:
            return (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    except httpx.HTTPError:
        return False


async def _stored_seqs(env: Env, client_id: str) -> list[int]:
    sub = await env.nc.jetstream().pull_subscribe(subjects.order_event(BTC, client_id), stream="ORDERS_EVT")
    try:
        msgs = await sub.fetch(1000, timeout=1)
    finally:
        await sub.unsubscribe()
    return [codec.decode(m.data).seq for m in msgs]


async def test_router_killed_9_mid_placement_and_restarted_places_each_order_once(env: Env, tmp_path: Any) -> None:
    log = tmp_path / "router.log"
    bid, _ = await env.mid(1)
    price = bid - 200
    # the next 4 placements are applied at the exchange but their replies take 4 s: the router
    # is killed while it waits for them (their outcome is known only to the exchange)
    await env.faults(place_timeout_next=4, place_reply_delay_ms=4000)
    port = free_port()
    first = _spawn(env, log, port)
    second: subprocess.Popen[bytes] | None = None
    try:
        await wait_for(lambda: _healthy(port), 60, interval=0.2, what="the first router up")  # a bound (a loaded host)
        commands = [rq.place(BTC, "buy", 1, price) for _ in range(12)]
        for cmd in commands:
            await env.nc.jetstream().publish(subjects.order_command(BTC), codec.encode(cmd),
                                             headers=rq.command_headers(cmd))

        async def applied_with_replies_pending() -> bool:
            return sum(p["applied"] for p in (await env.admin_orders())["placements"]) >= 4

        await wait_for(applied_with_replies_pending, 20, interval=0.1, what="placements applied, replies pending")
        first.send_signal(signal.SIGKILL)
        first.wait(10)

        port = free_port()
        second = _spawn(env, log, port)
        def working(client_id: str) -> bool:  # at the exchange: accepted, or already filled (the market moves)
            return bool({"accepted", "partially_filled", "filled"} & set(env.bus.states(client_id)))

        try:
            await wait_for(lambda: all(working(c.client_id) for c in commands), 60, interval=0.2,
                           what="every order accepted (or filled) after the restart")
        except AssertionError as exc:
            states = {c.client_id[:8]: env.bus.states(c.client_id) for c in commands}
            raise AssertionError(f"{exc}: {states}; {(await env.admin_orders())['placements']}") from None
        placements = {p["client_id"]: p for p in (await env.admin_orders())["placements"]}
        for cmd in commands:  # one order at the exchange for each command: none lost, none twice
            assert placements[cmd.client_id]["applied"] == 1, placements[cmd.client_id]
        assert len(placements) == len(commands)
        for cmd in commands:  # each event stored once, in sequence
            seqs = await _stored_seqs(env, cmd.client_id)
            assert seqs == list(range(1, len(seqs) + 1)), (cmd.client_id, seqs)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
