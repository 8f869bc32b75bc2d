"""Hostile messages on every subject family a marketbus service consumes, between good ones.

The services run as in production (in-process, real NATS/JetStream, the Digitex sandbox): the
history writer (md.>, ref.>, status feed events; history.query, history.coverage), the order
router (orders.cmd.>, orders.ctl), the export orchestrator (export.create/get/cancel) and the
Digitex ingestor (replay.digitex). Published: bad JSON, invalid UTF-8, wrong types, numbers
beyond int64 and float, NaN/Infinity, negative and zero prices, oversized ids and payloads (up to
the server's max_payload), deep nesting, unknown types and schema versions.

Asserted: the good messages are processed (stored, routed, answered); every bad one is refused
(an error reply with a reason, a rejected order with a reason) or dead-lettered with a reason;
no consumer is left holding anything; every service still answers /healthz and requests.

A few hostile values are well-formed JSON of the right types whose refusal is the contracts'
call (negative prices, NaN, oversized ids, a future schema version): for those the test asks the
contract (``codec.decode``): refused there -> must be dead-lettered; accepted -> must be stored.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import nats
import pytest

from marketbus.contracts import DeadLetter, codec, subjects
from marketbus.contracts.errors import SERVER_CODES, ErrorReply
from marketbus.contracts.ids import event_id
from marketbus.contracts.jobs import ExportRequest, HistoryChunk, ReplayReply, StreamSelector
from marketbus.contracts.orders import CommandAck
from marketbus.contracts.reference import Instrument
from marketbus.contracts.status import FeedStatus
from marketbus.contracts.streams import ensure_all
from marketbus.runtime.natsserver import NatsServer
from marketbus.runtime.settings import Secret
from services.export_orchestrator.app import ExportOrchestrator
from services.history_writer.app import HistoryWriter
from services.history_writer.query import make_query, query_events
from services.history_writer.store.base import Selector
from services.ingest_digitex.app import DigitexIngestor
from services.order_router import requests as rq
from services.order_router.app import OrderRouter
from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec
from tests.helpers import wait_for
from tests.history.common import T0, trade, unique_symbol
from tests.order_router.conftest import FAST

DEEP = b"[" * 100_000 + b"]" * 100_000
BAD_JSON = b'{"type": "trade", "id": '
BAD_UTF8 = b'{"type":"trade","id":"\xff\xfe\xfd"}'


def mutate(data: bytes, field: str, old: Any, raw: str) -> bytes:
    """``data`` (an encoded event) with the value of ``field`` replaced by raw JSON text."""
    before = f'"{field}":'.encode() + msgspec.json.encode(old)
    assert before in data, (field, data)
    return data.replace(before, f'"{field}":{raw}'.encode(), 1)


def with_extra(data: bytes, raw: bytes) -> bytes:
    """``data`` with an extra (unknown) field holding ``raw``."""
    return data[:-1] + b',"extra":' + raw + b"}"


class Bus:
    """Dead letters and order events, as a user watching the bus sees them."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []
        self.orders: list[Any] = []

    async def on_letter(self, msg: Any) -> None:
        letter = codec.decode(msg.data)
        if isinstance(letter, DeadLetter):
            self.letters.append(letter)

    async def on_order(self, msg: Any) -> None:
        self.orders.append(codec.decode(msg.data))

    def dead(self, payload: bytes, service: str) -> DeadLetter | None:
        """The dead letter of ``payload`` by ``service`` (one near the max payload is kept cut, and says so)."""
        for letter in self.letters:
            if letter.service != service:
                continue
            if letter.payload == payload or ("payload cut" in letter.reason and payload.startswith(letter.payload)):
                return letter
        return None


def contract_refuses(data: bytes, version: int | None = None) -> bool:
    try:
        codec.decode(data, version)
    except Exception:
        return True
    return False


