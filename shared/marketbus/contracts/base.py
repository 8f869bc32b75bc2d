"""Base classes every contract event derives from.

Events are frozen, keyword-only msgspec Structs tagged with ``type`` so that one decoder
decodes any message of the bus. Timestamps are int nanoseconds since the Unix epoch (UTC).
Prices and sizes are ``Decimal`` (encoded as JSON strings): the vendor's exact value, in the canonical
decimal text (``invariants.canonical_decimal``: "100.50" goes out "100.5"), so history and replay
give back the published bytes.
Every field type states an invariant checked when an event is built and when it is decoded
(see :mod:`marketbus.contracts.invariants`).
"""

from __future__ import annotations

from .invariants import Checked, Id, Nanos, Token

SCHEMA_VERSION = 1
"""Version of the wire schema; travels in the ``Marketbus-Schema`` header of every message."""

NO_VENUE = "_"
"""Subject token used where an event has no venue (e.g. units, news language-less items)."""


class Event(Checked, frozen=True, kw_only=True, tag_field="type", gc=False):
    """Root of every message type on the bus.

    ``gc=False``: events hold no reference cycles, and not tracking them makes decoding faster.
    """


class MarketEvent(Event, frozen=True, kw_only=True):
    """An event about one instrument (or reference item) of one vendor.

    ``id`` is deterministic from the vendor's own identity of the event (see ``ids.event_id``),
    so a replay yields the same id; it is the ``Nats-Msg-Id`` used for de-duplication.
    """

    id: Id
    source: Token  # vendor: finx | ticksupply | digitex | sitagri
    venue: Token  # exchange / market source, NATS-token safe
    symbol: Token  # normalized, NATS-token safe (see subjects.normalize_symbol)
    ts_event: Nanos  # vendor/exchange time, ns UTC
    ts_recv: Nanos  # ingest time, ns UTC
    replay: bool = False  # produced by a replay/backfill rather than the live feed
