"""What a consumer in another language sees: the NATS wire protocol and JSON documented by the
generated JSON Schema — no Python NATS client and no msgspec on the reading side."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import nats

from marketbus.contracts import schema
from marketbus.contracts.ids import event_id
from marketbus.contracts.market import BookLevel, BookSnapshot, Trade
from marketbus.contracts.reference import Instrument
from marketbus.runtime.publisher import JetStreamPublisher

ROOT = Path(__file__).resolve().parents[2]


async def read_raw_messages(url: str, subject: str, want: int, ready: asyncio.Event) -> list[tuple[str, dict, bytes]]:
    """A minimal NATS client speaking the text protocol (as a C/Go/JS client would)."""
    parsed = urlparse(url)
    reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
    await reader.readline()  # INFO {...}
    writer.write(
        b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\nSUB ' + subject.encode() + b" 1\r\nPING\r\n"
    )
    await writer.drain()
    assert await reader.readline() == b"PONG\r\n"
    ready.set()
    out = []
    while len(out) < want:
        line = (await reader.readline()).decode().rstrip("\r\n")
        if line == "PING":
            writer.write(b"PONG\r\n")
            continue
        op, *args = line.split(" ")
        assert op == "HMSG", line  # every marketbus message carries headers
        subj, _sid, header_len, total_len = args[0], args[1], int(args[-2]), int(args[-1])
        block = await reader.readexactly(total_len + 2)
        raw_headers, payload = block[:header_len], block[header_len:total_len]
        headers = dict(h.split(": ", 1) for h in raw_headers.decode().split("\r\n")[1:] if h)
        out.append((subj, headers, payload))
    writer.close()
    return out


async def test_messages_read_off_the_wire_validate_against_the_published_json_schema(nats_url: str, js) -> None:
    now = 1_700_000_000_000_000_000
    events = [
        Trade(id=event_id("x", "trade", 1), source="polyglot", venue="V", symbol="BTC-USD", ts_event=now, ts_recv=now,
              price=Decimal("21865.010000000002"), size=Decimal("0.5"), side="buy", trade_id="77"),
        BookSnapshot(id=event_id("x", "book", 1), source="polyglot", venue="V", symbol="BTC-USD", ts_event=now,
                     ts_recv=now, bids=[BookLevel(Decimal("100.5"), Decimal("2"))],
                     asks=[BookLevel(Decimal("101"), Decimal("1"), 3)]),
        Instrument(id=event_id("x", "instrument", 1), source="polyglot", venue="V", symbol="BTC-USD", ts_event=now,
                   ts_recv=now, instrument_type="spot", vendor_symbol="BTC:USD", tick_size=Decimal("0.01")),
    ]
    ready = asyncio.Event()
    reader = asyncio.create_task(read_raw_messages(nats_url, "*.*.polyglot.>", 4, ready))
    await ready.wait()
    nc = await nats.connect(nats_url)
    publisher = await JetStreamPublisher(nc).start()
    try:
        for event in events:
            await publisher.publish_event(event)
        await publisher.publish_batch([events[0]], replay=True)
        await publisher.flush()
        received = await asyncio.wait_for(reader, 10)
    finally:
        await publisher.close()
        await nc.close()

    any_event = json.loads((ROOT / "docs/schemas/events.json").read_text())
    for subject, headers, payload in received:
        document = json.loads(payload)  # plain JSON
        jsonschema.validate(document, any_event)
        assert headers["Marketbus-Schema"] == "1" and headers["Marketbus-Type"] == document["type"]
        assert headers["Nats-Msg-Id"] == document["id"]
        assert subject.split(".")[1] in (document["type"], document.get("kind"))
    trade = json.loads(received[0][2])
    assert trade["price"] == "21865.010000000002" and trade["ts_event"] == now  # exact decimal, int ns
    batch = json.loads(received[3][2])
    assert batch["type"] == "batch" and batch["events"][0]["id"] == trade["id"]


def test_docs_schemas_are_generated_from_the_current_code(tmp_path: Path) -> None:
    schema.write(tmp_path)
    committed = ROOT / "docs/schemas"
    for generated in tmp_path.iterdir():
        assert (committed / generated.name).exists(), f"docs/schemas/{generated.name} is missing: run `make schemas`"
        assert json.loads((committed / generated.name).read_text()) == json.loads(generated.read_text()), (
            f"docs/schemas/{generated.name} is stale: run `make schemas`")