@pytest.mark.timeout(180)
async def test_hostile_messages_are_refused_or_dead_lettered_and_every_service_still_answers(
        nats_server: NatsServer, tmp_path: Any) -> None:
    url = nats_server.url
    async with SandboxRunner(load_spec("digitex"), port=0) as sandbox:
        nc = await nats.connect(url, max_reconnect_attempts=-1)
        js = nc.jetstream()
        await ensure_all(js)
        max_payload = nc.max_payload
        bus = Bus()
        await nc.subscribe("dlq.>", cb=bus.on_letter)
        await nc.subscribe("orders.evt.>", cb=bus.on_order)
        services: list[Any] = [
            HistoryWriter(
                nats_url=url,
                data_dir=str(tmp_path / "history"),
                http_port=0,
                batch_max_wait_s=0.05,
                fsync=False,
                heartbeat_interval_s=60.0,
            ),
            OrderRouter(nats_url=url, digitex_url=sandbox.url, **FAST),
            ExportOrchestrator(
                nats_url=url,
                data_dir=str(tmp_path),
                history_dir=str(tmp_path / "history"),
                http_port=0,
                api_port=0,
                api_keys=Secret("k"),
                scan_interval_s=0.2,
                heartbeat_interval_s=60.0,
                replay_timeout_s=3.0,
                replay_wait_s=3.0,
            ),
            DigitexIngestor(
                nats_url=url,
                base_url=sandbox.url + "/dapi",
                markets=["FS:BTCUSD"],
                heartbeat_interval_s=60,
                trades_interval_s=1.0,
                book_interval_s=2.0,
                bars_interval_s=5.0,
                bars_backfill_s=60,
            ),
        ]
        started: list[Any] = []
        try:
            for service in services:
                await service.start()
                started.append(service)
            writer, router = services[0], services[1]
            await _history_families(nc, js, bus, writer, max_payload)
            await _order_families(nc, js, bus, router, sandbox)
            await _request_families(nc, max_payload)
            for service in services:  # every service still answers
                async with httpx.AsyncClient(timeout=5) as http:
                    health = await http.get(f"{service.http_url}/healthz")
                assert health.status_code == 200, (service.name, health.text)
        finally:
            for service in reversed(started):
                await service.stop()
            await nc.drain()


