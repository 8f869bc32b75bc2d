"""The intake connection: a nats-py client whose pull-reply inboxes bypass nats-py's message path.

For every delivered message nats-py parses the header block into a dict (a Python loop over
every character of every header name), builds a ``Msg``, and passes it through an asyncio
queue to a per-subscription task: ~7 µs a message, more than everything the history writer
does with it. The intake only needs the raw bytes (ack subject, payload, one header), so the
inbox subscriptions registered with :meth:`IntakeClient.subscribe_raw` get them straight from
the protocol parser, synchronously: ``handler(subject, reply, data, header_block)``.

This relies on nats-py's private ``Client._process_msg(sid, subject, reply, data, headers)``
(nats-py 2.x); if a release changes it, :meth:`subscribe_raw` falls back to an ordinary callback
subscription (same handler, slower). Everything else (other subscriptions, reconnects, which
re-subscribe under the same sid) is plain nats-py. The connection uses the service's own
connect options (servers, credentials, TLS).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client

RawHandler = Callable[[bytes, bytes, bytes, "bytes | None"], None]

_PRIVATE_OK = list(inspect.signature(Client._process_msg).parameters) == ["self", "sid", "subject", "reply", "data", "headers"]


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


class IntakeClient(Client):
    def __init__(self) -> None:
        super().__init__()
        self._raw_handlers: dict[int, RawHandler] = {}

    async def subscribe_raw(self, subject: str, handler: RawHandler) -> Any:
        if not _PRIVATE_OK:
            async def cb(msg: Any) -> None:  # fallback: the public path, same handler contract
                handler(msg.subject.encode(), msg.reply.encode(), msg.data, _block_of(msg.headers))

            return await self.subscribe(subject, cb=cb, pending_msgs_limit=-1, pending_bytes_limit=-1)
        sub = await self.subscribe(subject, pending_msgs_limit=-1, pending_bytes_limit=-1)
        self._raw_handlers[sub._id] = handler
        return sub

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        handler = self._raw_handlers.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        handler(subject, reply, data, headers)


def _block_of(headers: dict[str, str] | None) -> bytes | None:
    if not headers:
        return None
    status = headers.get("Status")
    head = f"NATS/1.0 {status}" if status else "NATS/1.0"
    return (head + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
