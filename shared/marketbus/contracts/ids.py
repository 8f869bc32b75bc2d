"""Deterministic event ids: the same vendor event always gets the same id (replays included).

The id is the ``Nats-Msg-Id`` of the message (JetStream de-duplication) and the key the writers
de-duplicate on.
"""

from __future__ import annotations

from hashlib import blake2b


def event_id(source: str, kind: str, *identity: object) -> str:
    """An id from the vendor's own identity of an event, e.g.
    ``event_id("digitex", "trade", market_id, trade_id)``; 24 hex characters."""
    text = "\x1f".join((source, kind, *(str(part) for part in identity)))
    return blake2b(text.encode(), digest_size=12).hexdigest()