async def _history_families(nc: Any, js: Any, bus: Bus, writer: HistoryWriter, max_payload: int) -> None:
    """md.>, ref.>, status feed events -> the history writer."""
    sym = unique_symbol("H")
    n = iter(range(1000, 10_000))

    def base() -> tuple[Any, bytes]:
        event = trade(sym, next(n))
        return event, codec.encode(event)

    md_subject = subjects.md("trade", "finx", "CB", sym)
    header = {codec.HEADER_TYPE: "trade", codec.HEADER_SCHEMA: "1"}
    must_die: list[tuple[str, bytes, dict[str, str]]] = []  # (subject, payload, headers): dead-lettered
    contract: list[tuple[str, bytes, dict[str, str], str]] = []  # ... and the id it is stored under

    def dead(payload: bytes, headers: dict[str, str] | None = None, subject: str = md_subject) -> None:
        must_die.append((subject, payload, headers if headers is not None else header))

    dead(BAD_JSON)
    dead(BAD_UTF8)
    dead(b"")
    for field, raw in (("price", "[1,2]"), ("ts_event", '"yesterday"'), ("ts_event", str(2**63 + 5)),
                       ("ts_recv", str(10**30)), ("ts_event", "1e400"), ("size", "{}"), ("side", '"sideways"')):
        event, data = base()
        dead(mutate(data, field, getattr(event, field), raw))
    # an unknown field holding 100,000 nested arrays: the contract ignores unknown fields, so the
    # event may be stored without it, or dead-lettered (too deep to decode): never both, never lost
    event, data = base()
    either = [(md_subject, with_extra(data, DEEP), header, event.id)]
    dead(b'{"type":"weird_kind","id":"x"}', {codec.HEADER_TYPE: "weird_kind"})
    dead(b'{"type":"trade","junk":"' + b"x" * (max_payload - 4096) + b'"}')  # near the server's max payload
    good_batch = [trade(sym, i) for i in range(50, 60)]
    envelope = codec.encode(codec.make_batch(good_batch))
    dead(envelope.replace(b'"price":"150.25"', b'"price":[]', 1), {codec.HEADER_TYPE: "batch"})
    for field, raw in (("price", '"NaN"'), ("price", '"Infinity"'), ("price", '"-1"'), ("price", '"0"'),
                       ("price", '"-0"'), ("ts_event", str(2**62)), ("ts_event", "-5")):
        event, data = base()
        contract.append((md_subject, mutate(data, field, getattr(event, field), raw), header, event.id))
    event, data = base()
    big_id = "i" * 10_000
    contract.append((md_subject, mutate(data, "id", event.id, f'"{big_id}"'), header, big_id))
    event, data = base()
    contract.append((md_subject, data, {**header, codec.HEADER_SCHEMA: "999"}, event.id))

    # ref and status families
    inst = Instrument(id=event_id("finx", "instrument", sym), source="finx", venue="CB", symbol=sym, ts_event=T0,
                      ts_recv=T0, instrument_type="spot", vendor_symbol=sym, tick_size=Decimal("0.01"))
    ref_subject = subjects.ref("instrument", "finx", "CB", sym)
    inst_data = codec.encode(inst)
    for payload in (BAD_JSON, mutate(inst_data, "tick_size", inst.tick_size, "{}"),
                    mutate(inst_data, "instrument_type", "spot", '"spaceship"')):
        dead(payload, {codec.HEADER_TYPE: "instrument"}, ref_subject)
    gap = FeedStatus(id=event_id("hostile", "gap", sym), service="ingest_finx", source="finx", venue="CB", symbol=sym,
                     kind="trade", state="gap", gap_start=T0, gap_end=T0 + 10, ts=T0 + 20)
    status_subject = subjects.feed_status("ingest_finx", "finx", "CB", sym)
    gap_data = codec.encode(gap)
    for payload in (
        BAD_UTF8,
        mutate(gap_data, "state", "gap", '"exploded"'),
        mutate(gap_data, "gap_start", T0, str(2**64)),
    ):
        dead(payload, {codec.HEADER_TYPE: "feed_status"}, status_subject)

    goods = [trade(sym, i) for i in range(50)]
    bad_iter = iter([(s, p, h) for s, p, h in must_die] + [(s, p, h) for s, p, h, _ in contract + either])
    for i, good in enumerate(goods):  # the bad ones between the good ones
        await js.publish(md_subject, codec.encode(good), headers=codec.headers_for(good))
        if i % 2 == 0:
            bad = next(bad_iter, None)
            if bad is not None:
                await js.publish(bad[0], bad[1], headers=bad[2])
    for s, p, h in bad_iter:
        await js.publish(s, p, headers=h)
    await js.publish(md_subject + ".batch", envelope, headers={codec.HEADER_TYPE: "batch"})
    await js.publish(ref_subject, inst_data, headers=codec.headers_for(inst))
    await js.publish(status_subject, gap_data, headers=codec.headers_for(gap))

    good_ids = {e.id for e in goods + good_batch} | {inst.id}
    expected_dead = [p for _, p, _ in must_die] + [p for _, p, h, _ in contract
                                                   if contract_refuses(p, codec.schema_version_of(h))]
    expected_stored = good_ids | {i for _, p, h, i in contract if not contract_refuses(p, codec.schema_version_of(h))}

    async def stored_ids() -> set[str]:
        out: set[str] = set()
        for kind in ("trade", "instrument"):
            tables = await writer.store.read_table(Selector(kind=kind, symbol=sym), -(2**63), 2**63 - 1,
                                                   columns=["id"])
            for table in tables.values():
                out.update(table.column("id").to_pylist())
        return out

    async def settled() -> bool:
        for stream, durable in (("MD", "history_writer_md"), ("REF", "history_writer_ref"),
                                ("STATUS", "history_writer_status")):
            info = await js.consumer_info(stream, durable)
            if info.num_ack_pending or info.num_pending:
                return False
        return True

    try:
        await wait_for(
            lambda: all(bus.dead(p, "history_writer") for p in expected_dead),
            30,
            what="the history writer's dead letters",
        )
    except AssertionError:
        missing = [p[:100] for p in expected_dead if not bus.dead(p, "history_writer")]
        raise AssertionError(f"not dead-lettered: {missing}") from None
    await wait_for(settled, 30, what="the writer's consumers settled (nothing pending, nothing unacked)")
    stored = await stored_ids()
    assert expected_stored <= stored, f"missing: {sorted(expected_stored - stored)[:5]}"
    for payload in expected_dead:
        letter = bus.dead(payload, "history_writer")
        assert letter is not None and letter.reason and letter.service == "history_writer"
    # a contract-accepted hostile value is stored, never both stored and dead-lettered, never lost
    for _, payload, _, ident in contract + either:
        assert (ident in stored) != (bus.dead(payload, "history_writer") is not None), (ident[:40], payload[:120])
    # the history answers: the good events of the stream, in order
    query = make_query(Selector(kind="trade", source="finx", venue="CB", symbol=sym), T0, T0 + 10**12, limit=100_000)
    answered = [e.id async for e in query_events(nc, query)]
    assert {e.id for e in goods + good_batch} <= set(answered)
    gaps = await writer.store.read_table(Selector(kind="feed_status", source="finx", symbol=sym), 0, 2**63 - 1)
    assert gaps and sum(t.num_rows for t in gaps.values()) == 1


