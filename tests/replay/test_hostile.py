"""Hostile requests on the replay service's subjects (``history.replay.start`` and a session's
``history.replay.<session>.control``), between good ones, on a real history writer and NATS.

Asserted: every hostile request gets an :class:`ErrorReply` with a known code and a reason; an
undecodable one is also dead-lettered (``dlq.replay.playback``, with the reason) and counted
(``marketbus_dead_letters``); a good start right after plays its events; the service answers
/healthz and keeps no session of a refused request.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from marketbus.clients import PlaybackClient
from marketbus.contracts import DeadLetter, codec, subjects
from marketbus.contracts.errors import SERVER_CODES, ErrorReply
from marketbus.contracts.jobs import StreamSelector
from marketbus.contracts.replay import PlaybackStart
from tests.helpers import wait_for

from .conftest import MS, T0, Stack, trade, unique_symbol

END = T0 + 10**12
DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJ = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
HEADERS: list[dict[str, str] | None] = [
    None, {}, {codec.HEADER_TYPE: "trade"}, {codec.HEADER_TYPE: "playback_start", codec.HEADER_SCHEMA: "999"},
    {codec.HEADER_SCHEMA: "not a number"}, {codec.HEADER_SCHEMA: str(2**70)}, {"Nats-Msg-Id": "x" * 2000},
]


def error_of(data: bytes) -> ErrorReply:
    assert msgspec.json.decode(data).get("type") == "error_reply", data[:300]
    reply = codec.decode_as(data, ErrorReply)
    assert reply.code in SERVER_CODES and reply.message, reply
    return reply


async def test_hostile_start_and_control_requests_are_refused_and_the_service_goes_on(stack: Stack) -> None:
    nc, service = stack.nc, stack.replay
    letters: list[DeadLetter] = []

    async def on_letter(msg: Any) -> None:
        letter = codec.decode(msg.data)
        if isinstance(letter, DeadLetter):
            letters.append(letter)

    sub = await nc.subscribe(subjects.dead_letter(service.name, "playback"), cb=on_letter)
    sym = unique_symbol("H")
    await stack.publisher.publish_group([trade(sym, i, T0 + i * MS) for i in range(5)])
    await stack.publisher.flush()
    await stack.stored(sym, 5)
    max_payload = nc.max_payload
    good = codec.encode(PlaybackStart(selector=StreamSelector(kind="trade", source="digitex", symbol=sym),
                                      start_ns=T0, end_ns=END, speed="max", hold=True))

    def start(**values: Any) -> bytes:
        return msgspec.json.encode({**msgspec.json.decode(good), **values})

    undecodable = [
        b"\x00\xff\xfe garbage \x81", b"", good[:-9],  # garbage, empty, truncated JSON
        start(start_ns="yesterday"), good.replace(b'"end_ns":', b'"end_ns":1e400,"x":'),
        start(selector=5), start(speed=10), start(hold="yes"),
        start(selector={"kind": 5}), b"[1,2,3]", b"null", b'"just a string"', b'{"type":"weird"}',
        DEEP, DEEP_OBJ, good[:-1] + b',"extra":' + DEEP + b"}",
        b'{"type":"playback_start","pad":"' + b"p" * (max_payload - 4096) + b'"}',  # near the max payload
    ]
    # decodable, refused: an unknown source (nothing stored), an unknown kind, a reversed range,
    # a bad speed, a prefix that is not a playback prefix or is an ingestor's replay.<source>
    refused = [
        start(selector={"kind": "trade", "source": "acme"}), start(selector={"kind": "bogus"}),
        start(start_ns=END, end_ns=T0), start(start_ns=-(2**63), end_ns=-(2**63) + 1), start(end_ns=2**64 - 1),
        start(end_ns=2**70), start(end_ns=2**63), start(speed="-1x"), start(speed="x" * 10_000), start(prefix="md.>"),
        start(prefix="replay.digitex"), start(prefix="replay." + "a" * 500),
    ]
    refused_before = sum(s.value for m in service.metrics.refused.collect() for s in m.samples
                         if s.name.endswith("_total"))
    for i, body in enumerate(undecodable + refused):
        try:
            msg = await nc.request(subjects.PLAYBACK_START, body, timeout=10, headers=HEADERS[i % len(HEADERS)])
        except Exception as exc:
            raise AssertionError(f"no reply to {body[:80]!r}: {exc!r}") from None
        error = error_of(msg.data)
        assert error.code in ("bad_request", "not_found"), (body[:80], error)
    refused_after = sum(s.value for m in service.metrics.refused.collect() for s in m.samples
                        if s.name.endswith("_total"))
    assert refused_after - refused_before == len(refused)
    assert not service.sessions

    def dead(body: bytes) -> DeadLetter | None:
        return next((d for d in letters if d.payload == body or
                     ("payload cut" in d.reason and body.startswith(d.payload))), None)

    await wait_for(lambda: all(dead(b) for b in undecodable), 20, what="the undecodable start requests dead-lettered")
    for body in undecodable:
        letter = dead(body)
        assert letter is not None and letter.reason and letter.subject == subjects.PLAYBACK_START
    assert not [d for d in letters if d.payload in refused]

    # a good start right after: a session, held; hostile controls on its control subject
    client = PlaybackClient(nc, timeout=10)
    session = await client.start(f"trade.digitex.*.{sym}", T0, END, speed="max", hold=True)
    control_undecodable = [b"\xff", b"", b'{"type":"playback_control","action":', b'{"type":"playback_control",'
                           b'"action":5}', b'{"type":"playback_control","action":"explode"}', DEEP, DEEP_OBJ,
                           b'{"type":"playback_control","pad":"' + b"p" * (max_payload - 4096) + b'"}']
    control_refused = [b'{"type":"playback_control","action":"cancel"}',
                       b'{"type":"playback_control","action":"cancel","token":"' + b"t" * 10_000 + b'"}']
    for i, body in enumerate(control_undecodable + control_refused):
        try:
            msg = await nc.request(session.control_subject, body, timeout=10, headers=HEADERS[i % len(HEADERS)])
        except Exception as exc:
            raise AssertionError(f"no reply to control {body[:80]!r}: {exc!r}") from None
        error = error_of(msg.data)
        assert error.code in ("bad_request", "forbidden"), (body[:80], error)
    await wait_for(lambda: all(dead(b) for b in control_undecodable), 20,
                   what="the undecodable control requests dead-lettered")
    counted = sum(s.value for m in service.metrics.dead_letters.collect() for s in m.samples
                  if s.name.endswith("_total") and s.labels.get("source") == "playback")
    assert counted >= len(undecodable) + len(control_undecodable)

    # the session is untouched, and plays when its owner says so
    assert session.session in service.sessions
    got = []
    sub_data = await nc.subscribe(subjects.playback_filter(session.prefix, "md.>"))
    await client.resume(session.session)  # the starter: its client holds the token
    for _ in range(5):
        got.append(await sub_data.next_msg(timeout=10))
    assert all(sym in m.subject for m in got)
    await sub_data.unsubscribe()
    await sub.unsubscribe()
    async with httpx.AsyncClient(timeout=5) as http:
        health = await http.get(f"{service.http_url}/healthz")
    assert health.status_code == 200, health.text
