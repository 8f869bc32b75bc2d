"""Conventions of the TickSupply REST API, shared by the two servers that speak it: the TickSupply
sandbox (the vendor's simulator) and the export orchestrator's TickSupply-shaped API (so the
vendor's own client works against marketbus history). Errors, request parsing, times and
``Idempotency-Key`` replies.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from marketbus.vendor.timeparse import ns_iso

from .http import request_fingerprint

# HTTP status -> the error code the official client maps to its exceptions (it reads the code)
STATUS_CODES = {
    400: "invalid_argument", 401: "unauthenticated", 402: "payment_required", 403: "permission_denied",
    404: "not_found", 405: "invalid_argument", 409: "already_exists", 429: "rate_limited",
    500: "internal", 503: "unavailable",
}


class ApiError(Exception):
    """An error reply: ``{"error": {"code", "message", "details"}}`` with ``status``."""

    def __init__(self, status: int, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None, *, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or STATUS_CODES.get(status, "internal")
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def error_body(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> tuple[bytes, dict[str, str]]:
    """The vendor's error format (also used by the sandbox fault middleware for injected 429/5xx)."""
    body = msgspec.json.encode({"error": {"code": code, "message": message, "details": details or {}}})
    return body, {"x-request-id": new_request_id()}


def error_response(exc: ApiError) -> Response:
    body, headers = error_body(exc.status, exc.code, exc.message, exc.details)
    return Response(body, exc.status, headers=headers | exc.headers, media_type="application/json")


def iso(ns: int | None) -> str | None:
    """ISO 8601 UTC with microseconds, as the API writes bookkeeping times (None stays None)."""
    return None if ns is None else ns_iso(ns, 6)


