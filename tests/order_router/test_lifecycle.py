"""Place -> accepted -> filled, cancel scopes, duplicates, update: real NATS + the Digitex sandbox."""

from __future__ import annotations

from decimal import Decimal

from marketbus.contracts import codec
from marketbus.contracts.orders import CommandAck
from services.order_router import requests as rq
from tests.helpers import wait_for

BTC = "FS-BTCUSD"  # FS:BTCUSD, market id 1, tick 5, lot 1
ETH = "FS-ETHUSD"  # market id 2, tick 0.5


async def _resting_buy_price(env, market_id: int = 1, ticks: int = 40, tick: Decimal = Decimal(5)) -> Decimal:
    bid, _ = await env.mid(market_id)
    return bid - ticks * tick


async def test_place_accepted_then_filled_events_in_order(env):
    await env.router()
    price = await _resting_buy_price(env)
    cmd = rq.place(BTC, "buy", 3, price)
    ack = await rq.send_command(env.nc, cmd)
    assert ack.accepted and ack.client_ids == [cmd.client_id]
    await wait_for(lambda: "accepted" in env.bus.states(cmd.client_id), 5, what="accepted")
    crossed = await env.cross(1, price - 10)
    assert crossed["fills"] >= 1
    await wait_for(lambda: "filled" in env.bus.states(cmd.client_id), 5, what="filled")
    events = env.bus.orders(cmd.client_id)
    assert [e.state for e in events] == ["pending_submit", "submitted", "accepted", "filled"]
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[-1].filled_quantity == Decimal(3) and events[-1].average_price == price
    assert all(e.command_id == cmd.command_id for e in events)
    # the fill, attributed to the order, and the position it opened
    fills = await wait_for(lambda: [f for f in env.bus.of("Fill") if f.client_id == cmd.client_id], 5, what="fill")
    assert sum(f.quantity for f in fills) == 3 and fills[0].price == price and fills[0].side == "buy"
    await wait_for(
        lambda: any(p.market == BTC and p.side == "long" and p.quantity == 3 for p in env.bus.of("Position")),
        5,
        what="position event",
    )
    assert env.bus.of("Balance"), "balances are published"
    # exactly one order at the exchange
    truth = await env.admin_orders()
    assert [o["client_id"] for o in truth["orders"]].count(cmd.client_id) == 1


async def test_duplicate_command_gives_one_order(env):
    await env.router()
    price = await _resting_buy_price(env)
    cmd = rq.place(BTC, "buy", 1, price)
    first = await rq.send_command(env.nc, cmd)
    # the same command again (a client retry), twice: same answer, no second order
    second = await rq.send_command(env.nc, rq.place(BTC, "buy", 1, price, client_id=cmd.client_id,
                                                    command_id=cmd.command_id))
    assert first.accepted and second.accepted
    # a different command re-using the client id is refused
    other = await rq.send_command(env.nc, rq.place(BTC, "buy", 1, price, client_id=cmd.client_id,
                                                   command_id="another-command"))
    assert not other.accepted and "already used" in other.reason
    # the command id re-used for another order, by a client that sets no Nats-Msg-Id (so the
    # stream's de-duplication does not catch it): the first answer again, and nothing is sent
    reused = rq.place(BTC, "buy", 1, price, command_id=cmd.command_id)
    inbox = env.nc.new_inbox()
    replies = await env.nc.subscribe(inbox, max_msgs=1)
    await env.nc.jetstream().publish(rq.command_subject(reused), codec.encode(reused),
                                     headers={**codec.headers_for(reused), rq.REPLY_HEADER: inbox})
    again = codec.decode_as((await replies.next_msg(timeout=5)).data, CommandAck)
    assert again == first
    await wait_for(lambda: "rejected" in env.bus.states(reused.client_id), 5, what="re-used command id rejected")
    assert "was already used" in env.bus.orders(reused.client_id)[-1].reason
    await wait_for(lambda: "accepted" in env.bus.states(cmd.client_id), 5, what="accepted")
    truth = await env.admin_orders()
    assert not [p for p in truth["placements"] if p["client_id"] == reused.client_id]
    placements = [p for p in truth["placements"] if p["client_id"] == cmd.client_id]
    assert placements == [{"trader_id": placements[0]["trader_id"], "market_id": 1, "client_id": cmd.client_id,
                           "attempts": 1, "applied": 1}]
    assert env.bus.states(cmd.client_id)[:3] == ["pending_submit", "submitted", "accepted"]


