"""Digitex bot REST client for the order router: auth token, pacing, timeouts, 429 Retry-After.

Pacing, Retry-After parsing and retry classification are the vendor machinery's
(:mod:`marketbus.vendor`): the router paces on the same declared Digitex limits and the same
process-wide limiter as the Digitex ingestor.

Reads (GET) are idempotent and retried with back-off on transport errors, 5xx and 429. Writes
(place / cancel / update) are never retried here: a timeout, 5xx or 429 on a write raises
:class:`OutcomeUnknown`, and the router resolves the outcome through ``order_status``.

The transport is aiohttp rather than httpx (used elsewhere): the router's throughput is bounded
by the client's CPU per request, and against the sandbox on one core aiohttp sends ~8,000
places/s where httpx's pool sends ~900 (bench/order_router.py keeps both figures honest).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import msgspec

from marketbus.runtime.backoff import Backoff
from marketbus.vendor.http import Outcome, classify, parse_retry_after
from marketbus.vendor.limits import DIGITEX, LimiterHold, RateWindow

BASE_PATH = "/dapi" + DIGITEX.endpoints["bot"]


class DigitexError(RuntimeError):
    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class Refused(DigitexError):
    """The exchange answered 4xx (not 429): the request was definitely not applied."""

    @property
    def reason(self) -> str:
        body = self.body
        if isinstance(body, dict):
            if "detail" in body:
                return str(body["detail"])
            parts = []
            for key, value in body.items():
                text = "; ".join(str(v) for v in value) if isinstance(value, list) else str(value)
                parts.append(f"{key}: {text}")
            return ", ".join(parts) or f"HTTP {self.status}"
        return f"HTTP {self.status}: {str(body)[:200]}"

    @property
    def duplicate_client_id(self) -> bool:
        return isinstance(self.body, dict) and "client_id" in self.body and "exist" in str(self.body["client_id"])


class OutcomeUnknown(DigitexError):
    """Timeout, transport error, 5xx or 429: the request may or may not have been applied."""

    def __init__(self, message: str, status: int | None = None, body: Any = None, retry_after: float = 0.0) -> None:
        super().__init__(message, status, body)
        self.retry_after = retry_after


def _retry_after(headers: Mapping[str, str]) -> float:
    wait = parse_retry_after(headers.get("retry-after"))
    return 1.0 if wait is None else wait


_JSON_BODY = {"Content-Type": "application/json"}


def _text(raw: bytes, limit: int) -> str:
    return raw[:limit].decode("utf-8", "replace")


def _dec(value: Decimal | int | str) -> str:
    return format(Decimal(value), "f")


class DigitexClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 2.0,
        per_second: int = DIGITEX.limits[0].calls,
        per_minute: int = DIGITEX.limits[1].calls,
        read_attempts: int = 4,
        max_connections: int = 8,
        on_send: Callable[[str, dict[str, Any]], None] | None = None,
        on_response: Callable[[str, str, float], None] | None = None,
    ) -> None:
        # the same declared Digitex windows and the same (window-safe, process-wide) limiter as
        # the Digitex ingestor: together they stay within the account's limits
        spec = DIGITEX.with_limits(RateWindow(per_second, 1.0), RateWindow(per_minute, 60.0))
        self._limit = LimiterHold(spec, base_url)
        self.limiter = self._limit.limiter
        self.read_attempts = read_attempts
        self.on_send = on_send
        self.on_response = on_response  # (path, outcome: HTTP status | timeout | transport, seconds)
        self.requests = 0
        self.throttled = 0
        self.base_url = base_url.rstrip("/") + BASE_PATH
        self._headers = {"Authorization": f"Token {token}", "Accept": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        # created on first use: an aiohttp session belongs to the running event loop
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=self._timeout, raise_for_status=False,
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=self._max_connections))
        return self._session

    async def close(self) -> None:
        self._limit.release()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- plumbing ---------------------------------------------------------------------------
    async def _request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                       body: dict[str, Any] | None = None) -> Any:
        content = msgspec.json.encode(body) if body is not None else None
        headers = _JSON_BODY if body is not None else None
        if params:
            params = {k: str(v) for k, v in params.items()}
        started = time.perf_counter()  # again once a place is granted: the call's own time
        try:
            # the call holds its place in the Digitex windows until its reply is in
            async with self.limiter.slot():
                self.requests += 1
                if self.on_send is not None:
                    self.on_send(path, body or params or {})
                started = time.perf_counter()
                async with self.http.request(method, self.base_url + path, params=params, data=content,
                                             headers=headers) as response:
                    status = response.status
                    raw = await response.read()
                    reply_headers = response.headers
        except TimeoutError as exc:
            self._observe(path, "timeout", started)
            raise OutcomeUnknown(f"{method} {path}: timed out") from exc
        except aiohttp.ClientError as exc:
            self._observe(path, "transport", started)
            raise OutcomeUnknown(f"{method} {path}: {exc!r}") from exc
        self._observe(path, str(status), started)
        outcome = classify(status)
        if outcome is Outcome.RATE_LIMITED:
            wait = _retry_after(reply_headers)
            self.throttled += 1
            self.limiter.penalize(wait)
            raise OutcomeUnknown(f"{method} {path}: throttled (429)", 429, _text(raw, 200), retry_after=wait)
        if outcome is Outcome.RETRY:
            raise OutcomeUnknown(f"{method} {path}: HTTP {status}", status, _text(raw, 200))
        try:
            data = msgspec.json.decode(raw) if raw else None
        except msgspec.DecodeError:
            data = _text(raw, 500)
        if outcome is Outcome.REFUSED:
            raise Refused(f"{method} {path}: HTTP {status}", status, data)
        return data

    def _observe(self, path: str, outcome: str, started: float) -> None:
        if self.on_response is not None:
            self.on_response(path, outcome, time.perf_counter() - started)

    async def get(self, path: str, **params: Any) -> Any:
        params = {k: v for k, v in params.items() if v is not None}
        backoff = Backoff(initial_s=0.1, max_s=2.0)
        for attempt in range(1, self.read_attempts + 1):
            try:
                return await self._request("GET", path, params=params)
            except OutcomeUnknown as exc:
                if attempt == self.read_attempts:
                    raise
                await backoff.sleep(exc.retry_after)
        raise AssertionError("unreachable")

    async def get_paged(self, path: str, max_pages: int = 100, **params: Any) -> list[dict[str, Any]]:
        """Every item of a DRF cursor-paginated list (newest first)."""
        items: list[dict[str, Any]] = []
        cursor = None
        for _ in range(max_pages):
            page = await self.get(path, cursor=cursor, **params)
            items.extend(page.get("results") or [])
            nxt = page.get("next")
            if not nxt:
                break
            cursor = parse_qs(urlsplit(nxt).query).get("cursor", [nxt])[0]
        return items

    # --- reads ------------------------------------------------------------------------------
    async def exchange_info(self) -> dict[str, Any]:
        return await self.get("exchange_info/")

    async def order_status(self, client_id: str) -> list[dict[str, Any]]:
        return await self.get("order_status/", client_id=client_id) or []

    async def open_orders(self, market_id: int | None = None) -> list[dict[str, Any]]:
        return await self.get_paged("orders/", market_id=market_id, page_size=1000)

    async def order_history(
        self, created_at_from: int | None = None, market_id: int | None = None
    ) -> list[dict[str, Any]]:
        return await self.get_paged(
            "order_history/", created_at_from=created_at_from, market_id=market_id, page_size=1000
        )

    async def trade_history(
        self, traded_at_from: int | None = None, market_id: int | None = None
    ) -> list[dict[str, Any]]:
        return await self.get_paged(
            "trade_history/", traded_at_from=traded_at_from, market_id=market_id, page_size=1000
        )

    async def positions(self) -> list[dict[str, Any]]:
        return await self.get("position/") or []

    async def balances(self) -> list[dict[str, Any]]:
        return await self.get("balances/") or []

    async def order_book(self, market_id: int) -> dict[str, Any]:
        return await self.get("order_book/", market_id=market_id)

    # --- writes (never retried here) ---------------------------------------------------------
    async def place(self, *, client_id: str, market_id: int, side: int, type: int, duration: int,
                    leverage: int, quantity: Decimal, price: Decimal) -> dict[str, Any]:
        return await self._request("POST", "trader/order/", body={
            "client_id": client_id, "market_id": market_id, "side": side, "type": type, "duration": duration,
            "leverage": leverage, "quantity": _dec(quantity), "price": _dec(price)})

    async def cancel(self, market_id: int | None = None, client_ids: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if market_id is not None:
            body["market_id"] = market_id
        if client_ids:
            body["orders_client_ids"] = client_ids
        return await self._request("POST", "trader/order/cancel/", body=body)

    async def update(self, *, client_id: str, market_id: int, side: int, type: int, duration: int,
                     leverage: int, quantity: Decimal, price: Decimal) -> dict[str, Any]:
        return await self._request("POST", "trader/order/update/", body={
            "client_id": client_id, "market_id": market_id, "side": side, "type": type, "duration": duration,
            "leverage": leverage, "quantity": _dec(quantity), "price": _dec(price)})


def now_us() -> int:
    return time.time_ns() // 1000
