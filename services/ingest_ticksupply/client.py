"""Async TickSupply REST client on the vendor HTTP layer (:class:`marketbus.vendor.http.VendorHttp`):
auth, pacing, retries, idempotency keys, pages, artifacts.

- Every call carries ``X-Api-Key`` (a :class:`Secret`, never logged) and is paced by the declared
  window (:data:`marketbus.vendor.limits.TICKSUPPLY`; one limiter per host and process).
- ``429 rate_limited``: the bucket is drained for ``Retry-After`` seconds and the call is retried
  after at least that long (up to ``max_rate_limited_retries`` times).
- ``5xx``, network errors and timeouts are retried with exponential back-off (``max_retries``).
- Mutating calls carry an ``Idempotency-Key`` that stays the same across the retries of one call
  (the caller may pass its own, e.g. one persisted before the call, to survive a restart), so a
  retried create never makes a second subscription or export.
- Lists follow ``next_page_token`` until it is null.
- Artifacts are plain GETs of presigned URLs without the API key; an expired or refused URL raises
  :class:`ArtifactUrlExpired` (ask for a fresh download listing).

Bodies that are not the JSON the endpoint promises raise :class:`MalformedReply` carrying the raw
bytes, so the app can dead-letter them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec

from marketbus.runtime.backoff import Backoff
from marketbus.runtime.settings import Secret
from marketbus.vendor.http import Refused, Unavailable, VendorHttp, parse_retry_after
from marketbus.vendor.limits import TICKSUPPLY, LimiterHold, per_second


class TickSupplyError(Exception):
    """A non-2xx reply: ``status``, the vendor ``code`` and ``message``, the ``X-Request-Id``."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (request {request_id})" if request_id else ""))
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after


class RateLimited(TickSupplyError):
    pass


class ServerError(TickSupplyError):
    pass


class NotFound(TickSupplyError):
    pass


class Conflict(TickSupplyError):
    pass


class PermissionDenied(TickSupplyError):
    pass


class AuthenticationFailed(TickSupplyError):
    pass


_BY_CODE: dict[str, type[TickSupplyError]] = {
    "rate_limited": RateLimited, "internal": ServerError, "unavailable": ServerError, "not_found": NotFound,
    "already_exists": Conflict, "permission_denied": PermissionDenied, "unauthenticated": AuthenticationFailed,
}


class MalformedReply(Exception):
    """A 2xx reply whose body is not the JSON we expect (kept whole for the dead-letter queue)."""

    def __init__(self, url: str, payload: bytes, reason: str) -> None:
        super().__init__(f"malformed reply from {url}: {reason}")
        self.url = url
        self.payload = payload
        self.reason = reason


class ArtifactUrlExpired(Exception):
    """The presigned URL was refused (expired or bad signature): request a new download listing."""


class RetriesExhausted(Exception):
    pass


class _ErrorBody(msgspec.Struct):
    code: str = "unknown"
    message: str = ""


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody


_error_decoder = msgspec.json.Decoder(_ErrorEnvelope)

# callback(kind) for metrics: VendorHttp's kinds, and "malformed"
ErrorHook = Callable[[str], None]


