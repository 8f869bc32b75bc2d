"""``marketbus tail SUBJECT``: decode and pretty-print bus messages.

When the server goes away, tail reconnects (for ``reconnect_s`` seconds, then exits 2 with a
message); with ``--json`` every event is one JSON object on one line, its subject first.
"""

from __future__ import annotations

import asyncio
import sys
import time
from decimal import Decimal
from typing import Any

import msgspec
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from rich.console import Console

from marketbus.contracts import codec
from marketbus.contracts.codec import Batch
from marketbus.runtime.ordered import ordered_subscribe

from .common import connect, nats_url
from .output import decimal_texts, json_line, plain

_SKIP = {"id", "source", "venue", "symbol", "ts_event", "ts_recv", "replay"}


def summarize(event: Any) -> str:
    """A one-line summary: the interesting fields of an event, None and empty ones omitted."""
    parts = []
    texts = decimal_texts(type(event))  # decimals carried as text (MarketPrice): shown plain, as Decimals are
    for field in event.__struct_fields__:
        if field in _SKIP:
            continue
        value = getattr(event, field)
        if value is None or value == [] or value == {} or value is False:
            continue
        if isinstance(value, Decimal):
            value = plain(value)
        elif field in texts:
            value = plain(Decimal(value))
        elif isinstance(value, list) and len(value) > 4:
            value = f"[{len(value)} items]"
        elif isinstance(value, bytes):
            value = f"<{len(value)} bytes>"
        text = str(value)
        parts.append(f"{field}={text[:80]}")
    return " ".join(parts)


def check_subject(subject: str) -> str:
    """``subject`` if NATS accepts it for a subscription, else ValueError with a hint."""
    tokens = subject.split(".")
    problem = None
    if not subject or any(c.isspace() for c in subject):
        problem = "empty or contains white space"
    elif any(not t for t in tokens):
        problem = "has an empty token (two dots in a row, or a dot at an end)"
    elif ">" in tokens[:-1] or any(("*" in t or ">" in t) and len(t) > 1 for t in tokens):
        problem = "'*' must be a whole token and '>' the last one"
    if problem:
        raise ValueError(f"bad subject {subject!r}: {problem}; e.g. 'md.trade.finx.>' or 'md.*.digitex.*.BTC-USD'")
    return subject


class Printer:
    """Prints messages as they arrive and counts the events printed."""

    def __init__(self, console: Console, as_json: bool, count: int | None) -> None:
        self.console = console
        self.as_json = as_json
        self.count = count
        self.seen = 0
        self.done = asyncio.Event()

    def wanted(self) -> bool:
        return self.count is None or self.seen < self.count

    def _one(self) -> None:
        self.seen += 1
        if self.count is not None and self.seen >= self.count:
            self.done.set()

    async def on_message(self, msg: Any) -> None:
        if not self.wanted():  # messages already in flight when the count was reached
            return
        try:
            message = codec.decode(msg.data, codec.schema_version_of(msg.headers))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._undecodable(msg, exc)
            return
        if isinstance(message, Batch) and not self.as_json:
            self.console.print(f"[dim]{msg.subject}[/] [bold]batch[/] of {len(message.events)} {message.kind} events",
                               soft_wrap=True)
        for event in codec.iter_events(message):
            if not self.wanted():
                break
            if self.as_json:
                json_line(event, msg.subject)
            else:
                tag = type(event).__struct_config__.tag
                # soft_wrap: one line per event, also piped (`| grep`), where rich would cut at 80 columns
                self.console.print(f"[dim]{msg.subject}[/] [bold]{tag}[/] {summarize(event)}", highlight=False,
                                   soft_wrap=True)
            self._one()

    def _undecodable(self, msg: Any, exc: Exception) -> None:
        if self.as_json:
            try:  # JSON that is not a contract message: shown as it is
                body = msgspec.json.decode(msg.data)
            except msgspec.DecodeError:
                body = None
            json_line(body if isinstance(body, dict) else {"data": msg.data.decode("utf-8", "replace")}, msg.subject)
        else:
            self.console.print(f"[red]{msg.subject}[/] undecodable ({exc}): {msg.data[:200]!r}", highlight=False,
                               soft_wrap=True, markup=False)
        self._one()


async def _subscribe(nc: Any, subject: str, printer: Printer, last: bool) -> None:
    if last:
        # from the stream: the last stored message of every matching subject, then live ones
        # (reference data is published rarely: this is how to see the current values)
        try:
            await ordered_subscribe(nc.jetstream(), subject, cb=printer.on_message,
                                    config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT))
        except NotFoundError:
            raise ValueError(f"--last: no stream on this server stores {subject!r} (streams store md.>, ref.>, "
                             "status.>, orders.evt.> ...; a wildcard must not span two of them)") from None
    else:
        await nc.subscribe(subject, cb=printer.on_message)


async def until_done_or_closed(nc: Any, done: asyncio.Event) -> bool:
    """Wait until ``done`` (True) or the connection is closed for good (False)."""
    while not done.is_set():
        if nc.is_closed:
            return False
        try:
            await asyncio.wait_for(done.wait(), timeout=0.5)
        except TimeoutError:
            continue
    return True


async def reconnect(url: str | None, reconnect_s: float) -> Any:
    """A new connection within ``reconnect_s`` seconds, or ConnectionError saying what happened."""
    target = nats_url(url)
    sys.stderr.write(f"connection to NATS at {target} lost; reconnecting (for up to {reconnect_s:g}s)...\n")
    deadline = time.monotonic() + reconnect_s
    while True:
        try:
            nc = await connect(url)
        except Exception:
            if time.monotonic() >= deadline:
                raise ConnectionError(f"lost the connection to NATS at {target} and could not reconnect "
                                      f"within {reconnect_s:g}s") from None
            await asyncio.sleep(1.0)
            continue
        sys.stderr.write("reconnected.\n")
        return nc


async def run_tail(url: str | None, subject: str, as_json: bool, count: int | None, console: Console,
                   last: bool = False, reconnect_s: float = 30.0) -> int:
    """Print until ``count`` events (None = until interrupted); returns the number printed.
    Messages published while the connection is down are not seen (core NATS)."""
    check_subject(subject)
    if count is not None and count < 0:
        raise ValueError(f"--count {count}: give 0 (forever) or a positive number")
    printer = Printer(console, as_json, count)
    nc = await connect(url)
    try:
        while True:
            await _subscribe(nc, subject, printer, last)
            if await until_done_or_closed(nc, printer.done):
                return printer.seen
            nc = await reconnect(url, reconnect_s)
    finally:
        if not nc.is_closed:
            await nc.drain()
