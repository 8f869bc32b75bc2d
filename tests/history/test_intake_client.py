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
