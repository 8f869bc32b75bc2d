"""Conventions of the TickSupply REST API, shared by the two servers that speak it: the TickSupply
sandbox (the vendor's simulator) and the export orchestrator's TickSupply-shaped API (so the
vendor's own client works against marketbus history). Errors, request parsing and times.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

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
    """ISO 8601 UTC with microseconds, as the API writes bookkeeping times."""
    if ns is None:
        return None
    dt = datetime.fromtimestamp(ns // 1_000_000_000, UTC).replace(microsecond=(ns // 1000) % 1_000_000)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
