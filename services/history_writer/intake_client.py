"""The intake connection: a nats-py client whose pull-reply inboxes bypass nats-py's message path.

For every delivered message nats-py parses the header block into a dict (a Python loop over
every character of every header name), builds a ``Msg``, and passes it through an asyncio
queue to a per-subscription task: ~7 µs a message, more than everything the history writer
does with it. The intake only needs the raw bytes (ack subject, payload, one header), so the
inbox subscriptions registered with ``subscribe_raw`` get them straight from the protocol
parser, synchronously: ``handler(subject, reply, data, header_block)``.

The protocol parser is replaced too (:class:`FrameParser`): nats-py's matches two regular
expressions per message, keeps its state in a dict and awaits a coroutine per message (~1.8 µs
a message, the biggest cost of a single-event message in the writer); this one splits the
control lines of every complete ``MSG``/``HMSG`` frame in the received bytes and calls the raw
handler directly. Other operations (PING, INFO, -ERR, ...) go to nats-py's parser one line at a
time, messages of ordinary subscriptions to nats-py's ``_process_msg``.

The client is :class:`marketbus.runtime.natsprivate.RawInboxClient` (the private nats-py API it
needs, its version check and its fallback live there); this module adds the parser and the raw
header helpers. The connection uses the service's own connect options (servers, credentials, TLS).
"""

from __future__ import annotations

from typing import Any

from nats.errors import ProtocolError
from nats.protocol.parser import AWAITING_CONTROL_LINE, MAX_CONTROL_LINE_SIZE, Parser

from marketbus.runtime import natsprivate
from marketbus.runtime.natsprivate import RawHandler, RawInboxClient

__all__ = ["FrameParser", "IntakeClient", "RawHandler", "header_value", "status_of"]


class FrameParser(Parser):
    """nats-py's parser with a fast path for message frames (module docstring).

    Only complete frames are taken from the buffer; a partial one stays there until the rest
    arrives, so the base parser's "awaiting payload" state is never used."""

    async def parse(self, data: bytes = b"") -> None:
        self.buf.extend(data)
        if self.state != AWAITING_CONTROL_LINE:  # (only if the base parser ran on a message)
            await super().parse()
            if self.state != AWAITING_CONTROL_LINE:
                return
        nc: Any = self.nc
        raw: dict[int, RawHandler] = getattr(nc, "_raw_handlers", {})
        while self.buf:
            buf = bytes(self.buf)  # slices of bytes are the payloads (one copy each, as nats-py)
            pos, size = 0, len(buf)
            line_end = -1  # where a line for nats-py's parser ends
            while pos < size:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if size - pos > MAX_CONTROL_LINE_SIZE:
                        raise ProtocolError("nats: control line too long")
                    break
                op = buf[pos:pos + 4]
                if op == b"HMSG" or op[:3] == b"MSG":
                    parts = buf[pos:end].split()
                    try:
                        if op == b"HMSG":  # HMSG <subject> <sid> [reply] <header bytes> <total bytes>
                            reply = parts[3] if len(parts) == 6 else b""
                            hlen, total = int(parts[-2]), int(parts[-1])
                        else:  # MSG <subject> <sid> [reply] <bytes>
                            reply = parts[3] if len(parts) == 5 else b""
                            hlen, total = 0, int(parts[-1])
                        sid = int(parts[2])
                    except (IndexError, ValueError):
                        raise ProtocolError("nats: malformed MSG") from None
                    start = end + 2
                    if start + total + 2 > size:
                        break  # the rest of the frame has not arrived
                    headers = buf[start:start + hlen] if hlen else None
                    payload = buf[start + hlen:start + total]
                    pos = start + total + 2
                    handler = raw.get(sid)
                    if handler is not None:
                        handler(parts[1], reply, payload, headers)
                    else:
                        await nc._process_msg(sid, parts[1], reply, payload, headers)
                    continue
                line_end = end + 2  # any other operation: nats-py's parser, on that line alone
                break
            del self.buf[:pos]
            if line_end < 0:
                return  # all parsed, or a partial frame or line: wait for more bytes
            rest = self.buf[line_end - pos:]
            line = self.buf = bytearray(buf[pos:line_end])
            await super().parse()
            if self.buf is not line:  # reset (a reconnect): what was left belongs to the old connection
                return
            self.buf = rest


class IntakeClient(RawInboxClient):
    """The history writer's intake connection (pull requests, raw replies, acks)."""

    def __init__(self) -> None:
        super().__init__()
        if natsprivate.AVAILABLE:
            self._ps = FrameParser(self)


def header_value(block: bytes | None, name: bytes) -> str | None:
    """The value of header ``name`` (given as ``b"\\r\\nName:"``) in a raw header block."""
    if not block:
        return None
    i = block.find(name)
    if i < 0:
        return None
    i += len(name)
    j = block.find(b"\r\n", i)
    return block[i:j].strip().decode("utf-8", "replace")


def status_of(block: bytes | None) -> str | None:
    """The inline status of a raw header block (``NATS/1.0 408 Request Timeout`` -> ``408``)."""
    if block and block.startswith(b"NATS/1.0 "):
        return block[9:12].decode("ascii", "replace")
    return None
