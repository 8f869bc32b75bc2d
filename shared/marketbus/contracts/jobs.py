"""Request/reply and job contracts: replays (ingestors), history queries (history writer),
exports (export orchestrator).

- ``replay.<source>``: :class:`ReplayRequest` -> :class:`ReplayReply`; the replayed events are
  published on their normal ``md.`` subjects with ``replay=True`` (batched).
- ``history.query``: :class:`HistoryQuery` -> :class:`HistoryChunk` replies (streamed).
- ``history.coverage``: :class:`CoverageQuery` -> :class:`CoverageReply`.
- ``sitagri.news.publish``: :class:`PublishArticle` -> :class:`PublishReply`.
- ``export.create`` (request/reply) -> :class:`ExportJob`; ``export.get``, ``export.cancel``;
  progress on ``export.status.<job_id>``.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from .base import Event
from .invariants import Checked, Count, Id, Label, Nanos, SelectorToken, Text, Token


class StreamSelector(Checked, frozen=True, kw_only=True):
    """Selects streams; each part may be ``*`` (any)."""

    kind: SelectorToken = "*"
    source: SelectorToken = "*"
    venue: SelectorToken = "*"
    symbol: SelectorToken = "*"


class ReplayRequest(Event, frozen=True, kw_only=True, tag="replay_request"):
    request_id: Label
    source: Token
    venue: SelectorToken
    symbol: SelectorToken
    kind: SelectorToken
    start_ns: Nanos
    end_ns: Nanos


class ReplayReply(Event, frozen=True, kw_only=True, tag="replay_reply"):
    request_id: Label  # "" when the request could not be decoded
    accepted: bool
    events: Count = 0
    reason: Text | None = None


class TimeRange(Checked, frozen=True, array_like=True):
    start_ns: Nanos
    end_ns: Nanos


class HistoryQuery(Event, frozen=True, kw_only=True, tag="history_query"):
    selector: StreamSelector
    start_ns: Nanos
    end_ns: Nanos
    limit: Count = 10_000
    cursor: Text | None = None
    chunk_rows: Count = 5_000


class HistoryChunk(Event, frozen=True, kw_only=True, tag="history_chunk"):
    """A chunk of query results: events as they were published, oldest first."""

    events: list[msgspec.Raw]
    next_cursor: Text | None = None
    last: bool = True
    error: Text | None = None


class CoverageQuery(Event, frozen=True, kw_only=True, tag="coverage_query"):
    selector: StreamSelector
    start_ns: Nanos
    end_ns: Nanos


class StreamCoverage(Checked, frozen=True, kw_only=True):
    kind: Token
    source: Token
    venue: Token
    symbol: Token
    covered: list[TimeRange] = []
    gaps: list[TimeRange] = []  # reported by the feed (gap status events) and not yet resynced
    rows: Count = 0


class CoverageReply(Event, frozen=True, kw_only=True, tag="coverage_reply"):
    streams: list[StreamCoverage] = []
    error: Text | None = None


ExportFormat = Literal["csv.gz", "parquet"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class ExportRequest(Event, frozen=True, kw_only=True, tag="export_request"):
    idempotency_key: Label
    selector: StreamSelector
    start_ns: Nanos
    end_ns: Nanos
    format: ExportFormat = "parquet"
    columns: list[Label] | None = None
    fill_gaps: bool = True
    max_rows_per_file: Count = 1_000_000
    # column layout: "marketbus" (the event's own fields), TickSupply's built-in "raw" or
    # "normalized", or "custom" (a TickSupply column spec, as JSON text, in ``schema_spec``)
    schema: Literal["marketbus", "raw", "normalized", "custom"] = "marketbus"
    schema_spec: str | None = None


class Artifact(Checked, frozen=True, kw_only=True):
    id: Label
    filename: Label
    rows: Count
    bytes: Count
    sha256: Label


class ExportJob(Event, frozen=True, kw_only=True, tag="export_job"):
    """The state of an export job (also its progress event on ``export.status.<job_id>``)."""

    job_id: Id
    request: ExportRequest
    state: JobState
    reason: Text | None = None
    rows: Count = 0
    bytes: Count = 0
    percent: float = 0.0
    artifacts: list[Artifact] = []
    coverage: list[StreamCoverage] = []
    created_ts: Nanos
    updated_ts: Nanos


class PublishArticle(msgspec.Struct, kw_only=True):
    """``sitagri.news.publish`` request: publish an article to a writable Sitagri news source."""

    source: str  # news source code, e.g. PRIVDEMO
    title: str
    lang: str  # ISO-639-1, e.g. EN
    snippet: str = ""
    content: str = ""  # HTML without id/class/style/script
    copyright: str = ""
    publication_ts: int | None = None  # ns; default now
    modification_ts: int | None = None  # ns; default publication


class PublishReply(msgspec.Struct, kw_only=True, omit_defaults=True):
    ok: bool
    source: str = ""
    id: str | None = None
    error: str | None = None


JOB_TYPES = (
    ReplayRequest, ReplayReply, HistoryQuery, HistoryChunk, CoverageQuery, CoverageReply,
    ExportRequest, ExportJob,
)
