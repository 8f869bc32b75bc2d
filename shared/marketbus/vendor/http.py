"""The HTTP client layer for vendors.

Two halves:

- library-neutral pieces any HTTP client can use (the order router keeps aiohttp for speed):
  :func:`parse_retry_after` (the one Retry-After parser: delta-seconds and HTTP-date) and
  :func:`classify` (is a reply or a transport failure worth retrying?);
- :class:`VendorHttp`, an httpx client that puts them together: every attempt is paced by the
  vendor's limiter, a 429 drains the limiter for Retry-After (every caller waits, not just this
  one), 5xx and transport errors are retried with :class:`~marketbus.runtime.backoff.Backoff`,
  other 4xx raise :class:`Refused` at once, and running out of attempts raises
  :class:`Unavailable`.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import enum
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, Protocol

import httpx

from marketbus.runtime.backoff import Backoff


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 §10.2.3): ``"120"`` or an HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``). ``None`` when absent or unreadable; never negative
    (a date in the past means "now")."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 850 / asctime forms carry no zone: they are GMT
        when = when.replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    return max(0.0, (when - now).total_seconds())


class Outcome(enum.Enum):
    """What to do with one attempt's result."""

    OK = "ok"  # 2xx/3xx: use it
    RATE_LIMITED = "rate_limited"  # 429: wait Retry-After (drain the limiter), then retry
    RETRY = "retry"  # 5xx, 408, timeout, connection failure: retry with back-off
    REFUSED = "refused"  # other 4xx: our request is wrong; retrying will not help


def classify(status: int | None) -> Outcome:
    """The retry class of an HTTP status; ``None`` stands for a transport failure or timeout
    (no status at all), which is retryable."""
    if status is None or status == 408 or status >= 500:
        return Outcome.RETRY
    if status == 429:
        return Outcome.RATE_LIMITED
    if status >= 400:
        return Outcome.REFUSED
    return Outcome.OK


class Limiter(Protocol):
    def slot(self) -> AbstractAsyncContextManager[None]:
        """``async with limiter.slot(): <one call>``: waits its turn; the call counts until it ends."""
        ...

    def penalize(self, seconds: float) -> None: ...


class VendorHttpError(Exception):
    """Base of the errors :class:`VendorHttp` raises."""


class Refused(VendorHttpError):
    """A 4xx other than 429: the request was not applied, retrying will not help."""

    def __init__(self, response: httpx.Response, path: str) -> None:
        super().__init__(f"{path}: HTTP {response.status_code}: {response.content[:200]!r}")
        self.response = response
        self.status = response.status_code
        self.body = response.content


class Unavailable(VendorHttpError):
    """The vendor did not answer usefully within the attempts (outage, maintenance, 429 storm)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# callback(kind) for metrics (the ``kind`` label of marketbus_ingest_vendor_errors_total):
# "timeout", "network", "rate_limited", "server_error", "refused"
ErrorHook = Callable[[str], None]


class VendorHttp:
    """One vendor's HTTP client: ``await http.send("GET", path, params=...)`` returns the first
    2xx :class:`httpx.Response` (or raises :class:`Refused` / :class:`Unavailable`).

    ``limiter`` is the vendor's (usually a :class:`~marketbus.vendor.limits.LimiterHold`'s);
    ``max_attempts`` bounds transport/5xx retries and ``max_rate_limited`` bounds 429s
    (each of which waits its Retry-After; without the header ``default_retry_after_s``, or a
    back-off step when that is ``None``).
    ``classify_response`` may override :func:`classify` for vendors with their own error codes.
    """

    def __init__(self, base_url: str, limiter: Limiter, *, headers: Mapping[str, str] | None = None,
                 timeout_s: float = 10.0, backoff: Backoff | None = None, max_attempts: int = 8,
                 max_rate_limited: int = 100, default_retry_after_s: float | None = None,
                 on_error: ErrorHook | None = None, max_connections: int = 20) -> None:
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter
        self.backoff = backoff or Backoff(0.2, 10.0)
        self.max_attempts = max_attempts
        self.max_rate_limited = max_rate_limited
        self.default_retry_after_s = default_retry_after_s
        self.on_error = on_error or (lambda kind: None)
        pool = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max(1, max_connections // 2))
        self.client = httpx.AsyncClient(base_url=self.base_url, headers=dict(headers or {}), timeout=timeout_s,
                                        limits=pool)
        self.calls = 0
        self.rate_limited = 0

    async def send(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                   content: bytes | None = None, headers: Mapping[str, str] | None = None,
                   timeout: float | None = None, max_attempts: int | None = None,
                   accept: Callable[[httpx.Response], bool] | None = None,
                   paced: bool = True) -> httpx.Response:
        """One call with pacing and retries. ``accept(response)`` may take a non-2xx reply as the
        answer (e.g. a 401 the caller handles by logging in again). ``paced=False`` for calls
        outside the vendor's API limits (presigned downloads): a 429 still drains the limiter."""
        # None, not {}: httpx replaces a URL's own query (a presigned URL's signature) with params
        query = {k: v for k, v in (params or {}).items() if v is not None} or None
        attempts = self.max_attempts if max_attempts is None else max_attempts
        backoff = Backoff(self.backoff.initial_s, self.backoff.max_s)
        failures = limited = 0
        last = ""
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        while True:
            # the call holds its place in the vendor's windows until its reply is in
            pacing: AbstractAsyncContextManager[None] = self.limiter.slot() if paced or limited else nullcontext()
            self.calls += 1
            status: int | None = None
            wait_at_least = 0.0
            try:
                async with pacing:
                    response = await self.client.request(method, path, params=query, content=content,
                                                          headers=headers, **extra)
            except httpx.TimeoutException as exc:
                self.on_error("timeout")
                last = type(exc).__name__
            except httpx.TransportError as exc:
                self.on_error("network")
                last = type(exc).__name__
            else:
                status = response.status_code
                if accept is not None and accept(response):
                    return response
                outcome = classify(status)
                if outcome is Outcome.OK:
                    return response
                if outcome is Outcome.REFUSED:
                    self.on_error("refused")
                    raise Refused(response, path)
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                if outcome is Outcome.RATE_LIMITED:
                    limited += 1
                    self.rate_limited += 1
                    self.on_error("rate_limited")
                    if limited >= self.max_rate_limited:
                        raise Unavailable(f"{method} {path}: HTTP 429 {limited} times", 429)
                    wait = self.default_retry_after_s if retry_after is None else retry_after
                    if wait is None:  # no hint at all: back off on our own
                        await backoff.sleep()
                    else:
                        self.limiter.penalize(wait)  # the next slot (anyone's) waits it out
                    continue
                self.on_error("server_error")
                last = f"HTTP {status}"
                wait_at_least = retry_after or 0.0
            failures += 1
            if failures >= attempts:
                raise Unavailable(f"{method} {path}: {last} after {failures} attempts", status)
            await backoff.sleep(wait_at_least)

    async def close(self) -> None:
        await self.client.aclose()
