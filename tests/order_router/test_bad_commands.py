"""Commands that used to stall the order router: every one is refused with a reason, settled
(never redelivered for ever), and the router goes on routing. Real NATS + the Digitex sandbox."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import msgspec

from marketbus.contracts import CommandAck, DeadLetter, codec
from services.order_router import requests as rq
from tests.helpers import wait_for

BTC = "FS-BTCUSD"  # market id 1, tick 5, lot 1


class Letters:
    def __init__(self) -> None:
        self.items: list[DeadLetter] = []

    async def on_msg(self, msg: Any) -> None:
        letter = codec.decode(msg.data)
        if isinstance(letter, DeadLetter):
            self.items.append(letter)


async def _letters(env: Any) -> Letters:
    letters = Letters()
    await env.nc.subscribe("dlq.order_router.>", cb=letters.on_msg)
    return letters


async def _queue_settled(env: Any, router: Any) -> bool:
    info = await env.nc.jetstream().consumer_info("ORDERS_CMD", router.settings.durable)
    return info.num_ack_pending == 0 and info.num_pending == 0


async def _still_routes(env: Any) -> None:
    bid, _ = await env.mid(1)
    good = rq.place(BTC, "buy", 1, bid - 200)
    ack = await rq.send_command(env.nc, good, timeout=10)
    assert ack is not None and ack.accepted, ack
    await wait_for(lambda: "accepted" in env.bus.states(good.client_id), 10, what="the good order accepted")


async def _send_raw(env: Any, cmd: Any, **fields: Any) -> CommandAck:
    """Send ``cmd`` with ``fields`` replaced in its JSON by values its contract refuses (the
    contracts refuse to build them; anyone publishing on orders.cmd.> can send them) and return
    the router's acknowledgement."""
    data = msgspec.json.encode({**msgspec.to_builtins(cmd), **fields})
    inbox = env.nc.new_inbox()
    sub = await env.nc.subscribe(inbox, max_msgs=1)
    try:
        await env.nc.jetstream().publish(rq.command_subject(cmd), data, headers=rq.command_headers(cmd, reply_to=inbox))
        reply = await sub.next_msg(timeout=10)
    finally:
        await sub.unsubscribe()
    return codec.decode_as(reply.data, CommandAck)


async def test_a_quantity_beyond_decimal_precision_is_rejected_with_a_reason(env) -> None:
    """quantity 1e30: the lot-size check used to raise InvalidOperation, and the command was nak'd
    for ever. The contract now refuses it on the wire (dead-lettered, refused by its command id);
    1e-30, which the contract allows, is refused by the lot-size check with a rejected order."""
    # limits that would let 1e30 through to the arithmetic (the default maximum refuses it before)
    router = await env.router(max_quantity=Decimal("1e40"), max_order_notional=Decimal("1e60"),
                              max_position=Decimal("1e60"))
    letters = await _letters(env)
    bid, _ = await env.mid(1)
    for i, quantity in enumerate(("1e30", "1e50", "-1", "NaN")):
        cmd = rq.place(BTC, "buy", 1, bid - 200, command_id=f"huge-{i}")
        ack = await _send_raw(env, cmd, quantity=quantity)
        assert not ack.accepted and "quantity" in ack.reason and ack.command_id == f"huge-{i}", ack
    await wait_for(lambda: len(letters.items) == 4, 5, what="4 dead letters")
    assert all("quantity" in letter.reason for letter in letters.items)
    cmd = rq.place(BTC, "buy", "1e-30", bid - 200)
    ack = await rq.send_command(env.nc, cmd, timeout=10)
    assert ack is not None and not ack.accepted and "lot size" in ack.reason, ack
    await wait_for(lambda: env.bus.states(cmd.client_id) == ["rejected"], 5, what="the rejected order event")
    assert "lot size" in env.bus.orders(cmd.client_id)[0].reason
    await wait_for(lambda: _queue_settled(env, router), 5, what="nothing left unacked")
    await _still_routes(env)


async def test_an_oversized_client_id_is_refused_and_the_router_stays_connected(env) -> None:
    """A 10 KB client_id used to become a KV key: nats-server closed the router's connection."""
    router = await env.router()
    letters = await _letters(env)
    bid, _ = await env.mid(1)
    for i, client_id in enumerate(("a" * 10_000, "has space", "dot.ted", "star*", "")):
        ack = await _send_raw(env, rq.place(BTC, "buy", 1, bid - 200, command_id=f"bad-{i}"), client_id=client_id)
        assert not ack.accepted and "client_id" in ack.reason, ack
        assert ack.command_id == f"bad-{i}"  # the requester can tell which command it was
    await wait_for(lambda: len(letters.items) == 5, 5, what="5 dead letters")
    assert all("client_id" in letter.reason and letter.subject.startswith("orders.cmd.") for letter in letters.items)
    too_many = rq.cancel(BTC, [f"c{i}" for i in range(1_001)])
    ack = await rq.send_command(env.nc, too_many, timeout=10)
    assert ack is not None and not ack.accepted and "at most" in ack.reason
    assert router.nc.is_connected
    await wait_for(lambda: _queue_settled(env, router), 5, what="nothing left unacked")
    await _still_routes(env)


