"""What the FinX ingestor's parts (:mod:`.session`, :mod:`.catalog`, :mod:`.live`,
:mod:`.backfill`) share: the per-pair state and the history cursor, the pages the backfill reads,
the outbox of what was published since the last commit, and :class:`FinxHost`, the narrow view
of the ingestor they are given (so no part imports :mod:`.app`, which imports them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from marketbus.contracts.market import Tick
from marketbus.runtime.ingest import IngestHost
from marketbus.vendor.cursor import CursorStore
from marketbus.vendor.frames import FrameGuard
from marketbus.vendor.gaps import GapTracker

from . import normalize
from .client import TickPlantClient
from .settings import FinxIngestSettings

MS = 1_000_000


class Cursor(msgspec.Struct):
    """History progress of one pair: every tick before ``ts_ns`` is published, and so are the
    ticks at ``ts_ns`` whose ids are listed (rows sharing the boundary time)."""

    ts_ns: int
    boundary: list[str] = []


@dataclass
class PairState:
    pair: str
    symbol: str
    cursor: int
    origin: int = 0  # where this process started paging (the saved cursor or the configured start)
    boundary: set[str] = field(default_factory=set)
    last_snap_id: str | None = None
    snap_ids: dict[str, int] = field(default_factory=dict)  # published by a snap, ahead of the cursor
    committed: tuple[int, frozenset[str]] | None = None
    tracker: GapTracker | None = None  # the history's gap: interrupted -> gap -> resynced
    active: bool = True  # False once feed control stopped the pair: nothing more of it is published

    @property
    def gap(self) -> tuple[int, int] | None:
        """What is missing and not back-filled yet (None: nothing)."""
        if self.tracker is None:
            return None
        if self.tracker.since_ns is not None:  # interrupted, not reported yet
            start = self.tracker.open_gap[0] if self.tracker.open_gap else self.cursor
            return (start, self.tracker.since_ns)
        return self.tracker.open_gap


@dataclass
class Page:
    ticks: list[Tick]  # new ticks, sorted
    cursor: int
    boundary: set[str]
    full: bool  # the vendor returned a whole page: there is more
    stuck: bool = False  # a whole page at one timestamp: advanced by 1 ms (a hole is possible)


# (events, replay flag or None for single events, their ack futures)
Sent = tuple[list[Tick], bool | None, list[Any]]


@dataclass
class Outbox:
    """What was published since the last commit, as published. After a publishing failure it is
    re-sent unchanged, so the batch ids (Nats-Msg-Id) are the same and JetStream drops what it had
    stored already; a commit (everything acked) empties it."""

    sent: list[Sent] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.sent)

    def add(self, events: list[Tick], replay: bool | None, acks: list[Any]) -> None:
        self.sent.append((events, replay, acks))

    def clear(self) -> None:
        self.sent.clear()


class FinxHost(IngestHost, Protocol):
    """The members of :class:`~.app.FinxIngestor` its parts use."""

    @property
    def settings(self) -> FinxIngestSettings: ...
    @property
    def client(self) -> TickPlantClient: ...
    @property
    def frames(self) -> FrameGuard: ...
    @property
    def cursors(self) -> CursorStore[Cursor]: ...
    @property
    def pairs(self) -> dict[str, PairState]: ...
    @property
    def outbox(self) -> Outbox: ...
    @property
    def nats_connected(self) -> bool: ...

    def vendor_refused(self, channel: str, exc: normalize.VendorError, what: str) -> None: ...
