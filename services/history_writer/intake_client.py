"""The intake connection: a nats-py client whose pull-reply inboxes bypass nats-py's message path.

For every delivered message nats-py parses the header block into a dict (a Python loop over
every character of every header name), builds a ``Msg``, and passes it through an asyncio
queue to a per-subscription task: ~7 µs a message, more than everything the history writer
does with it. The intake only needs the raw bytes (ack subject, payload, one header), so the
inbox subscriptions registered with ``subscribe_raw`` get them straight from the protocol
parser, synchronously: ``handler(subject, reply, data, header_block)``.

The protocol parser is replaced too (:class:`marketbus.runtime.natsprivate.FrameParser`): nats-py's matches two regular
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

from marketbus.runtime import natsprivate
from marketbus.runtime.natsprivate import FrameParser, RawHandler, RawInboxClient

__all__ = ["IntakeClient", "RawHandler", "header_value", "status_of"]


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