async def _order_families(nc: Any, js: Any, bus: Bus, router: OrderRouter, sandbox: Any) -> None:
    """orders.cmd.> -> the order router: every bad command refused (a rejected order with a reason)
    or dead-lettered; the good ones routed."""
    async with httpx.AsyncClient(base_url=sandbox.url) as http:
        book = (await http.get("/dapi/v1/exchange/bot/order_book/", params={"market_id": 1})).json()
    price = Decimal(book["bids"][0][0]) - 200
    market = "FS-BTCUSD"
    subject = subjects.order_command(market)

    def place(**changes: Any) -> Any:
        return msgspec.structs.replace(rq.place(market, "buy", 1, price), **changes)

    def raw(cmd: Any, **values: Any) -> bytes:
        """``cmd``'s JSON with ``values`` the contract may refuse (it refuses to build them in
        Python; anyone publishing on orders.cmd.> can send them)."""
        return msgspec.json.encode({**msgspec.to_builtins(cmd), **values})

    dead_payloads = [BAD_JSON, BAD_UTF8, b"", DEEP, b'{"type":"launch_rocket","command_id":"x","ts":1}',
                     b'{"type":"place_order","command_id":"x"}', b"x" * (nc.max_payload - 4096)]
    cmd = place()
    data = codec.encode(cmd)
    dead_payloads += [mutate(data, "quantity", str(cmd.quantity), "[1]"), mutate(data, "side", "buy", '"both"'),
                      with_extra(data, DEEP)]
    for client_id in ("c" * 10_000, "with space", "a.b", "gt>", ""):
        dead_payloads.append(raw(place(command_id=f"cid-{uuid.uuid4()}"), client_id=client_id))
    # (command, its payload, words in the reason): refused with a rejected order event when the
    # contract accepts the values (the router's own checks refuse them), dead-lettered when not
    rejected: list[tuple[Any, bytes, str]] = []
    for field, value, words in (("quantity", "1e30", "maximum"), ("quantity", "NaN", "positive"),
                                ("quantity", "-1", "positive"), ("quantity", "0", "positive"),
                                ("quantity", "Infinity", "positive"), ("quantity", "1e-30", "lot size"),
                                ("price", "-5", "price"), ("price", "0", "price"), ("price", "NaN", "price")):
        cmd = place(client_id=rq.new_id())
        rejected.append((cmd, raw(cmd, **{field: value}), words))
    cmd = place(market="FS-NOPE", client_id=rq.new_id())
    rejected.append((cmd, codec.encode(cmd), "unknown market"))
    cmd = place(client_id=rq.new_id())
    rejected.append((cmd, mutate(codec.encode(cmd), "leverage", 1, str(2**70)), "leverage"))
    dead_payloads += [payload for _, payload, _ in rejected if contract_refuses(payload)]
    rejected = [(cmd, payload, words) for cmd, payload, words in rejected if not contract_refuses(payload)]
    goods = [place(client_id=rq.new_id()) for _ in range(3)]

    for i, payload in enumerate(dead_payloads):
        await js.publish(subject, payload, headers={"Nats-Msg-Id": f"junk-{uuid.uuid4()}"})
        if i < len(goods):
            await js.publish(subject, codec.encode(goods[i]), headers=rq.command_headers(goods[i]))
    for cmd, payload, _ in rejected:
        await js.publish(subjects.order_command(cmd.market), payload, headers=rq.command_headers(cmd))
    future = place(client_id=rq.new_id())
    await js.publish(subject, codec.encode(future), headers={**rq.command_headers(future), codec.HEADER_SCHEMA: "999"})

    def states(client_id: str) -> list[str]:
        return [e.state for e in bus.orders if getattr(e, "client_id", None) == client_id]

    try:
        await wait_for(
            lambda: all(bus.dead(p, "order_router") for p in dead_payloads), 20, what="the bad commands dead-lettered"
        )
    except AssertionError:
        missing = [p[:100] for p in dead_payloads if not bus.dead(p, "order_router")]
        raise AssertionError(f"not dead-lettered: {missing}") from None
    for payload in dead_payloads:
        letter = bus.dead(payload, "order_router")
        assert letter is not None and letter.service == "order_router" and letter.reason
    await wait_for(lambda: all(states(c.client_id) == ["rejected"] for c, _, _ in rejected), 20,
                   what="a rejected order event for every invalid order")
    for cmd, payload, words in rejected:
        event = next(e for e in bus.orders if getattr(e, "client_id", None) == cmd.client_id)
        assert event.reason and words in event.reason, (msgspec.json.decode(payload), event.reason)
    await wait_for(lambda: all("accepted" in states(c.client_id) for c in goods), 20, what="the good orders accepted")
    if contract_refuses(codec.encode(future), 999):
        await wait_for(
            lambda: bus.dead(codec.encode(future), "order_router"), 10, what="the future-version command dead-lettered"
        )
    else:
        await wait_for(lambda: "accepted" in states(future.client_id), 10, what="the future-version command routed")

    async def settled() -> bool:
        info = await js.consumer_info("ORDERS_CMD", router.settings.durable)
        return info.num_ack_pending == 0 and info.num_pending == 0

    await wait_for(settled, 10, what="the router's queue settled")
    assert router.nc.is_connected
    ack = await rq.send_command(nc, place(client_id=rq.new_id()), timeout=10)  # still routes, still replies
    assert ack is not None and ack.accepted