class TickSupplyClient:
    def __init__(
        self, base_url: str, api_key: Secret, *, timeout_s: float = 30.0, requests_per_s: float = 10.0,
        max_retries: int = 6, max_rate_limited_retries: int = 100, on_error: ErrorHook | None = None,
        backoff_initial_s: float = 0.2, backoff_max_s: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        # The declared window (TICKSUPPLY, or requests_per_s from the settings), on the process's one
        # limiter of this host (vendor.limits): no sliding second passes more; beyond its own limit
        # the vendor answers 429 + Retry-After, which drains the limiter for every caller.
        self.limit = LimiterHold(TICKSUPPLY.with_limits(per_second(requests_per_s)), self.base_url)
        self.limiter = self.limit.limiter
        self.on_error = on_error or (lambda kind: None)
        headers = {"Accept": "application/json", "Content-Type": "application/json",
                   "User-Agent": "marketbus-ingest-ticksupply"}
        self.http = VendorHttp(self.base_url, self.limiter, headers=headers, timeout_s=timeout_s,
                               backoff=Backoff(backoff_initial_s, backoff_max_s), max_attempts=max_retries + 1,
                               max_rate_limited=max_rate_limited_retries + 1, default_retry_after_s=1.0,
                               on_error=self.on_error)

    @property
    def rate_limited_total(self) -> int:
        return self.http.rate_limited

    async def aclose(self) -> None:
        await self.http.close()
        self.limit.release()

    async def __aenter__(self) -> TickSupplyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- core ---------------------------------------------------------------------------------
    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      body: Any = None, idempotency_key: str | None = None, mutating: bool = False) -> Any:
        """One API call with pacing and retries (:class:`VendorHttp`); returns the decoded JSON
        (None for 204). The Idempotency-Key is the same across the retries of one call."""
        headers = {"X-Api-Key": self._key.get()}
        if mutating:
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        content = msgspec.json.encode(body) if body is not None else None
        try:
            response = await self.http.send(method, path, params=params, content=content, headers=headers)
        except Refused as exc:
            raise self._error(exc.response) from None
        except Unavailable as exc:
            if exc.status == 429:
                raise RateLimited(429, "rate_limited", str(exc)) from None
            raise RetriesExhausted(f"{method} {path}: {exc}") from None
        if response.status_code == 204 or not response.content.strip():
            return None
        try:
            return msgspec.json.decode(response.content)
        except msgspec.DecodeError as exc:
            self.on_error("malformed")
            raise MalformedReply(f"{self.base_url}{path}", response.content, f"not JSON: {exc}") from None

    @staticmethod
    def _error(response: httpx.Response) -> TickSupplyError:
        request_id = response.headers.get("x-request-id")
        try:
            body = _error_decoder.decode(response.content).error
            code, message = body.code, body.message
        except (msgspec.DecodeError, msgspec.ValidationError):
            code, message = "unknown", response.text[:200]
        if response.status_code == 429:
            code = "rate_limited"
        cls = _BY_CODE.get(code) or (ServerError if response.status_code >= 500 else TickSupplyError)
        return cls(response.status_code, code, message, request_id,
                   parse_retry_after(response.headers.get("retry-after")))

    async def pages(self, path: str, params: dict[str, Any] | None = None, limit: int = 100) -> AsyncIterator[Any]:
        """Every item of a paginated list, page by page (each page is yielded as its item list)."""
        query = dict(params or {}, limit=limit)
        while True:
            page = await self.request("GET", path, params=query)
            if not isinstance(page, dict) or not isinstance(page.get("items"), list):
                raise MalformedReply(f"{self.base_url}{path}", msgspec.json.encode(page), "not a page object")
            yield page["items"]
            token = page.get("next_page_token")
            if not token:
                return
            query["page_token"] = token

    async def collect(self, path: str, params: dict[str, Any] | None = None, limit: int = 100) -> list[Any]:
        items: list[Any] = []
        async for page in self.pages(path, params, limit):
            items.extend(page)
        return items

    # --- catalog ------------------------------------------------------------------------------
    async def exchanges(self) -> list[dict[str, Any]]:
        return await self.request("GET", "/exchanges")

    def instrument_pages(self, exchange: str) -> AsyncIterator[list[dict[str, Any]]]:
        return self.pages(f"/exchanges/{exchange}/instruments", limit=1000)

    def datastream_pages(self, **filters: Any) -> AsyncIterator[list[dict[str, Any]]]:
        return self.pages("/datastreams", filters, limit=1000)

    # --- subscriptions ------------------------------------------------------------------------
    async def subscriptions(self) -> list[dict[str, Any]]:
        return await self.collect("/subscriptions", limit=100)

    async def create_subscription(self, datastream_id: int, idempotency_key: str | None = None) -> dict[str, Any]:
        return await self.request("POST", "/subscriptions", body={"datastream_id": datastream_id},
                                  idempotency_key=idempotency_key, mutating=True)

    async def pause_subscription(self, sub_id: str, idempotency_key: str | None = None) -> None:
        await self.request("POST", f"/subscriptions/{sub_id}/pause", idempotency_key=idempotency_key, mutating=True)

    async def resume_subscription(self, sub_id: str, idempotency_key: str | None = None) -> None:
        await self.request("POST", f"/subscriptions/{sub_id}/resume", idempotency_key=idempotency_key, mutating=True)

    async def spans(self, sub_id: str) -> list[dict[str, Any]]:
        return await self.request("GET", f"/subscriptions/{sub_id}/spans")

    async def availability(self, datastream_id: int) -> dict[str, Any]:
        return await self.request("GET", "/availability", params={"datastream_id": datastream_id})

    # --- exports ------------------------------------------------------------------------------
    async def create_export(
        self, datastream_id: int, start_ns: int, end_ns: int, idempotency_key: str
    ) -> dict[str, Any]:
        body = {"datastream_id": datastream_id, "start_time": str(start_ns), "end_time": str(end_ns), "schema": "raw"}
        return await self.request("POST", "/exports", body=body, idempotency_key=idempotency_key, mutating=True)

    async def get_export(self, export_id: str) -> dict[str, Any]:
        return await self.request("GET", f"/exports/{export_id}")

    async def cancel_export(self, export_id: str) -> None:
        await self.request("POST", f"/exports/{export_id}/cancel", mutating=True)

    async def download(self, export_id: str) -> dict[str, Any]:
        return await self.request("GET", f"/exports/{export_id}/download")

    async def fetch_artifact(self, url: str) -> bytes:
        """GET a presigned URL (no API key, not paced: outside the API's limits). Retries network
        errors and 5xx; 401/403/404 -> :class:`ArtifactUrlExpired`."""
        try:
            response = await self.http.send("GET", url, headers={"Accept": "*/*", "Content-Type": ""}, paced=False)
        except Refused as exc:
            if exc.status in (401, 403, 404):
                raise ArtifactUrlExpired(f"artifact URL refused with {exc.status}: {exc.body[:120]!r}") from None
            raise RetriesExhausted(f"artifact GET refused: {exc}") from None
        except Unavailable as exc:
            raise RetriesExhausted(f"artifact GET gave up: {exc}") from None
        return response.content