async def test_cancel_scopes(env):
    await env.router()
    btc = await _resting_buy_price(env)
    eth = await _resting_buy_price(env, 2, 40, Decimal("0.5"))
    b1, b2, b3 = (rq.place(BTC, "buy", 1, btc - i * 5) for i in range(3))
    e1 = rq.place(ETH, "buy", 1, eth)
    for cmd in (b1, b2, b3, e1):
        assert (await rq.send_command(env.nc, cmd)).accepted
    for cmd in (b1, b2, b3, e1):
        await wait_for(lambda c=cmd: "accepted" in env.bus.states(c.client_id), 5, what="accepted")

    # by client ids
    ack = await rq.send_command(env.nc, rq.cancel(BTC, [b1.client_id]))
    assert ack.accepted and ack.client_ids == [b1.client_id]
    await wait_for(lambda: env.bus.states(b1.client_id)[-1] == "cancelled", 5, what="b1 cancelled")
    assert env.bus.states(b1.client_id)[-2:] == ["cancel_pending", "cancelled"]
    assert env.bus.states(b2.client_id)[-1] == "accepted"

    # by market: the rest of BTC, ETH untouched
    ack = await rq.send_command(env.nc, rq.cancel(BTC))
    assert ack.accepted and sorted(ack.client_ids) == sorted([b2.client_id, b3.client_id])
    await wait_for(lambda: all(env.bus.states(c.client_id)[-1] == "cancelled" for c in (b2, b3)), 5, what="BTC")
    assert env.bus.states(e1.client_id)[-1] == "accepted"

    # everything
    ack = await rq.send_command(env.nc, rq.cancel())
    assert ack.accepted and ack.client_ids == [e1.client_id]
    await wait_for(lambda: env.bus.states(e1.client_id)[-1] == "cancelled", 5, what="ETH cancelled")
    truth = await env.admin_orders()
    assert {o["status_name"] for o in truth["orders"]} == {"CANCELED"}


async def test_update_amends_the_live_order(env):
    await env.router()
    price = await _resting_buy_price(env)
    cmd = rq.place(BTC, "buy", 2, price)
    await rq.send_command(env.nc, cmd)
    await wait_for(lambda: "accepted" in env.bus.states(cmd.client_id), 5, what="accepted")
    ack = await rq.send_command(env.nc, rq.update(BTC, cmd.client_id, "buy", 4, price - 5))
    assert ack.accepted, ack.reason
    await wait_for(lambda: any(e.reason == "amended" for e in env.bus.orders(cmd.client_id)), 5, what="amended")
    amended = [e for e in env.bus.orders(cmd.client_id) if e.reason == "amended"][0]
    assert amended.price == price - 5 and amended.quantity == 4 and amended.state == "accepted"
    truth = await env.admin_orders()
    mine = [o for o in truth["orders"] if o["client_id"] == cmd.client_id]
    assert len(mine) == 1 and Decimal(mine[0]["price"]) == price - 5 and Decimal(mine[0]["quantity"]) == 4
    # updating an unknown order is refused and creates nothing
    bad = await rq.send_command(env.nc, rq.update(BTC, rq.new_id(), "buy", 1, price))
    assert not bad.accepted and "unknown order" in bad.reason
    assert len((await env.admin_orders())["orders"]) == 1
