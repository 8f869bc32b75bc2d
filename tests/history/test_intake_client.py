"""The intake connection hands raw messages (subject, ack reply, payload, header block) to the
history writer's handler, on nats-py's private fast path and on the public fallback alike."""

from __future__ import annotations

import pytest

from marketbus.runtime import natsprivate
from services.history_writer.intake_client import IntakeClient, header_value, status_of
from tests.helpers import wait_for


@pytest.mark.parametrize("fast", [True, False])
async def test_raw_subscription_delivers_bytes_and_headers(nats_url, monkeypatch, fast) -> None:
    monkeypatch.setattr(natsprivate, "AVAILABLE", fast and natsprivate.AVAILABLE)
    client = IntakeClient()
    await client.connect(servers=[nats_url])
    got: list[tuple[bytes, bytes, bytes, bytes | None]] = []
    try:
        inbox = client.new_inbox()
        await client.subscribe_raw(inbox, lambda *a: got.append(a))
        other: list[bytes] = []

        async def cb(msg) -> None:
            other.append(msg.data)

        await client.subscribe(inbox + ".x", cb=cb)
        await client.flush()  # both subscriptions are known to the server before anything is published
        # published on the same connection, after the SUBs: as the intake's pull requests are
        await client.publish(inbox, b'{"a":1}', reply="_INBOX.ack.1.7",
                             headers={"Marketbus-Type": "trade", "Nats-Msg-Id": "m1"})
        await client.publish(inbox + ".x", b"plain")
        await client.flush()
        await wait_for(lambda: got, timeout=5, what="the raw message")
        await wait_for(lambda: other, timeout=5, what="the ordinary message")
        subject, reply, data, block = got[0]
        assert (subject, reply, data) == (inbox.encode(), b"_INBOX.ack.1.7", b'{"a":1}')
        assert header_value(block, b"\r\nMarketbus-Type:") == "trade"
        assert header_value(block, b"\r\nAbsent:") is None
        assert other == [b"plain"]
    finally:
        await client.close()


def test_status_and_header_parsing() -> None:
    assert status_of(b"NATS/1.0 408 Request Timeout\r\n\r\n") == "408"
    assert status_of(b"NATS/1.0\r\nStatus: x\r\n\r\n") is None
    assert status_of(None) is None
    assert header_value(b"NATS/1.0\r\nMarketbus-Type: batch\r\n\r\n", b"\r\nMarketbus-Type:") == "batch"


async def test_frame_parser_matches_nats_py_parser_at_any_split() -> None:
    """The intake's parser hands out the same messages, in the same order, as nats-py's parser,
    however the bytes are cut into reads (frames split mid control line, mid header, mid payload),
    and passes other operations (PING, +OK, INFO) to nats-py's."""
    from nats.protocol.parser import Parser

    from marketbus.runtime.natsprivate import FrameParser

    hdr = b"NATS/1.0\r\nMarketbus-Type: trade\r\n\r\n"
    status = b"NATS/1.0 408 Request Timeout\r\n\r\n"
    frames = [
        b"HMSG _INBOX.a 5 $JS.ACK.MD.d.1.7.7.1.0 %d %d\r\n%s{\"x\":1}\r\n" % (len(hdr), len(hdr) + 7, hdr),
        b"PING\r\n",
        b"MSG _INBOX.a 5 $JS.ACK.MD.d.1.8.8.1.0 5\r\nhello\r\n",
        b"+OK\r\n",
        b"HMSG _INBOX.a 5 %d %d\r\n%s\r\n" % (len(status), len(status), status),  # a status: no reply, no payload
        b"MSG other.subject 9 3\r\nabc\r\n",  # an ordinary subscription
        b'INFO {"server_id":"x","max_payload":1048576}\r\n',
        b"MSG _INBOX.a 5 0\r\n\r\n",  # empty payload, no reply
        # a batch envelope's size: many reads before it is whole
        b"HMSG _INBOX.a 5 $JS.ACK.MD.d.1.9.9.1.0 %d %d\r\n%s%s\r\n" % (len(hdr), len(hdr) + 70_000, hdr, b"x" * 70_000),
    ]
    stream = b"".join(frames) * 3

    class Conn:
        def __init__(self, raw: bool) -> None:
            self.got: list[tuple[object, ...]] = []
            self.ops: list[str] = []
            self._raw_handlers = {5: lambda *a: self.got.append((5, *map(_bytes, a)))} if raw else {}

        async def _process_msg(self, sid, subject, reply, data, headers) -> None:
            self.got.append((sid, *map(_bytes, (subject, reply, data, headers))))

        async def _process_ping(self) -> None:
            self.ops.append("ping")

        async def _process_pong(self) -> None:
            self.ops.append("pong")

        async def _process_info(self, info) -> None:
            self.ops.append(f"info {info['server_id']}")

    reference = Conn(raw=False)
    parser = Parser(reference)
    await parser.parse(stream)
    assert len(reference.got) == 18 and reference.ops == ["ping", "info x"] * 3
    for step in (1, 2, 3, 7, 13, 64, 32768, len(stream)):
        for raw in (True, False):
            conn = Conn(raw)
            fast = FrameParser(conn)
            for i in range(0, len(stream), step):
                await fast.parse(stream[i:i + step])
            assert conn.got == reference.got, (step, raw)
            assert conn.ops == reference.ops, (step, raw)
            assert not fast.buf


def _bytes(value: object) -> object:
    return bytes(value) if isinstance(value, bytes | bytearray) else value
