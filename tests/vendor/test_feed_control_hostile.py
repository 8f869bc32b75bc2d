"""Hostile messages on the ingestors' feed-control inputs, between good ones: the request subject
``feeds.ctl.<vendor>`` (anyone may publish there) and the values of the ``feeds`` KV bucket (a
client with the right to write it: an operator's ``nats kv put``, a compromised tool).

Real ingestors (Digitex, FinX: the machinery, :class:`marketbus.vendor.feeds.FeedControl`, is the
same for all four; only the catalog lookup differs) against their sandboxes and a real nats-server.

Asserted: every hostile request gets an :class:`ErrorReply` with a known code and a reason; an
undecodable one is also dead-lettered (``dlq.ingest_<vendor>.<vendor>``, with the reason) and
counted (``marketbus_dead_letters`` and ``marketbus_feed_control_requests{outcome="bad_request"}``);
a request for a vendor nobody collects finds no responder (the server's answer, at once); a
hostile KV value is ignored (never collected, never a crash); a good request right after each
burst is applied (the feed is subscribed), and the ingestor still answers /healthz.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import nats
import pytest

from marketbus.clients import FeedClient
from marketbus.contracts import DeadLetter, codec, subjects
from marketbus.contracts import feeds as contract
from marketbus.contracts.errors import SERVER_CODES, ErrorReply
from marketbus.contracts.feeds import Feed, FeedReply, Period
from marketbus.contracts.jobs import ReplayReply
from marketbus.contracts.streams import FEEDS
from marketbus.runtime.natsserver import NatsServer
from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec
from tests.helpers import wait_for
from tests.ingest_digitex.test_ingest import make as make_digitex
from tests.ingest_finx.test_ingest import KEY as FINX_KEY
from tests.ingest_finx.test_ingest import make as make_finx
from tests.vendor.feedflow import Flow

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJ = b'{"a":' * 50_000 + b"1" + b"}" * 50_000

# vendor -> (seeded instrument, another the catalog lists, its symbol, an instrument it does not list)
CASES = {
    "digitex": ("FS:BTCUSD", "FS:ETHUSD", "FS-ETHUSD", "FS:NOPE"),
    "finx": ("BTC:USD", "ETH:USD", "ETH-USD", "DOGE:USD"),
}


@pytest.fixture(params=sorted(CASES))
async def ingestor(request: pytest.FixtureRequest, nats_server: NatsServer) -> AsyncIterator[Any]:
    vendor = request.param
    seeded = CASES[vendor][0]
    if vendor == "digitex":
        async with SandboxRunner(load_spec("digitex"), port=0) as sb:
            async with make_digitex(nats_server, sb, markets=[seeded], http_port=0) as ing:
                yield ing
    else:
        async with SandboxRunner(load_spec("finx"), port=0, rate=20, api_keys=[FINX_KEY]) as sb:
            async with make_finx(nats_server, sb, pairs=[seeded], http_port=0) as ing:
                yield ing


def error_of(data: bytes) -> ErrorReply:
    assert msgspec.json.decode(data).get("type") == "error_reply", data[:300]
    reply = codec.decode_as(data, ErrorReply)
    assert reply.code in SERVER_CODES and reply.message, reply
    return reply


def sample(ing: Any, name: str, **labels: str) -> float:
    return ing.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.timeout(120)
async def test_hostile_feed_requests_and_kv_values_are_refused_and_the_ingestor_goes_on(
        ingestor: Any, nats_server: NatsServer) -> None:
    ing = ingestor
    vendor = ing.source
    seeded, other, other_symbol, unlisted = CASES[vendor]
    other_vendor = next(v for v in contract.VENDORS if v != vendor)
    subject = contract.control(vendor)
    nc = await nats.connect(nats_server.url)
    letters: list[DeadLetter] = []

    async def on_letter(msg: Any) -> None:
        letter = codec.decode(msg.data)
        if isinstance(letter, DeadLetter):
            letters.append(letter)

    await nc.subscribe(subjects.dead_letter(ing.name, vendor), cb=on_letter)
    max_payload = nc.max_payload

    def cmd(**values: Any) -> bytes:
        return msgspec.json.encode({"type": "feed_command", "op": "add", "vendor": vendor, "instrument": other,
                                    **values})

    undecodable = [
        b"\x00\xff\xfe garbage \x81",  # garbage bytes
        b"",
        cmd()[:-7],  # truncated JSON
        b'{"type":"feed_command","op":"add","vendor":"' + vendor.encode() + b'","instrument":"\xff\xfe"}',
        cmd(op=5), cmd(instrument=["a", "b"]), cmd(vendor=None), cmd(by={"x": 1}),  # valid JSON, wrong types
        cmd(op="explode"), cmd(vendor="acme"),  # values outside the contract
        cmd(instrument="i" * 100_000),
        b'{"type":"feed_command","op":"add","vendor":"' + vendor.encode() + b'"}',  # a field missing
        b'{"type":"feed","key":"x"}', b'{"type":"weird"}', b"[1,2,3]", b'"just a string"', b"null",
        DEEP, DEEP_OBJ, cmd()[:-1] + b',"extra":' + DEEP + b"}",
        b'{"type":"feed_command","pad":"' + b"p" * (max_payload - 4096) + b'"}',  # near the max payload
    ]
    # decodable, refused by the ingestor: another vendor's command, an instrument the catalog does
    # not list, an empty or odd one, an operation on a feed that does not exist
    refused = [cmd(vendor=other_vendor), cmd(instrument=unlisted), cmd(instrument=""), cmd(instrument="a\u0000b"),
               cmd(instrument="x" * 1000), cmd(op="pause", instrument=unlisted), cmd(op="resume", instrument="Z:Z")]
    headers: list[dict[str, str] | None] = [
        None, {}, {codec.HEADER_TYPE: "trade"}, {codec.HEADER_TYPE: "feed_command", codec.HEADER_SCHEMA: "999"},
        {codec.HEADER_SCHEMA: "not a number"}, {"Nats-Msg-Id": "x" * 2000},
    ]
    feeds = FeedClient(nc, timeout=10, by="test")
    bad_before = sample(ing, "marketbus_feed_control_requests_total", source=vendor, op="?", outcome="bad_request")
    try:
        async with Flow(nc, vendor) as flow:
            seeded_key = contract.feed_key(vendor, seeded)
            await wait_for(lambda: seeded_key in ing.feed_control.applied, 30, what="the seeded feed collected")
            for i, body in enumerate(undecodable + refused):
                try:
                    reply = await nc.request(subject, body, timeout=10, headers=headers[i % len(headers)])
                except Exception as exc:
                    raise AssertionError(f"{subject}: no reply to {body[:80]!r}: {exc!r}") from None
                error = error_of(reply.data)
                assert error.code in ("bad_request", "not_found"), (body[:80], error)
            # a vendor nobody collects: the server answers at once (no responders), nothing waits 10 s
            with pytest.raises(nats.errors.NoRespondersError):
                await nc.request(contract.control("acme"), cmd(vendor="acme"), timeout=10)

            # every undecodable one is dead-lettered with its reason, and counted
            def dead(body: bytes) -> DeadLetter | None:
                return next((d for d in letters if d.payload == body or
                             ("payload cut" in d.reason and body.startswith(d.payload))), None)

            await wait_for(lambda: all(dead(b) for b in undecodable), 20, what="the undecodable requests dead-lettered")
            for body in undecodable:
                letter = dead(body)
                assert letter is not None and letter.reason and letter.service == ing.name
                assert letter.subject == subject
            assert not [d for d in letters if d.payload in refused]  # refusals are answers, not dead letters
            bad_after = sample(ing, "marketbus_feed_control_requests_total", source=vendor, op="?",
                               outcome="bad_request")
            assert bad_after - bad_before == len(undecodable)
            assert sample(ing, "marketbus_dead_letters_total", service=ing.name, source=vendor,
                          reason="bad feed command") >= len(undecodable)

            # a good request right after is answered and applied
            reply = await feeds.add(vendor, other)
            assert isinstance(reply, FeedReply) and reply.changed and reply.feed.symbol == other_symbol
            await flow.state(contract.feed_key(vendor, other), "subscribed")

            # hostile values in the bucket, written by a client with the right to write it
            kv = await nc.jetstream().key_value(FEEDS.name)
            good = await feeds.get(vendor, other)
            template = codec.encode(good)
            junk_key = f"{vendor}.JUNK"
            values = {
                junk_key: [b"\x00\xff garbage", b"", b'{"type":"feed"', template[:-9], b"[1,2]", DEEP, DEEP_OBJ,
                           b"x" * (max_payload - 4096),
                           template.replace(b'"state":"active"', b'"state":"exploded"'),
                           template.replace(b'"created_ts":', b'"created_ts":"yesterday","x":')],
                # a well-formed feed under a key that is not its own, or another vendor's
                f"{vendor}.{contract.escape_instrument('HIJACK:X')}": [template],
                f"{vendor}.WRONGVENDOR": [codec.encode(msgspec.structs.replace(
                    good, key=f"{vendor}.WRONGVENDOR", vendor=other_vendor))],
                contract.seed_key(vendor): [b"\xff", DEEP],  # the marker keys
                f"{vendor}._flow": [b"\xff", b'{"x":{"ts":"soon","flowing":1}}', DEEP,
                                    # a forged instance that would be "live" forever (dated far ahead)
                                    msgspec.json.encode({"forged": {"ts": 2**62, "flowing": True}})],
            }
            for key, payloads in values.items():
                for payload in payloads:
                    await kv.put(key, payload)
            # a well-formed record the catalog does not list: the ingestor cannot collect it; it tries
            # again every few seconds and goes on with the others
            await kv.put(f"{vendor}.{contract.escape_instrument(unlisted)}", codec.encode(msgspec.structs.replace(
                good, key=contract.feed_key(vendor, unlisted), instrument=unlisted, symbol="NOPE-X",
                periods=[Period(5, 3)])))
            control = ing.feed_control
            unlisted_key = contract.feed_key(vendor, unlisted)
            # the watch reads the keys in order: once it has the last value, it has read the hostile ones
            await wait_for(lambda: unlisted_key in control.feeds, 10, what="the watch read the bucket's changes")
            # records no feed can be made of are dead-lettered with their reason (once per revision)
            rejected = [junk_key, f"{vendor}.{contract.escape_instrument('HIJACK:X')}", f"{vendor}.WRONGVENDOR"]
            await wait_for(lambda: all(any(d.subject == f"$KV.{FEEDS.name}.{k}" for d in letters) for k in rejected),
                           10, what="the hostile feed records dead-lettered")
            junk_letters = [d for d in letters if d.subject == f"$KV.{FEEDS.name}.{junk_key}"]
            assert all(d.reason and d.service == ing.name for d in junk_letters)
            assert len({d.id for d in junk_letters}) == len(junk_letters) <= len(values[junk_key])
            # the forged far-future flow entry is no live instance: this ingestor's periods still follow it alone
            assert not await control._write_flow()

            # still collecting, still answering: a good request right after is applied
            reply = await feeds.pause(vendor, other)
            assert reply.changed and reply.feed.state == "paused"
            await flow.state(contract.feed_key(vendor, other), "paused")
            reply = await feeds.resume(vendor, other)
            await flow.state(contract.feed_key(vendor, other), "subscribed")
            await flow.flowing(other_symbol, timeout=20)
            assert contract.feed_key(vendor, other) in control.applied
            assert not [k for k in control.applied if "JUNK" in k or "HIJACK" in k or "WRONGVENDOR" in k]
            assert junk_key not in control.feeds
            assert all(isinstance(f, Feed) for f in control.feeds.values())
            await _hostile_replay_requests(nc, vendor, other_vendor, max_payload)
            async with httpx.AsyncClient(timeout=5) as http:
                health = await http.get(f"{ing.http_url}/healthz")
            assert health.status_code == 200, health.text
    finally:
        await nc.close()


async def _hostile_replay_requests(nc: Any, vendor: str, other_vendor: str, max_payload: int) -> None:
    """``replay.<vendor>`` (the ingestor's replay requests): every bad one gets a ReplayReply not
    accepted, with a reason; a vendor nobody collects finds no responder; a request right after is
    answered."""
    subject = subjects.replay(vendor)

    def req(**values: Any) -> bytes:
        return msgspec.json.encode({"type": "replay_request", "request_id": "h", "source": vendor, "venue": "V",
                                    "symbol": "S", "kind": "trade", "start_ns": 1, "end_ns": 2, **values})

    bodies = [b"\x00\xff garbage", b"", req()[:-5], req(start_ns="yesterday"), req(end_ns=2**70),
              req(kind=["trade"]), req(request_id={"a": 1}), b"[1,2]", b"null", DEEP, DEEP_OBJ,
              b'{"type":"replay_request","pad":"' + b"p" * (max_payload - 4096) + b'"}',
              req(source=other_vendor), req(source="acme"), req(start_ns=5, end_ns=5), req(kind="weird_kind")]
    headers: list[dict[str, str] | None] = [None, {codec.HEADER_SCHEMA: "999"}, {codec.HEADER_TYPE: "trade"}]
    for i, body in enumerate(bodies):
        try:
            msg = await nc.request(subject, body, timeout=10, headers=headers[i % len(headers)])
        except Exception as exc:
            raise AssertionError(f"{subject}: no reply to {body[:80]!r}: {exc!r}") from None
        reply = codec.decode_as(msg.data, ReplayReply)
        assert not reply.accepted and reply.reason, (body[:80], reply)
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request(subjects.replay("acme"), req(source="acme"), timeout=10)
    reply = codec.decode_as((await nc.request(subject, req(request_id="ok", start_ns=2, end_ns=1), timeout=10)).data,
                            ReplayReply)
    assert reply.request_id == "ok" and not reply.accepted and "end_ns" in (reply.reason or "")
