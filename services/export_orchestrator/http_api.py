"""The TickSupply-compatible HTTP API over marketbus's own data.

Same paths, shapes, errors and conventions as TickSupply, so the official ``ticksupply`` client
and the vendor's ``requests`` workflow work unchanged with only the base URL and the key changed:

- ``X-Api-Key`` on every ``/v1`` call (401 ``unauthenticated``), exactly one ``X-Request-Id`` on
  every reply (errors included);
- errors ``{"error": {"code", "message", "details"}}``; 429 ``rate_limited`` + ``Retry-After``
  beyond the per-key rate or when too many jobs are queued;
- cursor pages ``{items, total, limit, next_page_token}`` (signed opaque tokens);
- ``Idempotency-Key`` on exports (an export's id derives from it: a retry returns the same job;
  the same key with another request is 409 ``already_exists``).

Datastreams: the stored market data streams, the feeds' streams and the vendors' catalog streams
(reference data never is one): ``exchange`` = venue, ``instrument`` = the vendor symbol,
``stream_type`` = event kind, plus ``source``/``venue``/``symbol``/``kind``; ``datastream_id`` is a
stable integer derived from (kind, source, venue, symbol). Instruments carry base/quote/type from
the stored ``Instrument`` reference events.

Subscriptions are marketbus feeds (:mod:`.subscriptions`): create/pause/resume/delete change
collection through the vendor's ingestor; status, ``created_at`` and spans are the feed's (a
subscribe after a delete is a new subscription: new id, new span). As with TickSupply, an export
of a datastream needs an active or paused subscription (403 otherwise) and covers only its spans
(``JobRecord.ranges``); availability lists the same spans. ``selector`` exports (a marketbus
extension) need no subscription and are not clipped: they are the bus's ``ExportRequest`` over
HTTP, an export of marketbus's own history (wildcards over many streams, streams no feed controls,
data stored before or between a feed's periods), not of a TickSupply datastream (README).

Exports: ``schema`` ``raw`` (default for trades) / ``normalized`` / ``sch_...`` / an inline column
spec give TickSupply's CSV (:mod:`.layouts`), ``marketbus`` the event's own columns; export schemas
(built-in and custom, :mod:`.export_schemas`) are served. marketbus extensions: a ``selector``
(wildcards) instead of a ``datastream_id``, ``format`` (``csv`` = ``csv.gz``, or ``parquet``),
``columns``, ``fill_gaps``, ``max_rows_per_file``.

Downloads: ``GET /v1/exports/{id}/download`` gives HMAC-signed URLs ``/artifacts/<job>/<file>``
that expire (``url_ttl_s``); a tampered or expired URL is 403 and only the job's own artifacts
can ever be served.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
import uuid
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route

from marketbus.contracts.jobs import ExportRequest, StreamSelector
from marketbus.contracts.subjects import denormalize_symbol
from marketbus.runtime.ratelimit import RateLimiter
from marketbus.runtime.tsapi import ApiError, error_response, int_param, iso, json_body, parse_ns, v1_routes
from marketbus.runtime.tsapi_schemas import BUILT_IN_NAMES, CATEGORIES, Content, SchemaRecord, parse_content

from .artifacts import ArtifactNotFound, ArtifactStore
from .export_schemas import SchemaStore, new_schema_id
from .history_source import HistorySource, HistoryUnavailable, StreamKey
from .idempotency import Idempotency
from .jobs import Conflict, InvalidRequest, JobError, JobManager, JobRecord, NotFound, Overloaded, artifact_id
from .layouts import BUILT_IN_KINDS, MARKETBUS, TICKSUPPLY_LAYOUTS, category_of, check_transforms
from .settings import ExportSettings
from .signing import UrlSigner
from .subscriptions import TICKSUPPLY_STREAM_TYPE, Subscription, Subscriptions

CATALOG_LIMITS = (100, 1000)
ACCOUNT_LIMITS = (50, 100)
# marketbus instrument types -> TickSupply's (spot | perpetual | futures | option)
INSTRUMENT_TYPES = {"future": "futures", "continuous_future": "futures"}
STATUS = {
    "queued": "queued",
    "running": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "canceled",
}


def _json(body: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status, media_type="application/json")


def datastream_id(key: StreamKey | Sequence[str]) -> int:
    """Stable across processes and restarts: 48 bits of a hash of kind/source/venue/symbol."""
    digest = hashlib.blake2b("\x1f".join(key).encode(), digest_size=6).digest()
    return int.from_bytes(digest, "big") or 1


def ticksupply_stream_type(kind: str) -> str:
    """A datastream's ``stream_type`` as TickSupply names it (quotes are its ``depth``), else the kind."""
    return TICKSUPPLY_STREAM_TYPE.get(kind, kind)


