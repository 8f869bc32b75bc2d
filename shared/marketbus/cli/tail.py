"""``marketbus tail SUBJECT``: decode and pretty-print bus messages."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import msgspec
from nats.js.api import ConsumerConfig, DeliverPolicy
from rich.console import Console

from marketbus.contracts import codec
from marketbus.contracts.codec import Batch

from .common import connect

_SKIP = {"id", "source", "venue", "symbol", "ts_event", "ts_recv", "replay"}


def summarize(event: Any) -> str:
    """A one-line summary: the interesting fields of an event, None and empty ones omitted."""
    parts = []
    for field in event.__struct_fields__:
        if field in _SKIP:
            continue
        value = getattr(event, field)
        if value is None or value == [] or value == {} or value is False:
            continue
        if isinstance(value, Decimal):
            value = str(value)
        elif isinstance(value, list) and len(value) > 4:
            value = f"[{len(value)} items]"
        elif isinstance(value, bytes):
            value = f"<{len(value)} bytes>"
        text = str(value)
        parts.append(f"{field}={text[:80]}")
    return " ".join(parts)


async def run_tail(url: str | None, subject: str, as_json: bool, count: int | None, console: Console,
                   last: bool = False) -> int:
    nc = await connect(url)
    seen = 0
    done = asyncio.Event()

    def wanted() -> bool:
        return count is None or seen < count

    async def on_message(msg: Any) -> None:
        nonlocal seen
        if not wanted():  # messages already in flight when the count was reached
            return
        if as_json:
            console.print_json(msg.data.decode("utf-8", "replace")) if msg.data[:1] in (b"{", b"[") else console.print(msg.data)
            seen += 1
        else:
            try:
                message = codec.decode(msg.data, codec.schema_version_of(msg.headers))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                console.print(f"[red]{msg.subject}[/] undecodable ({exc}): {msg.data[:200]!r}")
                seen += 1
            else:
                prefix = f"[dim]{msg.subject}[/] [bold]{type(message).__struct_config__.tag}[/]"
                if isinstance(message, Batch):
                    console.print(f"{prefix} batch of {len(message.events)} {message.kind} events")
                for event in codec.iter_events(message):
                    if not wanted():
                        break
                    tag = type(event).__struct_config__.tag
                    console.print(f"[dim]{msg.subject}[/] [bold]{tag}[/] {summarize(event)}", highlight=False)
                    seen += 1
        if count is not None and seen >= count:
            done.set()

    if last:
        # from the stream: the last stored message of every matching subject, then live ones
        # (reference data is published rarely: this is how to see the current values)
        await nc.jetstream().subscribe(
            subject, cb=on_message, ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT),
        )
    else:
        await nc.subscribe(subject, cb=on_message)
    try:
        await done.wait()
    finally:
        await nc.drain()
    return seen
