"""Base classes every contract event derives from.

Events are frozen, keyword-only msgspec Structs tagged with ``type`` so that one decoder
decodes any message of the bus. Timestamps are int nanoseconds since the Unix epoch (UTC).
Prices and sizes are ``Decimal`` (encoded as JSON strings): the vendor's exact value.
"""

from __future__ import annotations

import msgspec

SCHEMA_VERSION = 1
"""Version of the wire schema; travels in the ``Marketbus-Schema`` header of every message."""

NO_VENUE = "_"
"""Subject token used where an event has no venue (e.g. units, news language-less items)."""


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """Root of every message type on the bus.

    ``gc=False``: events hold no reference cycles, and not tracking them makes decoding faster.
    """


class MarketEvent(Event, frozen=True, kw_only=True):
    """An event about one instrument (or reference item) of one vendor.

    ``id`` is deterministic from the vendor's own identity of the event (see ``ids.event_id``),
    so a replay yields the same id; it is the ``Nats-Msg-Id`` used for de-duplication.
    """

    id: str
    source: str  # vendor: finx | ticksupply | digitex | sitagri
    venue: str  # exchange / market source, NATS-token safe
    symbol: str  # normalized, NATS-token safe (see subjects.normalize_symbol)
    ts_event: int  # vendor/exchange time, ns UTC
    ts_recv: int  # ingest time, ns UTC
    replay: bool = False  # produced by a replay/backfill rather than the live feed
