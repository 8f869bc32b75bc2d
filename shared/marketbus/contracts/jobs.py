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


class StreamSelector(msgspec.Struct, frozen=True, kw_only=True):
    """Selects streams; each part may be ``*`` (any)."""

    kind: str = "*"
    source: str = "*"
    venue: str = "*"
    symbol: str = "*"


class ReplayRequest(Event, frozen=True, kw_only=True, tag="replay_request"):
    request_id: str
    source: str
    venue: str
    symbol: str
    kind: str
    start_ns: int
    end_ns: int


class ReplayReply(Event, frozen=True, kw_only=True, tag="replay_reply"):
    request_id: str
    accepted: bool
    events: int = 0
    reason: str | None = None


class TimeRange(msgspec.Struct, frozen=True, array_like=True):
    start_ns: int
    end_ns: int


class HistoryQuery(Event, frozen=True, kw_only=True, tag="history_query"):
    selector: StreamSelector
    start_ns: int
    end_ns: int
    limit: int = 10_000
    cursor: str | None = None
    chunk_rows: int = 5_000


class HistoryChunk(Event, frozen=True, kw_only=True, tag="history_chunk"):
    """A chunk of query results: events as they were published, oldest first."""

    events: list[msgspec.Raw]
    next_cursor: str | None = None
    last: bool = True
    error: str | None = None


class CoverageQuery(Event, frozen=True, kw_only=True, tag="coverage_query"):
    selector: StreamSelector
    start_ns: int
    end_ns: int


class StreamCoverage(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    source: str
    venue: str
    symbol: str
    covered: list[TimeRange] = []
    gaps: list[TimeRange] = []  # reported by the feed (gap status events) and not yet resynced
    rows: int = 0


class CoverageReply(Event, frozen=True, kw_only=True, tag="coverage_reply"):
    streams: list[StreamCoverage] = []
    error: str | None = None


ExportFormat = Literal["csv.gz", "parquet"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class ExportRequest(Event, frozen=True, kw_only=True, tag="export_request"):
    idempotency_key: str
    selector: StreamSelector
    start_ns: int
    end_ns: int
    format: ExportFormat = "parquet"
    columns: list[str] | None = None
    fill_gaps: bool = True
    max_rows_per_file: int = 1_000_000


class Artifact(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    filename: str
    rows: int
    bytes: int
    sha256: str


class ExportJob(Event, frozen=True, kw_only=True, tag="export_job"):
    """The state of an export job (also its progress event on ``export.status.<job_id>``)."""

    job_id: str
    request: ExportRequest
    state: JobState
    reason: str | None = None
    rows: int = 0
    bytes: int = 0
    percent: float = 0.0
    artifacts: list[Artifact] = []
    coverage: list[StreamCoverage] = []
    created_ts: int
    updated_ts: int


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
