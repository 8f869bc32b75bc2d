"""Deterministic event ids: the same vendor event always gets the same id (replays included).

The id is the ``Nats-Msg-Id`` of the message (JetStream de-duplication) and the key the writers
de-duplicate on.
"""

from __future__ import annotations

from collections.abc import Callable
from hashlib import blake2b


def event_id(source: str, kind: str, *identity: object) -> str:
    """An id from the vendor's own identity of an event, e.g.
    ``event_id("digitex", "trade", market_id, trade_id)``; 24 hex characters."""
    text = "\x1f".join((source, kind, *(str(part) for part in identity)))
    return blake2b(text.encode(), digest_size=12).hexdigest()


def id_head(source: str, kind: str, *identity: object) -> bytes:
    """The constant head of :func:`event_id`'s text (its leading parts, each followed by the
    separator): what a normalizer computes once per instrument; see :func:`event_id_of`."""
    return "\x1f".join((source, kind, *(str(part) for part in identity), "")).encode()


def _event_id_of(head: bytes, tail: str) -> str:
    return blake2b(head + tail.encode(), digest_size=12).hexdigest()


event_id_of: Callable[[bytes, str], str]
try:  # compiled (make venv): one call, no hasher object (about 80 ns less per event)
    from ._checks import event_id_hex as event_id_of
except ImportError:  # not built (the `make dist` wheel), or a build older than its source
    event_id_of = _event_id_of
"""``event_id_of(id_head(source, kind, *head_parts), "\\x1f".join(map(str, tail_parts)))`` is
``event_id(source, kind, *head_parts, *tail_parts)``: the hot path's form of an id (the head once
per instrument, the tail per event)."""
