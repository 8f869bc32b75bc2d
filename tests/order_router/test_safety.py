"""Refusals (validation, risk, kill switch), unknown outcomes and restarts: real NATS + sandbox."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from services.order_router import requests as rq
from tests.helpers import wait_for

BTC = "FS-BTCUSD"  # market id 1, tick 5, lot 1, 0.01 USDC per contract per USD
SPOT = "S-BTCUSDC"  # market id 3, tick 0.5, lot 0.0001


async def _far_bid(env, market_id: int = 1, ticks: int = 40, tick: Decimal = Decimal(5)) -> Decimal:
    bid, _ = await env.mid(market_id)
    return bid - ticks * tick


async def _refused(env, cmd, words: str) -> None:
    ack = await rq.send_command(env.nc, cmd)
    assert not ack.accepted, f"{cmd} was accepted"
    assert words in ack.reason, ack.reason
    await wait_for(lambda: env.bus.states(cmd.client_id) == ["rejected"], 5, what="rejected event")
    event = env.bus.orders(cmd.client_id)[0]
    assert words in event.reason and event.seq == 1


async def _sent(env) -> set[str]:
    return {p["client_id"] for p in (await env.admin_orders())["placements"]}


async def test_validation_refusals_send_nothing(env):
    await env.router()
    price = await _far_bid(env)
    cases = [
        (rq.place("FS-NOPE", "buy", 1, 100), "unknown market"),
        (rq.place(BTC, "buy", 1, price + 1), "tick size"),
        (rq.place(BTC, "buy", Decimal("1.5"), price), "lot size"),
        (rq.place(BTC, "buy", 0, price), "positive"),
        (rq.place(BTC, "buy", 1, None), "needs a price"),
        (rq.place(BTC, "buy", 1, None, order_type="market", duration="GTC"), "market order must be"),
        (rq.place(BTC, "buy", 1, price, leverage=0), "leverage"),
        (rq.place(BTC, "buy", 1, price, leverage=101), "leverage"),
        (rq.place(SPOT, "buy", 1, 41000, leverage=5), "spot"),
        (rq.place(BTC, "sell", 1, price + 400, reduce_only=True), "reduce-only"),
        (rq.place(BTC, "buy", 2_000_000, price), "maximum"),
    ]
    for cmd, words in cases:
        await _refused(env, cmd, words)
    assert not await _sent(env) & {c.client_id for c, _ in cases}


async def test_every_risk_limit(env):
    price = await _far_bid(env)  # one contract is worth price * 0.01 USDC
    router = await env.router(max_order_notional=price * Decimal("0.035"), max_position=4, max_open_orders=2)
    await _refused(env, rq.place(BTC, "buy", 4, price), "notional")
    ok = rq.place(BTC, "buy", 3, price)
    assert (await rq.send_command(env.nc, ok)).accepted
    await _refused(env, rq.place(BTC, "buy", 2, price), "position")
    # market orders are checked against a reference price
    await _refused(env, rq.place(BTC, "sell", 4, None, order_type="market", duration="IOC"), "notional")
    assert (await rq.send_command(env.nc, rq.place(BTC, "sell", 1, price + 400))).accepted
    await _refused(env, rq.place(BTC, "sell", 1, price + 400), "max open orders")
    # what an operator sees on /metrics (the accepted orders are sent after their ack)
    sent = 'marketbus_router_exchange_request_seconds_count{endpoint="trader/order/",outcome="200"}'
    for _ in range(50):
        metrics = await env.metrics(router)
        if metrics.get(sent) == 2:
            break
        await asyncio.sleep(0.1)
    assert metrics['marketbus_router_commands_total{kind="place",outcome="refused"}'] == 4
    assert metrics['marketbus_router_commands_total{kind="place",outcome="accepted"}'] == 2
    assert metrics['marketbus_router_order_transitions_total{state="rejected"}'] == 4
    assert metrics["marketbus_router_open_orders"] == 2 and metrics["marketbus_router_halted"] == 0
    assert metrics[sent] == 2


async def test_orders_per_second_limit(env):
    await env.router(max_orders_per_second=2)
    price = await _far_bid(env)
    cmds = [rq.place(BTC, "buy", 1, price - 5 * i) for i in range(4)]
    acks = await asyncio.gather(*(rq.send_command(env.nc, c) for c in cmds))
    refused = [a for a in acks if not a.accepted]
    assert len(refused) >= 1 and all("per second" in a.reason for a in refused)
    assert sum(a.accepted for a in acks) >= 2


async def test_kill_switch_halts_cancels_and_resumes(env):
    router = await env.router()
    price = await _far_bid(env)
    resting = [rq.place(BTC, "buy", 1, price - 5 * i) for i in range(2)]
    for cmd in resting:
        assert (await rq.send_command(env.nc, cmd)).accepted
    for cmd in resting:
        await wait_for(lambda c=cmd: "accepted" in env.bus.states(c.client_id), 5, what="accepted")

    ack = await rq.send_control(env.nc, "halt", cancel_open_orders=True, reason="test")
    assert ack.accepted and ack.reason == "halted: test"
    assert sorted(ack.client_ids) == sorted(c.client_id for c in resting)
    for cmd in resting:
        await wait_for(lambda c=cmd: env.bus.states(c.client_id)[-1] == "cancelled", 5, what="cancelled")
    assert {o["status_name"] for o in (await env.admin_orders())["orders"]} == {"CANCELED"}

    await _refused(env, rq.place(BTC, "buy", 1, price), "router halted")
    # the state is in KV: a second instance started now is halted too
    second = await env.router()
    assert second.control.halted and router.control.halted
    status = await rq.send_control(env.nc, "status")
    assert status.reason.startswith("halted")

    assert (await rq.send_control(env.nc, "resume")).reason == "running"
    await wait_for(lambda: not router.control.halted and not second.control.halted, 5, what="both resumed")
    cmd = rq.place(BTC, "buy", 1, price)
    assert (await rq.send_command(env.nc, cmd)).accepted
    await wait_for(lambda: "accepted" in env.bus.states(cmd.client_id), 5, what="accepted after resume")


async def _placements(env, client_id: str) -> dict:
    rows = [p for p in (await env.admin_orders())["placements"] if p["client_id"] == client_id]
    assert len(rows) == 1
    return rows[0]


async def test_timeout_on_place_is_unknown_then_resolved(env):
    await env.router()
    await env.faults(place_timeout_next=1, place_reply_delay_ms=1500)
    cmd = rq.place(BTC, "buy", 1, await _far_bid(env))
    assert (await rq.send_command(env.nc, cmd)).accepted
    await wait_for(lambda: "accepted" in env.bus.states(cmd.client_id), 5, what="resolved to accepted")
    states = env.bus.states(cmd.client_id)
    assert states[:2] == ["pending_submit", "unknown"] and "timed out" in env.bus.orders(cmd.client_id)[1].reason
    p = await _placements(env, cmd.client_id)
    assert (p["attempts"], p["applied"]) == (1, 1)


async def test_5xx_after_apply_is_unknown_then_resolved_without_resend(env):
    await env.router()
    await env.faults(place_fail_after_apply_next=1)
    cmd = rq.place(BTC, "buy", 1, await _far_bid(env))
    assert (await rq.send_command(env.nc, cmd)).accepted
    await wait_for(lambda: "accepted" in env.bus.states(cmd.client_id), 5, what="resolved to accepted")
    assert env.bus.states(cmd.client_id)[:2] == ["pending_submit", "unknown"]
    p = await _placements(env, cmd.client_id)
    assert (p["attempts"], p["applied"]) == (1, 1)


async def test_5xx_before_apply_is_unknown_then_resent_once(env):
    await env.router()
    await env.faults(place_fail_before_apply_next=1)
    cmd = rq.place(BTC, "buy", 1, await _far_bid(env))
    assert (await rq.send_command(env.nc, cmd)).accepted
    await wait_for(lambda: "accepted" in env.bus.states(cmd.client_id), 8, what="accepted after re-send")
    states = env.bus.states(cmd.client_id)
    assert states[:4] == ["pending_submit", "unknown", "pending_submit", "submitted"], states
    p = await _placements(env, cmd.client_id)
    assert (p["attempts"], p["applied"]) == (2, 1)
    seqs = [e.seq for e in env.bus.orders(cmd.client_id)]
    assert seqs == list(range(1, len(seqs) + 1))


async def _stored_events(env, market: str, client_id: str) -> list:
    from marketbus.contracts import codec, subjects

    sub = await env.nc.jetstream().pull_subscribe(subjects.order_event(market, client_id), stream="ORDERS_EVT")
    try:
        msgs = await sub.fetch(1000, timeout=1)
    finally:
        await sub.unsubscribe()
    return [codec.decode(m.data) for m in msgs]


async def test_killed_mid_flight_and_restarted_no_duplicate(env):
    first = await env.router(request_timeout_s=10.0)
    await env.faults(place_timeout_next=1, place_reply_delay_ms=4000)
    cmd = rq.place(BTC, "buy", 1, await _far_bid(env))
    assert (await rq.send_command(env.nc, cmd)).accepted
    # the place request is at the exchange, its reply hangs: the router dies now
    await wait_for(lambda: env.sandbox.vendor_app.state.api.engine.placements, 5, what="place arrived")
    await first.stop()
    env.routers.remove(first)
    assert env.bus.states(cmd.client_id) == ["pending_submit"]

    second = await env.router()
    await wait_for(lambda: "accepted" in env.bus.states(cmd.client_id), 8, what="reconciled to accepted")
    p = await _placements(env, cmd.client_id)
    assert (p["attempts"], p["applied"]) == (1, 1)
    assert second.orders[(BTC, cmd.client_id)].state == "accepted"
    # what the ORDERS_EVT stream holds for the order: each seq once (re-publishes are de-duplicated)
    stored = await _stored_events(env, BTC, cmd.client_id)
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
    assert stored[0].state == "pending_submit" and stored[-1].state == "accepted"

    # an order placed by someone else on the account is adopted by reconciliation
    foreign = rq.new_id()
    await env.http.post("/dapi/v1/exchange/bot/trader/order/", headers={"Authorization": "Token dgtx_sandbox_token"},
                        json={"client_id": foreign, "market_id": 1, "side": 1, "type": 2, "duration": 2,
                              "leverage": 1, "quantity": "1", "price": str(await _far_bid(env))})
    await wait_for(lambda: "accepted" in env.bus.states(foreign), 8, what="foreign order adopted")
    assert env.bus.orders(foreign)[-1].reason == "found on the exchange by reconciliation"
