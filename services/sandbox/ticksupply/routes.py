"""The ``/v1`` API handlers, the artifact server and the ``/_sandbox/ticksupply`` admin routes."""

from __future__ import annotations

import asyncio
import calendar
import time
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from marketbus.runtime.tsapi import v1_routes
from services.sandbox.common.base import json_response
from services.sandbox.common.faults import FaultInjector

from .api import (
    ACCOUNT_LIMITS,
    CATALOG_LIMITS,
    ApiError,
    Gate,
    GateMiddleware,
    IdempotencyStore,
    Pager,
    error_response,
    int_param,
    iso,
    json_body,
    new_request_id,
    now_ns,
    parse_ns,
)
from .catalog import Catalog, Datastream
from .exports import ExportFaults, ExportJob, ExportTiming, UrlSigner, export_rows, run_export
from .schemas import (
    BUILT_IN_NAMES,
    CATEGORIES,
    STREAM_CATEGORY,
    CompiledSchema,
    compile_built_in,
    compile_custom,
    parse_content,
)
from .settings import TickSupplySettings
from .store import Account, SchemaRecord, Store

BILLING_STATUSES = ("ACTIVE", "TRIALING", "GRACE", "SUSPENDED", "NONE")


def _no_content() -> Response:
    return Response(status_code=204)


