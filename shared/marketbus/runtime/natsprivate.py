"""Every use of nats-py's private API, in this one module, checked at import and with a fallback.

Two hot paths go below nats-py's public API because its per-message work costs more than what
they do with the message:

- **writing pre-built protocol frames** (:func:`write_frame`, :func:`flush`): the publisher sends
  ``HPUB`` frames with a header block encoded once per event, and the history writer acks
  thousands of messages with one write of their ``PUB`` frames. Uses ``Client._send_command``,
  ``Client._flush_pending`` and ``Client._flush_queue``.
- **message frames parsed without nats-py's parser** (:class:`FrameParser`): the history
  writer's intake connection splits MSG/HMSG frames itself (nats-py's parser runs two regexes and
  awaits a coroutine per message). Replaces ``Client._ps``; reads ``Parser.buf`` and ``Parser.state``.
- **raw delivery to an inbox** (:class:`RawInboxClient`): the history writer's pull replies go
  from the protocol parser straight to a synchronous handler, without nats-py parsing headers
  into a dict, building a ``Msg`` and queueing it to a task. Overrides ``Client._process_msg``
  and reads ``Subscription._id``.

At import, :func:`problems` compares those names and signatures with what this module expects.
If any differs, :data:`AVAILABLE` is False and every function here takes the public path
instead (slower, same behaviour), and a warning says why. ``tests/unit/test_natsprivate.py``
fails loudly on the same check, so an upgrade of nats-py that changes them is noticed in CI,
not in production. :data:`TESTED_VERSIONS` lists the nats-py versions this was checked against.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import ProtocolError
from nats.protocol.parser import AWAITING_CONTROL_LINE, MAX_CONTROL_LINE_SIZE, Parser

log = logging.getLogger("marketbus.natsprivate")

TESTED_VERSIONS = ("2.16.0",)
NATS_PY_VERSION = importlib.metadata.version("nats-py")

# (class, private method, its parameters as this module calls or overrides it)
_METHODS: tuple[tuple[type, str, list[str]], ...] = (
    (Client, "_send_command", ["self", "cmd", "priority"]),
    (Client, "_flush_pending", ["self", "force_flush"]),
    (Client, "_process_msg", ["self", "sid", "subject", "reply", "data", "headers"]),
)
# private attributes read from instances: (class, attribute, how to make an instance)
_ATTRIBUTES: tuple[tuple[type, str, Callable[[], Any]], ...] = (
    (Client, "_flush_queue", Client),
    (Subscription, "_id", lambda: Subscription(None, id=7)),
    (Client, "_ps", Client),  # the protocol parser FrameParser replaces
    (Parser, "buf", lambda: Parser(None)),
    (Parser, "state", lambda: Parser(None)),
)

RawHandler = Callable[[bytes, bytes, bytes, "bytes | None"], None]  # (subject, reply, data, header block)


def problems(methods: tuple[tuple[type, str, list[str]], ...] = _METHODS,
             attributes: tuple[tuple[type, str, Callable[[], Any]], ...] = _ATTRIBUTES) -> list[str]:
    """What of the private API this module relies on is missing or changed (empty: all there)."""
    found = []
    for cls, name, params in methods:
        method = getattr(cls, name, None)
        if method is None:
            found.append(f"{cls.__name__}.{name} is gone")
            continue
        actual = list(inspect.signature(method).parameters)
        if actual != params:
            found.append(f"{cls.__name__}.{name}{tuple(actual)} is not {cls.__name__}.{name}{tuple(params)}")
    for cls, name, make in attributes:
        try:
            instance = make()
        except Exception as exc:
            found.append(f"cannot make a {cls.__name__} to check .{name}: {exc!r}")
            continue
        if not hasattr(instance, name):
            found.append(f"{cls.__name__} instances have no .{name}")
    return found


PROBLEMS = problems()
AVAILABLE = not PROBLEMS
if PROBLEMS:
    log.warning("nats-py %s: private API changed (%s); using the public (slower) paths", NATS_PY_VERSION,
                "; ".join(PROBLEMS))
elif NATS_PY_VERSION not in TESTED_VERSIONS:
    log.info("nats-py %s: not among the versions checked (%s), but its private API matches",
             NATS_PY_VERSION, ", ".join(TESTED_VERSIONS))


def fast_path(nc: Any) -> bool:
    """May frames be written straight to ``nc`` now? (Not while reconnecting: the public API
    buffers then.)"""
    return AVAILABLE and nc.is_connected


async def write_frame(nc: Client, frame: bytes) -> None:
    """Queue one or more complete protocol frames (``PUB``/``HPUB`` with their payloads) on
    ``nc``'s pending buffer, as nats-py's own publish does. Only when :func:`fast_path`."""
    await nc._send_command(frame)


def flush_queued(nc: Client) -> bool:
    """Is a flush of ``nc`` queued that its flusher task has not run yet? (Only when
    :func:`fast_path`.)"""
    return nc._flush_queue is not None and not nc._flush_queue.empty()


async def flush(nc: Client, only_if_idle: bool = False) -> None:
    """Have ``nc``'s flusher write the pending buffer; with ``only_if_idle``, only when no flush
    is queued already (a burst of frames then goes out in one write)."""
    if only_if_idle and (nc._flush_queue is None or not nc._flush_queue.empty()):
        return
    await nc._flush_pending()


class RawInboxClient(Client):
    """A nats-py client whose :meth:`subscribe_raw` subscriptions get each message's raw bytes
    from the protocol parser, synchronously: ``handler(subject, reply, data, header_block)``.

    Everything else (other subscriptions, reconnects, which re-subscribe under the same sid) is
    plain nats-py. Without the private API, :meth:`subscribe_raw` is an ordinary callback
    subscription calling the same handler (the header block rebuilt from the parsed headers).
    """

    def __init__(self) -> None:
        super().__init__()
        self._raw_handlers: dict[int, RawHandler] = {}

    async def subscribe_raw(self, subject: str, handler: RawHandler) -> Any:
        if not AVAILABLE:
            async def cb(msg: Any) -> None:  # fallback: the public path, same handler contract
                handler(msg.subject.encode(), msg.reply.encode(), msg.data, header_block_of(msg.headers))

            return await self.subscribe(subject, cb=cb, pending_msgs_limit=-1, pending_bytes_limit=-1)
        sub = await self.subscribe(subject, pending_msgs_limit=-1, pending_bytes_limit=-1)
        self._raw_handlers[sub._id] = handler
        return sub

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        handler = self._raw_handlers.get(sid)
        if handler is None:
            # nats-py annotates headers as bytes but passes None for a message without any
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        handler(subject, reply, data, headers)


class FrameParser(Parser):
    """nats-py's parser with a fast path for message frames (module docstring).

    Only complete frames are taken from the buffer; a partial one stays there until the rest
    arrives, so the base parser's "awaiting payload" state is never used."""

    _awaiting = 0  # the buffer holds a partial frame of this many bytes: nothing to parse before
    _pending: tuple[bytes, bytes, int, int, int, int] | None = None  # its (subject, reply, sid, start, hlen, total)

    def reset(self) -> None:
        super().reset()
        self._awaiting, self._pending = 0, None

    async def parse(self, data: bytes = b"") -> None:
        self.buf.extend(data)
        # a large frame (a batch envelope of 500 KB) comes in many reads of 32 KB: it is parsed
        # once it is whole (not at each read: copying the growing buffer each time is quadratic),
        # and its payload is copied out of the buffer once
        if len(self.buf) < self._awaiting:
            return
        pending, size = self._pending, self._awaiting
        self._awaiting, self._pending = 0, None
        if pending is not None and self.state == AWAITING_CONTROL_LINE:
            subject, reply, sid, start, hlen, total = pending
            view = memoryview(self.buf)
            try:
                headers = view[start:start + hlen].tobytes() if hlen else None
                payload = view[start + hlen:start + total].tobytes()
            finally:
                view.release()
            del self.buf[:size]
            handler = getattr(self.nc, "_raw_handlers", {}).get(sid)
            if handler is not None:
                handler(subject, reply, payload, headers)
            else:
                await self.nc._process_msg(sid, subject, reply, payload, headers)
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
                        self._awaiting = start + total + 2 - pos  # (the frame's size, from pos)
                        self._pending = (parts[1], reply, sid, start - pos, hlen, total)
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


def header_block_of(headers: dict[str, str] | None) -> bytes | None:
    """Parsed headers back to a raw block (``NATS/1.0[ status]\\r\\nName: value\\r\\n...\\r\\n``)."""
    if not headers:
        return None
    status = headers.get("Status")
    head = f"NATS/1.0 {status}" if status else "NATS/1.0"
    return (head + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
