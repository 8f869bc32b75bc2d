"""The intake connection: a nats-py client whose pull-reply inboxes bypass nats-py's message path.

For every delivered message nats-py parses the header block into a dict (a Python loop over
every character of every header name), builds a ``Msg``, and passes it through an asyncio
queue to a per-subscription task: ~7 µs a message, more than everything the history writer
does with it. The intake only needs the raw bytes (ack subject, payload, one header), so the
inbox subscriptions registered with ``subscribe_raw`` get them straight from the protocol
parser, synchronously: ``handler(subject, reply, data, header_block)``.

The client is :class:`marketbus.runtime.natsprivate.RawInboxClient` (the private nats-py API it
needs, its version check and its fallback live there); this module adds the raw header helpers.
The connection uses the service's own connect options (servers, credentials, TLS).
"""

from __future__ import annotations

from marketbus.runtime.natsprivate import RawHandler, RawInboxClient

__all__ = ["IntakeClient", "RawHandler", "header_value", "status_of"]


class IntakeClient(RawInboxClient):
    """The history writer's intake connection (pull requests, raw replies, acks)."""


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
