"""TickSupply wire conventions: errors, request ids, auth, rate limit, idempotency, page tokens, times.

Every non-2xx reply is ``{"error": {"code", "message", "details"}}``; the official client picks its
exception from ``error.code``. Every reply carries ``X-Request-Id``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from marketbus.runtime.ratelimit import RateLimiter
from marketbus.runtime.tsapi import (  # noqa: F401 - re-exported for the sandbox modules
    STATUS_CODES,
    ApiError,
    IdempotentReplies,
    SavedReply,
    error_body,
    error_response,
    int_param,
    iso,
    json_body,
    new_request_id,
    parse_ns,
)
from services.sandbox.common.base import json_response

T = TypeVar("T")

# --- times -------------------------------------------------------------------------------------
def now_ns() -> int:
    return time.time_ns()


# --- auth and rate limiting --------------------------------------------------------------------
class Gate:
    """Authentication and the per-key token bucket, applied to every ``/v1`` request."""

    def __init__(self, api_keys: Sequence[str], rate: float, burst: int) -> None:
        self.api_keys = set(api_keys)
        self.rate = rate
        self.burst = burst
        self.buckets: dict[str, RateLimiter] = {}

    def check(self, request: Request) -> str:
        key = request.headers.get("x-api-key", "")
        if not key:
            raise ApiError(401, "Missing X-Api-Key header")
        if key not in self.api_keys:
            raise ApiError(401, "Invalid API key")
        if self.rate > 0:
            bucket = self.buckets.setdefault(key, RateLimiter(self.rate, max(1, self.burst)))
            wait = bucket.take()
            if wait > 0:
                retry = max(1, math.ceil(wait))
                raise ApiError(429, "Rate limit exceeded", {"retry_after_seconds": retry},
                               headers={"retry-after": str(retry)})
        return key


class GateMiddleware:
    """Pure ASGI: authenticates and rate-limits ``/v1`` and stamps ``X-Request-Id`` on every reply."""

    def __init__(self, app: Any, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()

        async def stamped(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        if scope["path"].startswith("/v1"):
            try:
                key = self.gate.check(Request(scope))
            except ApiError as exc:
                await error_response(exc)(scope, receive, stamped)
                return
            scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, stamped)


# --- pagination --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PageLimits:
    default: int
    maximum: int


CATALOG_LIMITS = PageLimits(100, 1000)
ACCOUNT_LIMITS = PageLimits(50, 100)


class Pager:
    """Opaque keyset page tokens, signed and bound to the query they came from."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self.secret, payload, hashlib.sha256).hexdigest()[:16]

    def encode(self, scope: str, after: int | str) -> str:
        payload = msgspec.json.encode([scope, after])
        return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + self._sign(payload)

    def decode(self, token: str, scope: str) -> int | str:
        try:
            data, sig = token.rsplit(".", 1)
            payload = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
            token_scope, after = msgspec.json.decode(payload)
        except (ValueError, msgspec.DecodeError, TypeError):
            raise ApiError(400, "Invalid page_token", {"field": "page_token"}) from None
        if not hmac.compare_digest(sig, self._sign(payload)) or token_scope != scope:
            raise ApiError(400, "Invalid page_token", {"field": "page_token"})
        return after

    def page(self, request: Request, items: Sequence[T], key: Callable[[T], Any], limits: PageLimits,
             render: Callable[[T], Any]) -> Response:
        """``items`` must already be sorted by ``key`` ascending; the scope binds path + filters."""
        params = request.query_params
        limit = int_param(request, "limit", limits.default)
        if not 1 <= limit <= limits.maximum:
            raise ApiError(400, f"limit must be between 1 and {limits.maximum}",
                           {"field": "limit", "max": limits.maximum})
        filters = sorted((k, v) for k, v in params.multi_items() if k not in ("limit", "page_token"))
        scope = hashlib.sha256(msgspec.json.encode([request.url.path, filters])).hexdigest()[:12]
        remaining = list(items)
        token = params.get("page_token")
        if token:
            after = self.decode(token, scope)
            remaining = [item for item in remaining if key(item) > after]
        chunk = remaining[:limit]
        next_token = self.encode(scope, key(chunk[-1])) if len(remaining) > limit else None
        return json_response({"items": [render(i) for i in chunk], "total": len(items), "limit": limit,
                              "next_page_token": next_token})


# --- idempotency -------------------------------------------------------------------------------
class IdempotencyStore(IdempotentReplies):
    """Replies kept in memory per (api key, Idempotency-Key), on the monotonic clock."""

    def __init__(self, ttl_s: float) -> None:
        super().__init__(ttl_s)
        self.saved: dict[tuple[str, str], SavedReply] = {}

    def now(self) -> float:
        return time.monotonic()

    async def load(self, request: Request, key: str) -> SavedReply | None:
        self._expire(self.now())
        return self.saved.get((request.state.api_key, key))

    async def save(self, request: Request, key: str, reply: SavedReply) -> None:
        self.saved[(request.state.api_key, key)] = reply

    def _expire(self, now: float) -> None:
        # A sandbox holds few keys, so a full sweep per mutating request is cheap.
        self.saved = {k: v for k, v in self.saved.items() if v.expires > now}