async def test_undecodable_commands_are_dead_lettered_at_once(env) -> None:
    router = await env.router()
    letters = await _letters(env)
    js = env.nc.jetstream()
    payloads = [b"{not json", b"\xff\xfe", b'{"type":"place_order"}', b'{"type":"nope","command_id":"x","ts":1}',
                b"[" * 5000 + b"]" * 5000]
    for i, payload in enumerate(payloads):
        await js.publish(f"orders.cmd.digitex.{BTC}", payload, headers={"Nats-Msg-Id": f"junk-{i}"})
    await wait_for(lambda: len(letters.items) == len(payloads), 5, what="every payload dead-lettered")
    assert sorted(letter.payload for letter in letters.items) == sorted(payloads)
    assert all(letter.reason.startswith("undecodable command") for letter in letters.items)
    await wait_for(lambda: _queue_settled(env, router), 5, what="nothing left unacked")
    await _still_routes(env)


async def test_a_command_that_keeps_failing_is_refused_and_dead_lettered_after_its_last_delivery(env) -> None:
    """The idempotency bucket is gone (every execution raises): retried with back-off, then
    refused (CommandAck and rejected order event) and dead-lettered; the queue moves on."""
    router = await env.router(max_deliver=2)
    letters = await _letters(env)
    js = env.nc.jetstream()
    await js.delete_key_value("orders_idempotency")
    bid, _ = await env.mid(1)
    cmd = rq.place(BTC, "buy", 1, bid - 200)
    started = asyncio.get_running_loop().time()
    ack = await rq.send_command(env.nc, cmd, timeout=15)
    assert ack is not None and not ack.accepted and "2 deliveries" in ack.reason, ack
    assert asyncio.get_running_loop().time() - started >= 0.9  # one back-off (1 s) between the deliveries
    await wait_for(lambda: letters.items, 5, what="the dead letter")
    assert codec.decode(letters.items[0].payload).command_id == cmd.command_id
    await wait_for(lambda: "rejected" in env.bus.states(cmd.client_id), 5, what="the rejected order event")
    await wait_for(lambda: _queue_settled(env, router), 5, what="nothing left unacked")
    assert router._pull.dead_lettered == 1


async def test_a_reply_header_that_is_not_a_reply_inbox_gets_no_reply_and_breaks_nothing(env) -> None:
    """Marketbus-Reply-To is the requester's word: the router used to publish its CommandAck there
    with its own rights (a forged message on orders.evt.>, its KV buckets) and a 6 KB one made the
    server close its connection ("maximum control line exceeded"): the router exited. Now only a
    reply inbox (a literal subject under _INBOX.) gets an answer; the command itself is routed."""
    router = await env.router()
    forged: list[Any] = []

    async def on_forged(msg: Any) -> None:
        forged.append(msg)

    await env.nc.subscribe("orders.evt.digitex.FORGED.>", cb=on_forged)
    await env.nc.subscribe("evil.>", cb=on_forged)
    bid, _ = await env.mid(1)
    commands = []
    for target in ("orders.evt.digitex.FORGED.x", "evil.x", "_INBOX.ok." + "a" * 6000, "_INBOX.a b", "_INBOX.*"):
        cmd = rq.place(BTC, "buy", 1, bid - 200)
        commands.append(cmd)
        headers = {**rq.command_headers(cmd), rq.REPLY_HEADER: target}
        await env.nc.jetstream().publish(rq.command_subject(cmd), codec.encode(cmd), headers=headers)
    for cmd in commands:
        await wait_for(lambda c=cmd: "accepted" in env.bus.states(c.client_id), 10, what="the command routed")
    await wait_for(lambda: _queue_settled(env, router), 10, what="the router's queue settled")
    await _still_routes(env)
    assert router.nc.is_connected and router.health_problems() == []
    assert forged == []


async def test_a_command_nested_too_deep_is_refused_to_its_requester(env) -> None:
    """An unknown field nested 50,000 objects deep: the contract refuses the command (dead letter);
    reading its command id back for the reply raised RecursionError (not a DecodeError), which
    escaped the handler: the requester never got its refusal."""
    router = await env.router()
    letters = await _letters(env)
    deep = b'{"type":"place_order","command_id":"deep-1","extra":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}"
    inbox = env.nc.new_inbox()
    sub = await env.nc.subscribe(inbox, max_msgs=1)
    await env.nc.jetstream().publish(f"orders.cmd.digitex.{BTC}", deep,
                                     headers={"Nats-Msg-Id": "deep-1", rq.REPLY_HEADER: inbox})
    ack = codec.decode_as((await sub.next_msg(timeout=10)).data, CommandAck)
    assert not ack.accepted and ack.reason, ack
    await wait_for(lambda: len(letters.items) == 1, 10, what="the dead letter")
    await wait_for(lambda: _queue_settled(env, router), 10, what="the router's queue settled")
    await _still_routes(env)