async def _request_families(nc: Any, max_payload: int) -> None:
    """Request/reply: every bad request gets an error reply with a reason; a good one still works."""
    huge = b'{"type":"x","pad":"' + b"p" * (max_payload - 4096) + b'"}'
    junk = [BAD_JSON, BAD_UTF8, b"", DEEP, huge, b'{"type":"unknown_request"}', b"[1,2,3]", b'"just a string"']

    def refused(data: bytes) -> str | None:
        """The reason of an ErrorReply (the one error shape of every request subject), or of a
        reply type's own refusal (a CommandAck or ReplayReply not accepted)."""
        reply_type = {"error_reply": ErrorReply, "command_ack": CommandAck, "replay_reply": ReplayReply}.get(
            msgspec.json.decode(data).get("type"))
        if reply_type is None:
            return None
        reply = codec.decode_as(data, reply_type)
        if isinstance(reply, ErrorReply):
            assert reply.code in SERVER_CODES, reply
            return f"{reply.code}: {reply.message}"
        return reply.reason if not reply.accepted else None

    query = make_query("trade.*.*.*", 0, 2**62)
    families: list[tuple[str, list[bytes], Callable[[bytes], str | None]]] = [
        (
            subjects.HISTORY_QUERY,
            [
                *junk,
                mutate(codec.encode(query), "start_ns", 0, str(2**70)),
                mutate(codec.encode(query), "limit", query.limit, '"all"'),
                codec.encode(msgspec.structs.replace(query, cursor="!!not a cursor!!")),
            ],
            refused,
        ),
        (subjects.HISTORY_COVERAGE, junk, refused),
        (
            subjects.ORDER_CONTROL,
            [
                *junk,
                b'{"type":"router_control","action":"explode","ts":1}',
                b'{"type":"router_control","action":"halt","ts":1,"reason":"' + b"r" * 10_000 + b'"}',
            ],
            refused,
        ),
        (
            subjects.EXPORT_CREATE,
            [
                *junk,
                codec.encode(
                    ExportRequest(idempotency_key="k" * 10, selector=StreamSelector(kind="nope"), start_ns=10, end_ns=5)
                ),
            ],
            refused,
        ),
        (
            subjects.EXPORT_GET,
            [BAD_UTF8, DEEP, b'{"job_id":' + b"1" * 400 + b"}", b'"' + b"j" * 100_000 + b'"'],
            refused,
        ),
        (subjects.EXPORT_CANCEL, [BAD_UTF8, DEEP, b'"no-such-job"'], refused),
        (
            subjects.replay("digitex"),
            [
                *junk,
                b'{"type":"replay_request","request_id":"r","source":"finx","venue":"v",'
                b'"symbol":"s","kind":"trade","start_ns":1,"end_ns":2}',
            ],
            refused,
        ),
    ]
    for subject, bodies, error_of in families:
        for body in bodies:
            try:
                reply = await nc.request(subject, body, timeout=10)
            except Exception as exc:
                raise AssertionError(f"{subject}: no reply to {body[:80]!r}: {exc!r}") from None
            reason = error_of(reply.data)
            assert reason, f"{subject}: {body[:80]!r} was not refused: {reply.data[:200]!r}"
    # and the good requests still get their answers
    chunk = codec.decode_as(
        (await nc.request(subjects.HISTORY_QUERY, codec.encode(query), timeout=10)).data, HistoryChunk
    )
    assert chunk.error is None and chunk.events
    status = await rq.send_control(nc, "status")
    assert status.accepted
    created = msgspec.json.decode((await nc.request(subjects.EXPORT_CREATE, codec.encode(ExportRequest(
        idempotency_key=str(uuid.uuid4()), selector=StreamSelector(kind="trade"), start_ns=T0, end_ns=T0 + 10**12)),
        timeout=10)).data)
    assert "error" not in created and created.get("job_id"), created
    replay = codec.decode_as((await nc.request(subjects.replay("digitex"), (
        b'{"type":"replay_request","request_id":"ok","source":"digitex","venue":"DGTX","symbol":"FS-BTCUSD",'
        b'"kind":"trade","start_ns":2,"end_ns":1}'), timeout=10)).data, ReplayReply)
    assert replay.request_id == "ok" and not replay.accepted and "end_ns" in (replay.reason or "")