def owner_of(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


class _Gate:
    """Pure ASGI middleware: API key + per-key rate limit on /v1, X-Request-Id everywhere."""

    def __init__(self, app: Any, api: ExportApi) -> None:
        self.app = app
        self.api = api

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req_{uuid.uuid4().hex}"

        async def stamped(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":  # exactly one request id per response
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        if scope["path"].startswith("/v1"):
            try:
                scope.setdefault("state", {})["owner"] = self.api.check(Request(scope))
            except ApiError as exc:
                await error_response(exc)(scope, receive, stamped)
                return
        await self.app(scope, receive, stamped)


class ExportApi:
    """The HTTP face of the orchestrator: given what it serves (the job manager, the history
    source for the catalog, the artifact store for downloads, the URL signer), not the service."""

    def __init__(self, settings: ExportSettings, jobs: JobManager, history: HistorySource, artifacts: ArtifactStore,
                 signer: UrlSigner, schemas: SchemaStore, subscriptions: Subscriptions) -> None:
        self.settings = settings
        self.schemas = schemas
        self.subs = subscriptions
        self.idem = Idempotency(schemas.kv)
        self.jobs = jobs
        self.history = history
        self.artifacts = artifacts
        self.keys = {k: owner_of(k) for k in self.settings.api_key_list()}
        self.buckets: dict[str, RateLimiter] = {}
        self.signer = signer
        self.page_secret = hashlib.sha256(b"pages" + signer.secret).digest()

    # --- gate -----------------------------------------------------------------------------------
    def check(self, request: Request) -> str:
        key = request.headers.get("x-api-key", "")
        if not key:
            raise ApiError(401, "Missing X-Api-Key header")
        owner = self.keys.get(key)
        if owner is None:
            # constant-time comparison against every configured key
            for known, own in self.keys.items():
                if hmac.compare_digest(known.encode(), key.encode()):
                    owner = own
            if owner is None:
                raise ApiError(401, "Invalid API key")
        if self.settings.requests_per_s > 0:
            bucket = self.buckets.setdefault(
                owner, RateLimiter(self.settings.requests_per_s, max(1, self.settings.burst))
            )
            wait = bucket.take()
            if wait > 0:
                retry = max(1, math.ceil(wait))
                raise ApiError(429, "Rate limit exceeded", {"retry_after_seconds": retry}, {"retry-after": str(retry)})
        return owner

    # --- pages ----------------------------------------------------------------------------------
    def _sign(self, payload: bytes) -> str:
        return hmac.new(self.page_secret, payload, hashlib.sha256).hexdigest()[:16]

    def page(self, request: Request, items: list[Any], key: Callable[[Any], Any], limits: tuple[int, int],
             render: Callable[[Any], Any]) -> Response:
        q = request.query_params
        limit = int_param(request, "limit", limits[0])
        if not 1 <= limit <= limits[1]:
            raise ApiError(400, f"limit must be between 1 and {limits[1]}", {"field": "limit", "max": limits[1]})
        filters = sorted((k, v) for k, v in q.multi_items() if k not in ("limit", "page_token"))
        scope = hashlib.sha256(msgspec.json.encode([request.url.path, filters])).hexdigest()[:12]
        items = sorted(items, key=key)
        remaining = items
        token = q.get("page_token")
        if token:
            try:
                data, sig = token.rsplit(".", 1)
                payload = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
                # the signature first: only a token this API made is decoded (a crafted one nested
                # 100k deep raised RecursionError: a 500)
                if not hmac.compare_digest(sig, self._sign(payload)):
                    raise ValueError
                token_scope, after = msgspec.json.decode(payload)
                if token_scope != scope:
                    raise ValueError
            except (ValueError, TypeError, msgspec.DecodeError):
                raise ApiError(400, "Invalid page_token", {"field": "page_token"}) from None
            after_key = tuple(after) if isinstance(after, list) else after
            remaining = [i for i in items if key(i) > after_key]
        chunk = remaining[:limit]
        next_token = None
        if len(remaining) > limit:
            payload = msgspec.json.encode([scope, key(chunk[-1])])
            next_token = base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + self._sign(payload)
        return _json({"items": [render(i) for i in chunk], "total": len(items), "limit": limit,
                      "next_page_token": next_token})

    # --- catalog --------------------------------------------------------------------------------
    async def _streams(self) -> list[StreamKey]:
        """The datastreams: the stored market data streams, the streams of the feeds and the
        streams the vendors' catalogs offer (what a subscription can start collecting)."""
        stored = await self.history.market_streams()
        feeds = {k for f in await self.subs.feeds() for k in self.subs.streams_of(f, stored)}
        return sorted(set(stored) | feeds | set(await self.history.vendor_datastreams()))

    @staticmethod
    def ds_wire(k: StreamKey) -> dict[str, Any]:
        return {
            "datastream_id": datastream_id(k),
            "exchange": k.venue,
            "instrument": denormalize_symbol(k.symbol),
            "stream_type": ticksupply_stream_type(k.kind),
            "wire_format": "json",
            "source": k.source,
            "venue": k.venue,
            "symbol": k.symbol,
            "kind": k.kind,
        }

    async def _find(self, exchange: str | None = None, instrument: str | None = None, stream_type: str | None = None,
                    wire_format: str | None = None, source: str | None = None) -> list[StreamKey]:
        out = []
        for k in await self._streams():
            if exchange and exchange not in (k.venue, k.source):
                continue
            if instrument and instrument not in (k.symbol, denormalize_symbol(k.symbol)):
                continue
            if stream_type and stream_type not in (k.kind, ticksupply_stream_type(k.kind)):
                continue
            if wire_format and wire_format != "json":
                continue
            if source and source != k.source:
                continue
            out.append(k)
        return out

    async def stream_by_id(self, ds_id: Any) -> StreamKey:
        if not isinstance(ds_id, int) or isinstance(ds_id, bool):
            raise ApiError(400, "datastream_id must be an integer", {"field": "datastream_id"})
        for k in await self._streams():
            if datastream_id(k) == ds_id:
                return k
        raise ApiError(404, f"Datastream {ds_id} not found", {"datastream_id": ds_id})

    async def exchanges(self, request: Request) -> Response:
        venues = sorted({k.venue for k in await self._streams()})
        return _json([{"code": v, "display_name": v} for v in venues])

    async def instruments(self, request: Request) -> Response:
        exchange = request.path_params["exchange"]
        streams = await self._find(exchange=exchange)
        if not streams:
            raise ApiError(404, f"Exchange {exchange!r} not found")
        q = request.query_params
        refs = await self.history.instruments(exchange)
        items: list[dict[str, Any]] = []
        for symbol in sorted({k.symbol for k in streams}):
            ref = refs.get(symbol) or {}
            kind = str(ref.get("instrument_type") or "")
            items.append({"symbol": denormalize_symbol(symbol), "base": ref.get("base"), "quote": ref.get("quote"),
                          "instrument_type": INSTRUMENT_TYPES.get(kind, kind) or None})
        search = (q.get("search") or "").upper()
        wanted = {f: (q.get(f) or "").upper() for f in ("base", "quote", "instrument_type")}
        items = [i for i in items if (not search or search in i["symbol"].upper())
                 and all(not v or (i[f] or "").upper() == v for f, v in wanted.items())]
        return self.page(request, items, lambda i: i["symbol"], CATALOG_LIMITS, lambda i: i)

    async def instrument_datastreams(self, request: Request) -> Response:
        q = request.query_params
        streams = await self._find(request.path_params["exchange"], request.path_params["instrument"],
                                   q.get("stream_type") or None, q.get("wire_format") or None)
        return self.page(request, streams, datastream_id, CATALOG_LIMITS, self.ds_wire)

    async def datastreams(self, request: Request) -> Response:
        q = request.query_params
        streams = await self._find(q.get("exchange") or None, q.get("instrument") or None, q.get("stream_type") or None,
                                   q.get("wire_format") or None, q.get("source") or None)
        return self.page(request, streams, datastream_id, CATALOG_LIMITS, self.ds_wire)

    async def availability(self, request: Request) -> Response:
        """As TickSupply: the ranges are the live (active or paused) subscription's spans, the open
        one clipped at this moment (:meth:`Subscription.ranges`, as an export is clipped), each with
        the rows stored in it; no range without a live subscription (never subscribed, deleted)."""
        k = await self.stream_by_id(int_param(request, "datastream_id"))
        now = time.time_ns()
        sub = await self.subs.of_stream(k)
        live = sub is not None and sub.status != "deleted"
        sel = StreamSelector(kind=k.kind, source=k.source, venue=k.venue, symbol=k.symbol)
        ranges = []
        for lo, hi in sub.ranges(now) if sub is not None and live else []:
            rows = sum(c.rows for c in await self.history.coverage(sel, lo, hi)
                       if (c.kind, c.source, c.venue, c.symbol) == tuple(k))
            ranges.append({"from": lo, "to": hi, "rows_estimate": rows})
        return _json({"datastream": self.ds_wire(k), "ranges": ranges, "updated_at": iso(now)})

    async def billing(self, request: Request) -> Response:
        return _json({"access_status": "ACTIVE", "plan_code": "pro", "current_period_end": None,
                      "usage": {"extra_stream_minutes_total": 0, "export_gb_total": "0", "export_gb_extra": 0}})

    # --- subscriptions: marketbus feeds (see .subscriptions) ----------------------------------------
    def _sub_wire(self, sub: Subscription, spans: bool = True) -> dict[str, Any]:
        # the superset: GET validates the datastream_id form, create the datastream + spans form
        return {"id": sub.id, "datastream_id": datastream_id(sub.stream), "status": sub.status,
                "created_at": iso(sub.created_ns), "datastream": self.ds_wire(sub.stream),
                "spans": sub.spans() if spans else []}

    async def _all_subs(self) -> list[Subscription]:
        return await self.subs.all(await self.history.market_streams())

    async def _sub(self, request: Request) -> Subscription:
        sub_id = request.path_params["id"]
        for sub in await self._all_subs():
            if sub.id == sub_id:
                return sub
        raise ApiError(404, "Subscription not found", {"id": sub_id})

    async def create_subscription(self, request: Request) -> Response:
        body = await json_body(request)
        k = await self.stream_by_id(body.get("datastream_id"))
        sub = await self.subs.create(k)
        return _json(self._sub_wire(sub, spans=False), 201)  # TickSupply: spans are [] on create

    async def list_subscriptions(self, request: Request) -> Response:
        subs = await self._all_subs()  # newest first, as TickSupply lists them
        return self.page(request, subs, lambda s: (-s.created_ns, s.id), ACCOUNT_LIMITS, self._sub_wire)

    async def get_subscription(self, request: Request) -> Response:
        return _json(self._sub_wire(await self._sub(request)))

    async def pause_subscription(self, request: Request) -> Response:
        sub = await self._sub(request)
        if sub.status == "deleted":
            raise ApiError(409, "Subscription is deleted", {"id": sub.id, "status": sub.status})
        if sub.status == "active":
            await self.subs.command("pause", sub.feed)
        return Response(status_code=204)

    async def resume_subscription(self, request: Request) -> Response:
        sub = await self._sub(request)
        if sub.status == "deleted":
            raise ApiError(409, "A deleted subscription cannot be resumed; create a new one",
                           {"id": sub.id, "status": sub.status})
        if sub.status == "paused":
            await self.subs.command("resume", sub.feed)
        return Response(status_code=204)

    async def delete_subscription(self, request: Request) -> Response:
        sub = await self._sub(request)
        if sub.status != "deleted":
            await self.subs.command("remove", sub.feed)
        return Response(status_code=204)

    async def spans(self, request: Request) -> Response:
        return _json((await self._sub(request)).spans())

    # --- export schemas ---------------------------------------------------------------------------
    async def _schema(self, request: Request) -> SchemaRecord:
        rec = await self.schemas.get(request.state.owner, request.path_params["id"])
        if rec is None:
            raise ApiError(404, "Export schema not found", {"id": request.path_params["id"]})
        return rec

    async def _own_schema(self, request: Request) -> SchemaRecord:
        rec = await self._schema(request)
        if rec.is_built_in:
            raise ApiError(403, "Built-in schemas cannot be modified or deleted", {"id": rec.id})
        return rec

    @staticmethod
    def _content(body: Any) -> Content:
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k in ("columns", "unfold", "derive")}
        try:
            content = parse_content(body)
            check_transforms(content)
        except ValueError as exc:
            raise ApiError(400, f"Invalid schema content: {exc}") from None
        return content

    async def list_schemas(self, request: Request) -> Response:
        return _json([r.list_item() for r in await self.schemas.all(request.state.owner)])

    async def create_schema(self, request: Request) -> Response:
        body = await json_body(request)
        name, category = body.get("name"), body.get("stream_category")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "name is required", {"field": "name"})
        if category not in CATEGORIES:
            raise ApiError(400, f"stream_category must be one of {', '.join(CATEGORIES)}", {"field": "stream_category"})
        content = self._content(body)
        owner = request.state.owner
        taken = name in (*BUILT_IN_NAMES, MARKETBUS) or any(
            r.name == name and r.category == category for r in await self.schemas.own(owner))
        if taken:
            raise ApiError(409, f"A schema named {name!r} already exists for {category}", {"name": name})
        rec = SchemaRecord(id=new_schema_id(), name=name, category=category, is_built_in=False,
                           created_ns=time.time_ns(), versions=[content])
        await self.schemas.put(owner, rec)
        return _json(rec.wire(), 201)

    async def get_schema(self, request: Request) -> Response:
        return _json((await self._schema(request)).wire())

    async def update_schema(self, request: Request) -> Response:
        rec = await self._own_schema(request)
        rec.versions.append(self._content(await json_body(request)))
        rec.draft = None
        await self.schemas.put(request.state.owner, rec)
        return _json(rec.wire())

    async def delete_schema(self, request: Request) -> Response:
        rec = await self._own_schema(request)
        await self.schemas.delete(request.state.owner, rec.id)
        return Response(status_code=204)

    @staticmethod
    def _draft(rec: SchemaRecord) -> Content:
        if rec.draft is None:
            raise ApiError(404, "No draft exists for this schema", {"id": rec.id})
        return rec.draft

    async def create_draft(self, request: Request) -> Response:
        rec = await self._own_schema(request)
        raw = await request.body()
        rec.draft = (self._content(rec.versions[-1]) if raw.strip() in (b"", b"null")
                     else self._content(await json_body(request)))
        await self.schemas.put(request.state.owner, rec)
        return _json(rec.wire(rec.draft), 201)

    async def get_draft(self, request: Request) -> Response:
        rec = await self._own_schema(request)
        return _json(rec.wire(self._draft(rec)))

    async def update_draft(self, request: Request) -> Response:
        rec = await self._own_schema(request)
        self._draft(rec)
        rec.draft = self._content(await json_body(request))
        await self.schemas.put(request.state.owner, rec)
        return _json(rec.wire(rec.draft))

    async def discard_draft(self, request: Request) -> Response:
        rec = await self._own_schema(request)
        self._draft(rec)
        rec.draft = None
        await self.schemas.put(request.state.owner, rec)
        return Response(status_code=204)

    async def publish_schema(self, request: Request) -> Response:
        rec = await self._own_schema(request)
        rec.versions.append(self._draft(rec))
        rec.draft = None
        await self.schemas.put(request.state.owner, rec)
        return _json(rec.wire())

    async def _layout(self, owner: str, ref: Any, kind: str | None) -> tuple[str, str | None]:
        """An export's ``schema`` -> (layout name, custom column spec). The default is TickSupply's
        ``raw`` for a trade datastream, marketbus's own columns otherwise."""
        if ref is None:
            return ("raw" if kind in BUILT_IN_KINDS else MARKETBUS), None
        if isinstance(ref, dict):
            return "custom", msgspec.json.encode(self._content(ref)).decode()
        if not isinstance(ref, str):
            raise ApiError(400, "schema must be a name, a schema id or a column spec", {"field": "schema"})
        if ref.startswith("sch_"):
            rec = await self.schemas.get(owner, ref)
            if rec is None:
                raise ApiError(400, f"Unknown schema {ref!r}", {"field": "schema"})
            if kind is not None and rec.category != category_of(kind):
                raise ApiError(400, f"Schema {ref} is for {rec.category}, the datastream is {category_of(kind)}",
                               {"field": "schema"})
            if rec.is_built_in:
                ref = rec.name
            elif not rec.versions:
                raise ApiError(400, f"Schema {ref} has no published version", {"field": "schema"})
            else:
                return "custom", msgspec.json.encode(self._content(rec.versions[-1])).decode()
        if ref in TICKSUPPLY_LAYOUTS:
            if kind is not None and kind not in BUILT_IN_KINDS:
                raise ApiError(
                    400,
                    f"The {ref} schema is defined for trade, quote (depth) and book_delta datastreams; use schema "
                    f"{MARKETBUS!r}",
                    {"field": "schema"},
                )
            return ref, None
        if ref == MARKETBUS:
            return ref, None
        raise ApiError(400, f"Unknown schema {ref!r}: raw, normalized, {MARKETBUS}, a schema id or a column spec",
                       {"field": "schema"})

    # --- exports --------------------------------------------------------------------------------
    def job_wire(self, r: JobRecord) -> dict[str, Any]:
        req = r.job.request
        sel = req.selector
        ds = r.datastream_id
        if ds is None and "*" not in (sel.kind + sel.source + sel.venue + sel.symbol):
            ds = datastream_id((sel.kind, sel.source, sel.venue, sel.symbol))
        return {
            "id": r.id, "datastream_id": ds or 0, "start_time": req.start_ns, "end_time": req.end_ns,
            "format": "csv" if req.format == "csv.gz" else req.format,
            "status": "deleted" if r.deleted else STATUS[r.state], "reason": r.job.reason,
            "created_at": iso(r.job.created_ts), "started_at": iso(r.started_ts), "finished_at": iso(r.finished_ts),
            "rows": r.job.rows, "bytes": r.job.bytes, "percent": r.job.percent, "complete": r.complete,
            "selector": msgspec.to_builtins(sel), "artifact_count": len(r.job.artifacts), "schema": req.schema,
        }

    async def _job(self, request: Request) -> JobRecord:
        job_id = request.path_params["id"]
        record = await self.jobs.get(job_id)
        if record is None or record.owner not in ("", request.state.owner):
            raise ApiError(404, "Export not found", {"id": job_id})
        return record

    async def list_exports(self, request: Request) -> Response:
        records = await self.jobs.list(owner=request.state.owner)
        return self.page(request, records, lambda r: (-r.job.created_ts, r.id), ACCOUNT_LIMITS, self.job_wire)

    async def create_export(self, request: Request) -> Response:
        body = await json_body(request)
        start, end = parse_ns(body.get("start_time"), "start_time"), parse_ns(body.get("end_time"), "end_time")
        if start >= end:
            raise ApiError(400, "start_time must be before end_time", {"field": "start_time"})
        fmt = body.get("format", "csv")
        formats = {"csv": "csv.gz", "csv.gz": "csv.gz", "parquet": "parquet"}
        if fmt not in formats:
            raise ApiError(400, f"Unsupported format {fmt!r} (csv, csv.gz or parquet)", {"field": "format"})
        ds_id = None
        ranges: list[tuple[int, int]] | None = None
        owner = request.state.owner
        if body.get("selector") is not None:
            try:
                selector = msgspec.convert(body["selector"], StreamSelector)
            except msgspec.ValidationError as exc:
                raise ApiError(400, f"Invalid selector: {exc}", {"field": "selector"}) from None
            schema, spec = await self._layout(owner, body.get("schema", MARKETBUS), None)
        else:
            k = await self.stream_by_id(body.get("datastream_id"))
            ds_id = datastream_id(k)
            selector = StreamSelector(kind=k.kind, source=k.source, venue=k.venue, symbol=k.symbol)
            schema, spec = await self._layout(owner, body.get("schema"), k.kind)
            # as TickSupply: an export needs an active or paused subscription (403 otherwise, also
            # after a delete until subscribed again), and covers only its spans, the open one
            # clipped at this moment (data not collected yet is not in it)
            sub = await self.subs.of_stream(k)
            if sub is None or sub.status == "deleted":
                message = ("No subscription to this datastream" if sub is None else
                           "The subscription to this datastream was deleted; subscribe again to export new data")
                raise ApiError(403, message, {"datastream_id": ds_id})
            ranges = sub.ranges(time.time_ns(), start, end)
        key = request.headers.get("idempotency-key") or f"auto-{uuid.uuid4().hex}"
        extra: dict[str, Any] = {}
        for name, typ in (("columns", list), ("fill_gaps", bool), ("max_rows_per_file", int)):
            if body.get(name) is not None:
                if not isinstance(body[name], typ) or (typ is int and isinstance(body[name], bool)):
                    raise ApiError(400, f"{name} must be a {typ.__name__}", {"field": name})
                extra[name] = body[name]
        try:
            req = ExportRequest(idempotency_key=key, selector=selector, start_ns=start, end_ns=end,
                                format=formats[fmt], schema=schema, schema_spec=spec, **extra)  # type: ignore[arg-type]
            record, _ = await self.jobs.submit(req, owner=request.state.owner, datastream_id=ds_id, ranges=ranges)
        except Overloaded as exc:
            raise ApiError(429, str(exc), {}, {"retry-after": "5"}) from None
        except Conflict as exc:
            raise ApiError(409, str(exc), {"idempotency_key": key}) from None
        except (InvalidRequest, msgspec.ValidationError) as exc:
            raise ApiError(400, str(exc)) from None
        return _json(self.job_wire(record), 201)

    async def get_export(self, request: Request) -> Response:
        return _json(self.job_wire(await self._job(request)))

    async def cancel_export(self, request: Request) -> Response:
        record = await self._job(request)
        await self.jobs.cancel(record.id)
        return Response(status_code=204)

    async def delete_export(self, request: Request) -> Response:
        record = await self._job(request)
        await self.jobs.delete(record.id)
        return Response(status_code=204)

    def base_url(self, request: Request) -> str:
        return self.settings.public_url or str(request.base_url)

    async def download(self, request: Request) -> Response:
        record = await self._job(request)
        if record.deleted or record.state != "succeeded":
            status = "deleted" if record.deleted else STATUS[record.state]
            raise ApiError(
                409, f"Export is {status}; downloads need status succeeded", {"id": record.id, "status": status}
            )
        base = self.base_url(request)
        arts = [{"id": a.id, "url": self.signer.url(base, record.id, a.filename), "bytes": a.bytes,
                 "filename": a.filename, "rows": a.rows, "sha256": a.sha256} for a in record.job.artifacts]
        body: dict[str, Any] = {"artifacts": arts, "count": len(arts), "total_bytes": sum(a["bytes"] for a in arts)}
        if record.manifest:
            body["manifest"] = {"id": artifact_id(record.id, record.manifest), "filename": record.manifest,
                                "url": self.signer.url(base, record.id, record.manifest)}
        return _json(body)

    async def artifact(self, request: Request) -> Response:
        job_id, filename = request.path_params["job_id"], request.path_params["filename"]
        q = request.query_params
        problem = self.signer.verify(job_id, filename, q.get("expires"), q.get("sig"))
        if problem == "expired":
            raise ApiError(403, "Request has expired", {"reason": "expired"})
        if problem is not None:
            raise ApiError(403, "The URL signature is not valid", {"reason": problem})
        record = await self.jobs.get(job_id)
        names = {a.filename: a for a in record.job.artifacts} if record else {}
        if record is None or record.deleted or (filename not in names and filename != record.manifest):
            raise ApiError(404, "The specified artifact does not exist")
        store = self.artifacts
        assert store is not None
        try:
            size = await store.size(job_id, filename)
        except ArtifactNotFound:
            raise ApiError(404, "The specified artifact does not exist") from None
        media = ("application/json" if filename.endswith(".json") else
                 "application/gzip" if filename.endswith(".gz") else "application/vnd.apache.parquet")
        headers = {"content-length": str(size), "content-disposition": f'attachment; filename="{filename}"'}
        if filename in names:
            headers["etag"] = f'"{names[filename].sha256}"'
        return StreamingResponse(store.read(job_id, filename), media_type=media, headers=headers)

    # --- app --------------------------------------------------------------------------------------
    def app(self) -> Starlette:
        # the TickSupply surface, as the sandbox serves it; exports have their own Idempotency-Key
        v1 = v1_routes(self, self.idem.wrap, exports_idempotent=False)
        return Starlette(
            routes=[Mount("/v1", routes=v1), Route("/artifacts/{job_id}/{filename}", self.artifact)],
            exception_handlers={ApiError: _api_error, HTTPException: _http_error, JobError: _job_error,
                                HistoryUnavailable: _unavailable},
            middleware=[Middleware(_Gate, api=self)],
        )


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _job_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, JobError)
    status = 404 if isinstance(exc, NotFound) else exc.status
    return error_response(ApiError(status, str(exc)))


async def _unavailable(_: Request, exc: Exception) -> Response:
    return error_response(ApiError(503, f"history is not available: {exc}", {}, {"retry-after": "5"}))


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    message = "Resource not found" if status == 404 else ("Method not allowed" if status == 405 else str(exc.detail))
    return error_response(ApiError(status if status in (404, 405) else 400, message))