class TickSupplyApi:
    def __init__(self, settings: TickSupplySettings, faults: FaultInjector) -> None:
        self.settings = settings
        self.faults = faults
        self.catalog = Catalog(settings.seed, settings.rate)
        self.store = Store(self.catalog, list(settings.api_keys), settings.seed)
        self.gate = Gate(settings.api_keys, settings.requests_per_s, settings.burst)
        self.pager = Pager(settings.signing_secret.encode())
        self.idempotency = IdempotencyStore(settings.idempotency_ttl_s)
        self.signer = UrlSigner(settings.signing_secret, settings.artifact_url_ttl_s)
        self.export_faults = ExportFaults()
        self.timing = ExportTiming(settings.export_queued_s, settings.export_running_s, settings.export_speed,
                                   settings.max_export_rows)
        self.artifacts: dict[str, tuple[str, str]] = {}  # art id -> (account key, export id)

    # --- plumbing ------------------------------------------------------------------------------
    def account(self, request: Request) -> Account:
        return self.store.accounts[request.state.api_key]

    def require_billing(self, account: Account) -> None:
        if account.access_status in ("SUSPENDED", "NONE"):
            raise ApiError(402, "Billing action required: the account has no active plan",
                           {"access_status": account.access_status})

    # --- catalog -------------------------------------------------------------------------------
    async def exchanges(self, request: Request) -> Response:
        return json_response(self.catalog.exchanges())

    def _exchange(self, request: Request) -> str:
        code = request.path_params["exchange"]
        if code not in self.catalog.instruments:
            raise ApiError(404, f"Exchange {code!r} not found")
        return code

    async def instruments(self, request: Request) -> Response:
        q = request.query_params
        search, base, quote, kind = q.get("search"), q.get("base"), q.get("quote"), q.get("instrument_type")
        items = [
            i for i in self.catalog.instruments[self._exchange(request)]
            if (not search or search.upper() in i.symbol.upper())
            and (not base or i.base == base.upper()) and (not quote or i.quote == quote.upper())
            and (not kind or i.instrument_type == kind)
        ]
        items.sort(key=lambda i: i.symbol)
        return self.pager.page(request, items, lambda i: i.symbol, CATALOG_LIMITS, lambda i: {
            "symbol": i.symbol, "base": i.base, "quote": i.quote, "instrument_type": i.instrument_type})

    def _datastream_page(self, request: Request, streams: list[Datastream]) -> Response:
        return self.pager.page(request, streams, lambda d: d.datastream_id, CATALOG_LIMITS, Datastream.wire)

    async def instrument_datastreams(self, request: Request) -> Response:
        exchange = self._exchange(request)
        symbol = request.path_params["instrument"]
        if not any(i.symbol == symbol for i in self.catalog.instruments[exchange]):
            raise ApiError(404, f"Instrument {symbol!r} not found on {exchange}")
        q = request.query_params
        return self._datastream_page(request, self.catalog.find(exchange, symbol, q.get("stream_type") or None,
                                                                q.get("wire_format") or None))

    async def datastreams(self, request: Request) -> Response:
        q = request.query_params
        return self._datastream_page(request, self.catalog.find(
            q.get("exchange") or None, q.get("instrument") or None, q.get("stream_type") or None,
            q.get("wire_format") or None))

    # --- subscriptions -------------------------------------------------------------------------
    async def list_subscriptions(self, request: Request) -> Response:
        subs = sorted(self.account(request).subscriptions.values(), key=lambda s: -s.seq)  # newest first
        return self.pager.page(request, subs, lambda s: -s.seq, ACCOUNT_LIMITS, lambda s: s.wire())

    async def create_subscription(self, request: Request) -> Response:
        body = await json_body(request)
        ds_id = body.get("datastream_id")
        if not isinstance(ds_id, int) or isinstance(ds_id, bool):
            raise ApiError(400, "datastream_id must be an integer", {"field": "datastream_id"})
        account = self.account(request)
        self.require_billing(account)
        sub = self.store.subscribe(account, self.store.datastream(ds_id))
        return json_response(sub.wire() | {"spans": []}, 201)  # the create reply never lists spans

    async def get_subscription(self, request: Request) -> Response:
        return json_response(self.store.subscription(self.account(request), request.path_params["id"]).wire())

    async def delete_subscription(self, request: Request) -> Response:
        self.store.delete(self.store.subscription(self.account(request), request.path_params["id"]))
        return _no_content()

    async def pause_subscription(self, request: Request) -> Response:
        self.store.pause(self.store.subscription(self.account(request), request.path_params["id"]))
        return _no_content()

    async def resume_subscription(self, request: Request) -> Response:
        account = self.account(request)
        sub = self.store.subscription(account, request.path_params["id"])
        if sub.status == "paused":
            self.require_billing(account)
        self.store.resume(sub)
        return _no_content()

    async def spans(self, request: Request) -> Response:
        sub = self.store.subscription(self.account(request), request.path_params["id"])
        return json_response([s.wire() for s in sub.spans])

    # --- exports -------------------------------------------------------------------------------
    def _export(self, request: Request) -> ExportJob:
        job = self.account(request).exports.get(request.path_params["id"])
        if job is None:
            raise ApiError(404, "Export not found", {"id": request.path_params["id"]})
        return job

    def _schema_for(self, account: Account, ref: Any, ds: Datastream) -> CompiledSchema:
        category = STREAM_CATEGORY[ds.stream_type]
        if ref is None or ref in BUILT_IN_NAMES:
            return compile_built_in(category, ref or "raw")
        if isinstance(ref, str):
            if not ref.startswith("sch_"):
                raise ApiError(400, f"Unknown schema {ref!r}", {"field": "schema"})
            rec = self.store.schema(account, ref)
            if rec.category != category:
                raise ApiError(400, f"Schema {ref} is for {rec.category}, the datastream is {category}",
                               {"field": "schema"})
            if not rec.versions:
                raise ApiError(400, f"Schema {ref} has no published version", {"field": "schema"})
            if rec.is_built_in:
                return compile_built_in(category, rec.name)
            return compile_custom(rec.versions[-1])
        try:
            return compile_custom(parse_content(ref))
        except ValueError as exc:
            raise ApiError(400, f"Invalid inline schema: {exc}", {"field": "schema"}) from None

    async def create_export(self, request: Request) -> Response:
        body = await json_body(request)
        account = self.account(request)
        ds = self.store.datastream(body.get("datastream_id"))
        start, end = parse_ns(body.get("start_time"), "start_time"), parse_ns(body.get("end_time"), "end_time")
        if start >= end:
            raise ApiError(400, "start_time must be before end_time", {"field": "start_time"})
        fmt = body.get("format", "csv")
        if fmt != "csv":
            raise ApiError(400, f"Unsupported format {fmt!r}", {"field": "format"})
        schema = self._schema_for(account, body.get("schema"), ds)
        self.require_billing(account)
        sub = account.live_subscription(ds.datastream_id)
        if sub is None:
            message = ("The subscription to this datastream was deleted; subscribe again to export new data"
                       if account.ever_subscribed(ds.datastream_id) else "No subscription to this datastream")
            raise ApiError(403, message, {"datastream_id": ds.datastream_id})
        created = now_ns()
        ranges = [(max(lo, start), min(hi, end)) for lo, hi in sub.ranges(created) if lo < end and hi > start]
        job = ExportJob(self.store.new_id("exp"), self.store.next_seq(), account.key, ds, start, end, ranges,
                        schema, created)
        account.exports[job.id] = job
        job.task = asyncio.get_running_loop().create_task(run_export(job, self.timing, self.export_faults))
        return json_response(job.wire(), 201)

    async def list_exports(self, request: Request) -> Response:
        jobs = sorted((j for j in self.account(request).exports.values() if j.status != "deleted"),
                      key=lambda j: -j.seq)
        return self.pager.page(request, jobs, lambda j: -j.seq, ACCOUNT_LIMITS, ExportJob.wire)

    async def get_export(self, request: Request) -> Response:
        return json_response(self._export(request).wire())

    async def cancel_export(self, request: Request) -> Response:
        job = self._export(request)
        if not job.terminal:
            job.status, job.finished_ns = "canceled", now_ns()
        return _no_content()

    async def delete_export(self, request: Request) -> Response:
        job = self._export(request)
        if job.status != "deleted":
            for art in job.artifacts:
                self.artifacts.pop(art.id, None)
            job.status, job.artifacts = "deleted", []
            job.finished_ns = job.finished_ns or now_ns()
        return _no_content()

    async def download(self, request: Request) -> Response:
        job = self._export(request)
        if job.status != "succeeded":
            raise ApiError(409, f"Export is {job.status}; downloads need status succeeded",
                           {"id": job.id, "status": job.status})
        base = str(request.base_url)
        arts = []
        for art in job.artifacts:
            self.artifacts[art.id] = (job.account, job.id)
            arts.append({"id": art.id, "url": self.signer.sign(base, art), "bytes": len(art.data),
                         "filename": art.filename})
        return json_response({"artifacts": arts, "count": len(arts), "total_bytes": sum(a["bytes"] for a in arts)})

    async def artifact(self, request: Request) -> Response:
        """The presigned-URL object store (S3 style: XML errors, no API key)."""
        art_id, filename = request.path_params["art_id"], request.path_params["filename"]
        owner = self.artifacts.get(art_id)
        job = self.store.accounts[owner[0]].exports.get(owner[1]) if owner else None
        art = next((a for a in job.artifacts if a.id == art_id and a.filename == filename), None) if job else None
        if art is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        problem = self.signer.verify(request.url.path, dict(request.query_params))
        if problem == "SignatureDoesNotMatch":
            return _s3_error(
                403, problem, "The request signature we calculated does not match the signature you provided."
            )
        if problem is not None:
            return _s3_error(403, problem, "Request has expired")
        return Response(art.data, headers={"content-type": "application/gzip", "etag": f'"{art.id[4:]}"',
                                           "content-disposition": f'attachment; filename="{art.filename}"'})

    # --- availability and billing ----------------------------------------------------------------
    async def availability(self, request: Request) -> Response:
        ds = self.store.datastream(int_param(request, "datastream_id"))
        sub = self.account(request).live_subscription(ds.datastream_id)
        now = now_ns()
        ranges = []
        for lo, hi in sub.ranges(now) if sub else []:
            rows = len(range(ds.tape.index_at_or_after(lo), ds.tape.index_at_or_after(hi)))
            ranges.append({"from": lo, "to": hi, "rows_estimate": rows * (1 if ds.stream_type == "trade" else 2)})
        return json_response({"datastream": ds.wire(), "ranges": ranges, "updated_at": iso(now)})

    async def billing(self, request: Request) -> Response:
        account = self.account(request)
        exported = sum(len(a.data) for j in account.exports.values() if j.status == "succeeded" for a in j.artifacts)
        now = time.gmtime()
        year, month = (now.tm_year + 1, 1) if now.tm_mon == 12 else (now.tm_year, now.tm_mon + 1)
        period_end = calendar.timegm((year, month, 1, 0, 0, 0)) * 1_000_000_000
        status = account.access_status
        body: dict[str, Any] = {
            "access_status": status,
            "plan_code": None if status == "NONE" else ("trial" if status == "TRIALING" else "pro"),
            "current_period_end": None if status == "NONE" else iso(period_end),
            "usage": {
                "extra_stream_minutes_total": 0,
                "export_gb_total": f"{exported / 2**30:.6f}",
                "export_gb_extra": 0,
            },
        }
        if status == "GRACE":
            body["grace_until"] = iso(now_ns() + 7 * 86_400 * 1_000_000_000)
        return json_response(body)

    # --- export schemas --------------------------------------------------------------------------
    def _own_schema(self, request: Request) -> SchemaRecord:
        rec = self.store.schema(self.account(request), request.path_params["id"])
        if rec.is_built_in:
            raise ApiError(403, "Built-in schemas cannot be modified or deleted", {"id": rec.id})
        return rec

    async def _content(self, request: Request) -> Any:
        try:
            return parse_content(await json_body(request))
        except ValueError as exc:
            raise ApiError(400, f"Invalid schema content: {exc}") from None

    async def list_schemas(self, request: Request) -> Response:
        return json_response([r.list_item() for r in self.store.schemas(self.account(request))])

    async def create_schema(self, request: Request) -> Response:
        body = await json_body(request)
        name, category = body.get("name"), body.get("stream_category")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "name is required", {"field": "name"})
        if category not in CATEGORIES:
            raise ApiError(400, f"stream_category must be one of {', '.join(CATEGORIES)}", {"field": "stream_category"})
        try:
            content = parse_content({k: v for k, v in body.items() if k in ("columns", "unfold", "derive")})
        except ValueError as exc:
            raise ApiError(400, f"Invalid schema content: {exc}") from None
        account = self.account(request)
        taken = name in BUILT_IN_NAMES or any(
            r.name == name and r.category == category for r in account.schemas.values())
        if taken:
            raise ApiError(409, f"A schema named {name!r} already exists for {category}", {"name": name})
        rec = SchemaRecord(id=self.store.new_id("sch"), name=name, category=category, is_built_in=False,
                           created_ns=now_ns(), versions=[content])
        account.schemas[rec.id] = rec
        return json_response(rec.wire(), 201)

    async def get_schema(self, request: Request) -> Response:
        return json_response(self.store.schema(self.account(request), request.path_params["id"]).wire())

    async def update_schema(self, request: Request) -> Response:
        rec = self._own_schema(request)
        rec.versions.append(await self._content(request))
        rec.draft = None
        return json_response(rec.wire())

    async def delete_schema(self, request: Request) -> Response:
        rec = self._own_schema(request)
        del self.account(request).schemas[rec.id]
        return _no_content()

    def _draft(self, rec: SchemaRecord) -> Any:
        if rec.draft is None:
            raise ApiError(404, "No draft exists for this schema", {"id": rec.id})
        return rec.draft

    async def create_draft(self, request: Request) -> Response:
        rec = self._own_schema(request)
        raw = await request.body()
        if raw.strip() in (b"", b"null"):
            rec.draft = rec.versions[-1]
        else:
            rec.draft = await self._content(request)
        return json_response(rec.wire(rec.draft), 201)

    async def get_draft(self, request: Request) -> Response:
        rec = self._own_schema(request)
        return json_response(rec.wire(self._draft(rec)))

    async def update_draft(self, request: Request) -> Response:
        rec = self._own_schema(request)
        self._draft(rec)
        rec.draft = await self._content(request)
        return json_response(rec.wire(rec.draft))

    async def discard_draft(self, request: Request) -> Response:
        rec = self._own_schema(request)
        self._draft(rec)
        rec.draft = None
        return _no_content()

    async def publish_schema(self, request: Request) -> Response:
        rec = self._own_schema(request)
        rec.versions.append(self._draft(rec))
        rec.draft = None
        return json_response(rec.wire())

    # --- admin (ground truth and vendor faults) ----------------------------------------------------
    async def admin_rows(self, request: Request) -> Response:
        """Rows of the raw schema over [start_ns, end_ns); with ``api_key``, only inside that
        account's current subscription spans (what an export created now would contain)."""
        ds = self.store.datastream(int_param(request, "datastream_id"))
        start, end = int_param(request, "start_ns"), int_param(request, "end_ns")
        key = request.query_params.get("api_key")
        ranges = [(start, end)]
        if key:
            account = self.store.accounts.get(key)
            sub = account.live_subscription(ds.datastream_id) if account else None
            spans = sub.ranges(now_ns()) if sub else []
            ranges = [(max(lo, start), min(hi, end)) for lo, hi in spans if lo < end and hi > start]
        schema = compile_built_in(STREAM_CATEGORY[ds.stream_type], request.query_params.get("schema", "raw"))
        limit = int_param(request, "limit", 100_000)
        rows: list[list[str]] = []
        for row in export_rows(ds, schema, ranges):
            if len(rows) >= limit:
                break
            rows.append(row)
        return json_response({"columns": schema.header, "rows": rows, "count": len(rows), "ranges": ranges})

    async def admin_faults(self, request: Request) -> Response:
        if request.method == "POST":
            body = await request.body()
            changes = msgspec.json.decode(body) if body else {}
            status = changes.pop("access_status", None)
            if status is not None:
                if status not in BILLING_STATUSES:
                    return json_response({"error": f"access_status must be one of {BILLING_STATUSES}"}, 400)
                for account in self.store.accounts.values():
                    account.access_status = status
            for name, value in changes.items():
                if not hasattr(self.export_faults, name):
                    return json_response({"error": f"unknown switch {name!r}"}, 400)
                setattr(self.export_faults, name, type(getattr(self.export_faults, name))(value))
        state = msgspec.structs.asdict(msgspec.convert(self.export_faults.__dict__, _FaultsView))
        statuses = {a.access_status for a in self.store.accounts.values()}
        return json_response(state | {"access_status": statuses.pop() if len(statuses) == 1 else sorted(statuses)})

    async def admin_backfill(self, request: Request) -> Response:
        """Create a subscription whose first span started in the past (history to export in tests)."""
        body = msgspec.json.decode(await request.body() or b"{}")
        account = self.store.accounts.get(body.get("api_key", self.settings.api_keys[0]))
        if account is None:
            return json_response({"error": "unknown api_key"}, 400)
        try:
            ds = self.store.datastream(body.get("datastream_id"))
            sub = self.store.subscribe(account, ds, start_ns=int(body["start_ns"]))
        except ApiError as exc:
            return error_response(exc)
        except (KeyError, ValueError, TypeError):
            return json_response({"error": "start_ns (int) is required"}, 400)
        if body.get("end_ns") is not None:
            sub.spans[-1].end_ns = int(body["end_ns"]) // 1000 * 1000
            sub.status = "paused"
        return json_response(sub.wire())

    # --- app -----------------------------------------------------------------------------------
    def app(self) -> Starlette:
        v1 = v1_routes(self, self.idempotency.wrap, exports_idempotent=True)
        app = Starlette(
            routes=[Mount("/v1", routes=v1), Route("/artifacts/{art_id}/{filename}", self.artifact)],
            exception_handlers={ApiError: _api_error, HTTPException: _http_error},
            middleware=[Middleware(GateMiddleware, gate=self.gate)],
        )
        return app

    def admin(self) -> list[Route]:
        return [
            Route("/ticksupply/rows", self.admin_rows),
            Route("/ticksupply/faults", self.admin_faults, methods=["GET", "POST"]),
            Route("/ticksupply/backfill", self.admin_backfill, methods=["POST"]),
        ]


class _FaultsView(msgspec.Struct):
    fail_next_exports: int
    fail_reason: str
    slow_exports_s: float


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    message = "Resource not found" if status == 404 else ("Method not allowed" if status == 405 else str(exc.detail))
    return error_response(ApiError(status if status in (404, 405) else 400, message))


def _s3_error(status: int, code: str, message: str) -> Response:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>{new_request_id()[4:20].upper()}</RequestId></Error>")
    return Response(body, status, media_type="application/xml")
