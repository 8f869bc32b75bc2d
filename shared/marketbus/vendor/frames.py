"""Malformed-frame handling in one place.

A normalizer declares the errors it raises for a payload it cannot read (``Malformed`` and
friends). :class:`FrameGuard` runs it and, on a declared error, counts, logs and dead-letters
the payload (:meth:`Ingestor.malformed`), then returns ``None`` so the loop carries on:

    frames = FrameGuard(self, normalize.Malformed)
    events = await frames.normalize("order_book", raw, normalize.order_book, raw, symbol, venue, now)
    if events is None:
        return

Anything else a normalizer raises is a bug and propagates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
log = logging.getLogger("marketbus.vendor.frames")


class MalformedSink(Protocol):
    async def malformed(self, channel: str, payload: bytes | str, reason: str) -> None: ...


class FrameGuard:
    def __init__(self, sink: MalformedSink, *errors: type[BaseException]) -> None:
        if not errors:
            raise ValueError("declare the normalizer's errors")
        self.sink = sink
        self.errors = errors

    async def normalize(self, channel: str, payload: bytes | str | Any, parse: Callable[..., T], *args: Any,
                        **kwargs: Any) -> T | None:
        """``parse(*args, **kwargs)``; on a declared error the payload is dead-lettered on
        ``channel`` and the result is ``None``. ``payload`` may be any buffer (``msgspec.Raw``),
        or a function making the bytes (``lambda: msgspec.json.encode(row)``): it is copied or
        made only when it is dead-lettered."""
        try:
            return parse(*args, **kwargs)
        except self.errors as exc:
            await self.reject(channel, payload, str(exc))
            return None

    async def reject(self, channel: str, payload: bytes | str | Any, reason: str) -> None:
        """Count, log and dead-letter one payload (for rows a normalizer reports as bad)."""
        log.warning("malformed %s payload: %s", channel, reason[:300])
        if callable(payload):
            payload = payload()
        await self.sink.malformed(channel, payload if isinstance(payload, (bytes, str)) else bytes(payload), reason)
