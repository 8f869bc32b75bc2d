"""The Digitex bot REST API client: pacing within the documented limits (50/s and 500/min, one
:class:`~marketbus.runtime.ratelimit.MultiWindowLimiter` shared by every call), 429 Retry-After
honoured, 5xx and transport errors retried with back-off. The token travels in the
``Authorization`` header only and is never logged."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx

from marketbus.runtime.backoff import Backoff
from marketbus.runtime.ratelimit import MultiWindowLimiter
from marketbus.runtime.settings import Secret

log = logging.getLogger("marketbus.ingest_digitex.client")
BOT = "/v1/exchange/bot/"


class Unavailable(Exception):
    """The API did not answer usefully after the retries (outage, maintenance, 429 storm)."""


class ClientError(Exception):
    """A 4xx other than 429: our request is wrong; retrying will not help."""

    def __init__(self, status: int, body: bytes, path: str) -> None:
        super().__init__(f"{path}: HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


def retry_after_s(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0  # an HTTP date: wait a little, the limiter re-paces anyway


class DigitexClient:
    def __init__(self, base_url: str, token: Secret, limiter: MultiWindowLimiter, *, timeout_s: float = 10.0,
                 backoff: Backoff | None = None, max_attempts: int = 8,
                 on_error: Callable[[str], None] | None = None, on_frame: Callable[[str], None] | None = None) -> None:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Token {token.get()}"
        self.base_url = base_url.rstrip("/") + BOT
        self.limiter = limiter
        self.backoff = backoff or Backoff(0.2, 10.0)
        self.max_attempts = max_attempts
        self.on_error = on_error
        self.on_frame = on_frame
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s,
                                      limits=httpx.Limits(max_keepalive_connections=8, keepalive_expiry=30))
        self.calls = 0
        self.rate_limited = 0

    def _error(self, kind: str) -> None:
        if self.on_error is not None:
            self.on_error(kind)

    async def get(self, path: str, **params: Any) -> bytes:
        """GET ``<base>/v1/exchange/bot/<path>``; the body of the first 2xx answer."""
        query = {k: v for k, v in params.items() if v is not None}
        backoff = Backoff(self.backoff.initial_s, self.backoff.max_s)
        last = ""
        for _ in range(self.max_attempts):
            await self.limiter.acquire()
            self.calls += 1
            try:
                response = await self.http.get(path, params=query)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}"
                self._error("transport")
                await backoff.sleep()
                continue
            status = response.status_code
            if status == 429:
                wait = retry_after_s(response.headers.get("retry-after"))
                self.rate_limited += 1
                self._error("429")
                self.limiter.penalize(wait)  # every caller waits, not just this one
                last = f"HTTP 429 (Retry-After {wait:g}s)"
                if not wait:
                    await backoff.sleep()
                continue
            if status >= 500:
                last = f"HTTP {status}"
                self._error("5xx")
                await backoff.sleep()
                continue
            if status >= 400:
                self._error("4xx")
                raise ClientError(status, response.content, path)
            if self.on_frame is not None:
                self.on_frame(path.strip("/"))
            return response.content
        raise Unavailable(f"{path}: {last} after {self.max_attempts} attempts")

    async def close(self) -> None:
        await self.http.aclose()