_ISO = re.compile(r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?$")


def parse_ns(value: Any, name: str) -> int:
    """A request timestamp: int ns, a string of ns, or ISO 8601 (naive = UTC), as the client allows."""
    if isinstance(value, bool) or value is None:
        raise ApiError(400, f"{name} is required and must be nanoseconds or ISO 8601", {"field": name})
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        match = _ISO.match(text)
        if match:
            whole, frac, zone = match.groups()
            zone = "+00:00" if zone in (None, "Z") else zone
            try:
                dt = datetime.fromisoformat(whole.replace(" ", "T") + zone)
            except ValueError:
                pass
            else:
                return int(dt.timestamp()) * 1_000_000_000 + int((frac or "0").ljust(9, "0"))
    raise ApiError(400, f"{name} must be nanoseconds since the epoch or an ISO 8601 datetime", {"field": name})


def int_param(request: Request, name: str, default: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ApiError(400, f"{name} is required", {"field": name})
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer", {"field": name}) from None


async def json_body(request: Request) -> dict[str, Any]:
    """The JSON object body; an empty body (the client sends none on pause/cancel/...) is ``{}``."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # RecursionError: nested too deep (100k arrays)
        raise ApiError(400, "Request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return body


# --- Idempotency-Key ---------------------------------------------------------------------------
class SavedReply(msgspec.Struct):
    """The first reply to an idempotent request, kept for its retries."""

    fingerprint: str  # of the request (method, path, body): the same key with another request is 409
    status: int
    body: bytes
    media_type: str | None
    expires: float  # in the clock of the store (see IdempotentReplies.now)


class IdempotentReplies:
    """``Idempotency-Key`` as TickSupply serves it: the first reply to (caller, key) is kept and
    replayed (``Idempotent-Replayed: true``) to a retry of the same request; the same key with
    another request is 409. Client errors are replayed too; 5xx and 429 are not kept (retry them).
    Subclasses say where replies are kept (:meth:`load`, :meth:`save`) and for how long."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s

    def now(self) -> float:
        return time.time()

    async def load(self, request: Request, key: str) -> SavedReply | None:
        raise NotImplementedError

    async def save(self, request: Request, key: str, reply: SavedReply) -> None:
        raise NotImplementedError

    def wrap(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def idempotent(request: Request) -> Response:
            key = request.headers.get("idempotency-key")
            if not key:
                return await handler(request)
            fingerprint = request_fingerprint(request.method, request.url.path, await request.body())
            saved = await self.load(request, key)
            if saved is not None and saved.expires > self.now():
                if saved.fingerprint != fingerprint:
                    raise ApiError(409, "Idempotency-Key was already used with a different request",
                                   {"idempotency_key": key})
                return Response(saved.body, saved.status, media_type=saved.media_type,
                                headers={"idempotent-replayed": "true"})
            try:
                response = await handler(request)
            except ApiError as exc:
                response = error_response(exc)
            if response.status_code < 500 and response.status_code != 429:
                await self.save(request, key, SavedReply(fingerprint, response.status_code, bytes(response.body),
                                                         response.media_type, self.now() + self.ttl_s))
            return response

        return idempotent


# --- the /v1 surface -----------------------------------------------------------------------------
Handler = Callable[[Request], Awaitable[Response]]

# Every route of the TickSupply API both servers serve: (path, method, handler method name, kind).
# kind "read": plain; "write": Idempotency-Key replayed; "export": exports, whose idempotency a
# server may do its own way (the export orchestrator derives the job id from the key).
V1_ROUTES: tuple[tuple[str, str, str, str], ...] = (
    ("/exchanges", "GET", "exchanges", "read"),
    ("/exchanges/{exchange}/instruments", "GET", "instruments", "read"),
    ("/exchanges/{exchange}/instruments/{instrument}/datastreams", "GET", "instrument_datastreams", "read"),
    ("/datastreams", "GET", "datastreams", "read"),
    ("/availability", "GET", "availability", "read"),
    ("/billing/summary", "GET", "billing", "read"),
    ("/subscriptions", "GET", "list_subscriptions", "read"),
    ("/subscriptions", "POST", "create_subscription", "write"),
    ("/subscriptions/{id}", "GET", "get_subscription", "read"),
    ("/subscriptions/{id}", "DELETE", "delete_subscription", "write"),
    ("/subscriptions/{id}/pause", "POST", "pause_subscription", "write"),
    ("/subscriptions/{id}/resume", "POST", "resume_subscription", "write"),
    ("/subscriptions/{id}/spans", "GET", "spans", "read"),
    ("/export-schemas", "GET", "list_schemas", "read"),
    ("/export-schemas", "POST", "create_schema", "write"),
    ("/export-schemas/{id}", "GET", "get_schema", "read"),
    ("/export-schemas/{id}", "PUT", "update_schema", "read"),  # a PUT is idempotent by itself
    ("/export-schemas/{id}", "DELETE", "delete_schema", "write"),
    ("/export-schemas/{id}/draft", "POST", "create_draft", "write"),
    ("/export-schemas/{id}/draft", "GET", "get_draft", "read"),
    ("/export-schemas/{id}/draft", "PUT", "update_draft", "read"),
    ("/export-schemas/{id}/draft", "DELETE", "discard_draft", "write"),
    ("/export-schemas/{id}/publish", "POST", "publish_schema", "write"),
    ("/exports", "GET", "list_exports", "read"),
    ("/exports", "POST", "create_export", "export"),
    ("/exports/{id}", "GET", "get_export", "read"),
    ("/exports/{id}", "DELETE", "delete_export", "export"),
    ("/exports/{id}/download", "GET", "download", "read"),
    ("/exports/{id}/cancel", "POST", "cancel_export", "export"),
)


def v1_routes(api: object, idempotent: Callable[[Handler], Handler], *, exports_idempotent: bool) -> list[Route]:
    """The Starlette routes of :data:`V1_ROUTES` on ``api``'s handler methods (to mount at /v1)."""
    routes = []
    for path, method, name, kind in V1_ROUTES:
        handler: Handler = getattr(api, name)
        if kind == "write" or (kind == "export" and exports_idempotent):
            handler = idempotent(handler)
        routes.append(Route(path, handler, methods=[method]))
    return routes
