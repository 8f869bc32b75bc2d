"""The Digitex bot REST API client: a :class:`~marketbus.vendor.http.VendorHttp` on the declared
Digitex limits (:data:`marketbus.vendor.limits.DIGITEX`, 50/s and 500/min, one limiter per
process shared with the order router), 429 Retry-After honoured, 5xx and transport errors
retried with back-off. The token travels in the ``Authorization`` header only and is never
logged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from marketbus.runtime.backoff import Backoff
from marketbus.runtime.settings import Secret
from marketbus.vendor.http import Limiter, Refused, Unavailable, VendorHttp
from marketbus.vendor.limits import DIGITEX

__all__ = ["ClientError", "DigitexClient", "Unavailable"]

ClientError = Refused  # a 4xx other than 429: our request is wrong; retrying will not help


class DigitexClient(VendorHttp):
    """``await client.get("recent_trades", market_id=1)``: the body of a declared endpoint."""

    def __init__(self, base_url: str, token: Secret, limiter: Limiter, *, timeout_s: float = 10.0,
                 backoff: Backoff | None = None, max_attempts: int = 8,
                 on_error: Callable[[str], None] | None = None, on_frame: Callable[[str], None] | None = None) -> None:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Token {token.get()}"
        super().__init__(base_url.rstrip("/") + DIGITEX.endpoints["bot"], limiter, headers=headers,
                         timeout_s=timeout_s, backoff=backoff, max_attempts=max_attempts,
                         max_rate_limited=max_attempts, on_error=on_error, max_connections=16)
        self.on_frame = on_frame

    async def get(self, endpoint: str, **params: Any) -> bytes:
        """GET the declared ``endpoint`` (a name of ``DIGITEX.endpoints``); the 2xx body."""
        path = DIGITEX.endpoints[endpoint]
        response = await self.send("GET", path, params=params)
        if self.on_frame is not None:
            self.on_frame(path.strip("/"))
        return response.content
