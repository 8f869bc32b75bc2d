"""Sitagri AgriMarket REST client: session (login, keep-alive, re-login), references, batches,
history, news search and publishing.

- Auth is the ``X-Session-Token`` header. A session expires after ``timeout`` idle seconds; any
  ``/api`` call (or websocket frame) refreshes it. :class:`SessionKeeper` holds the token, logs in
  when there is none or the vendor said 401, and sends ``GET /api/keepAlive`` about
  ``margin`` seconds before the idle timeout when nothing else touched the session.
- Batches: ``POST /api`` with a JSON array of references (at most ``batch_size``, 250 by default)
  returns the results in the same order; :meth:`SitagriClient.batch` splits longer lists.
- Pacing on the declared window (:data:`marketbus.vendor.limits.SITAGRI`, one limiter per host and
  process), 429/5xx/network retries with back-off: the vendor HTTP layer
  (:class:`marketbus.vendor.http.VendorHttp`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from marketbus.runtime.backoff import Backoff
from marketbus.runtime.session import SessionKeeper
from marketbus.runtime.settings import Secret
from marketbus.vendor.http import Refused, VendorHttp
from marketbus.vendor.http import Unavailable as HttpUnavailable
from marketbus.vendor.limits import SITAGRI, LimiterHold, per_second

from .normalize import generic_decoder

log = logging.getLogger("marketbus.ingest_sitagri.client")

HEADERS = {
    "Accept": "application/json, text/*;q=0.2",
    "Accept-Charset": "utf-8",
    "Accept-Encoding": "gzip, deflate",
    "Access-Control-Request-Headers": "x-session-token",
}
JSON_BODY = {"Content-Type": "application/json; charset=utf-8"}


class VendorError(Exception):
    """The vendor answered with an error status (the body is kept, decoded when it is JSON)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


class SessionExpired(VendorError):
    """401: the token is unknown or expired (and logging in again did not help)."""


class Unavailable(Exception):
    """The vendor cannot be reached (connection refused/reset, timeouts, 5xx after retries)."""


def encode_ref(ref: str) -> str:
    """A reference as a URL path (news-search language arrays are %-encoded)."""
    return quote(ref, safe="/,:@-_.~")


class SitagriClient:
    def __init__(self, base_url: str, token: Secret, *, login: str = "", password: Secret | None = None,
                 login_path: str = "/api/login", timeout_s: float = 30.0, requests_per_s: float = 20.0,
                 max_retries: int = 5, batch_size: int = 250, keepalive_margin_s: float = 30.0,
                 backoff: Backoff | None = None, on_call: Callable[[str], None] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._login_name = login
        self._password = password or Secret("")
        self.login_path = login_path
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.batch_size = batch_size
        # the declared window (SITAGRI, or requests_per_s from the settings) on the process's one
        # limiter of this host (vendor.limits): no sliding second passes more
        self.limit = LimiterHold(SITAGRI.with_limits(per_second(requests_per_s)), self.base_url)
        self.limiter = self.limit.limiter
        self.backoff = backoff or Backoff(0.2, 5.0)
        self.on_call = on_call
        self.http = VendorHttp(self.base_url, self.limiter, headers=HEADERS, timeout_s=timeout_s,
                               backoff=self.backoff, max_attempts=max_retries + 1)
        self.keeper = SessionKeeper(self._login, self._keep_alive, margin_s=keepalive_margin_s)
        self.batches = 0

    @property
    def calls(self) -> int:
        return self.http.calls

    @property
    def ws_url(self) -> str:
        return ("wss://" + self.base_url[8:] if self.base_url.startswith("https://")
                else "ws://" + self.base_url.removeprefix("http://")) + "/api/netbus"

    @property
    def has_credentials(self) -> bool:
        return bool(self._login_name and self._password)

    async def close(self) -> None:
        await self.http.close()
        self.limit.release()

    # --- session ------------------------------------------------------------------------------
    async def _login(self) -> tuple[str, float | None]:
        if self.has_credentials:
            resp = await self._send("POST", self.login_path, None,
                                    msgspec.json.encode({"login": self._login_name, "password": self._password.get()}))
            if resp.status_code != 200:
                raise VendorError(resp.status_code, "login refused", _body(resp))
            data = generic_decoder.decode(resp.content)
            log.info("logged in to Sitagri as %s", self._login_name)
            return str(data["token"]), data.get("timeout")
        if not self._token:
            raise SessionExpired(401, "no token and no credentials configured")
        return self._token.get(), None

    async def _keep_alive(self, token: str) -> Any:
        resp = await self._send("GET", "/api/keepAlive", token)
        if resp.status_code != 200:
            raise VendorError(resp.status_code, "keepAlive refused", _body(resp))
        return generic_decoder.decode(resp.content)

    async def start(self) -> dict[str, Any]:
        """Open the session and learn its idle timeout (``GET /api/session``)."""
        info = await self.get("/session")
        if isinstance(info, dict) and info.get("timeout"):
            self.keeper.set_timeout(float(info["timeout"]))
        return info

    # --- transport ------------------------------------------------------------------------------
    async def _send(self, method: str, path: str, token: str | None, body: bytes | None = None,
                    timeout: float | None = None) -> httpx.Response:
        headers = dict(JSON_BODY) if body is not None else {}
        if token is not None:
            headers["X-Session-Token"] = token
        try:  # unpaced and not retried: the session's own calls (login, keep-alive)
            return await self.http.client.request(method, path, content=body, headers=headers,
                                                  timeout=timeout if timeout is not None else self.timeout_s)
        except (httpx.TransportError, OSError) as exc:
            raise Unavailable(f"{method} {path.split('?')[0][:120]}: {type(exc).__name__}") from None

    async def request(self, method: str, path: str, body: bytes | None = None, *, timeout: float | None = None,
                      retries: int | None = None, channel: str = "rest", relogin: bool = True) -> bytes:
        """One vendor call with the session token (:class:`VendorHttp`: pacing, retries on
        429/5xx and network errors with back-off); re-login on 401 (once); returns the body of a
        2xx reply."""
        attempts = (self.max_retries if retries is None else retries) + 1
        relogged = False
        while True:
            token = await self.keeper.get()
            headers = dict(JSON_BODY) if body is not None else {}
            headers["X-Session-Token"] = token
            try:
                resp = await self.http.send(method, path, content=body, headers=headers, timeout=timeout,
                                            max_attempts=attempts, accept=_is_401)
            except HttpUnavailable as exc:
                if exc.status == 429:
                    raise VendorError(429, "rate limited") from None
                raise Unavailable(f"{method} {path.split('?')[0][:120]}: {exc}") from None
            except Refused as exc:
                raise VendorError(exc.status, f"{method} {path[:200]}", _body(exc.response)) from None
            if self.on_call is not None:
                self.on_call(channel)
            if resp.status_code != 401:
                self.keeper.touch()
                return resp.content
            self.keeper.expired(token)
            if relogin and not relogged:
                relogged = True
                log.info("Sitagri session expired: logging in again")
                continue
            raise SessionExpired(401, "session refused after a new login" if relogged else "session expired",
                                 _body(resp))

    async def get_raw(self, ref: str, *, timeout: float | None = None, channel: str = "rest") -> bytes:
        return await self.request("GET", "/api" + encode_ref(ref), timeout=timeout, channel=channel)

    async def get(self, ref: str) -> Any:
        return generic_decoder.decode(await self.get_raw(ref))

    async def batch_raw(self, refs: Sequence[str], channel: str = "batch") -> list[msgspec.Raw]:
        """Results of many references, in order, as raw JSON (``batch_size`` per POST)."""
        out: list[msgspec.Raw] = []
        for i in range(0, len(refs), self.batch_size):
            chunk = list(refs[i:i + self.batch_size])
            body = await self.request("POST", "/api", msgspec.json.encode(chunk), channel=channel)
            results = msgspec.json.decode(body, type=list[msgspec.Raw])
            if len(results) != len(chunk):
                raise VendorError(200, f"batch of {len(chunk)} answered with {len(results)} results")
            self.batches += 1
            out.extend(results)
        return out

    async def batch(self, refs: Sequence[str]) -> list[Any]:
        return [generic_decoder.decode(r) for r in await self.batch_raw(refs)]

    async def long_poll(self, timeout_s: float = 90.0) -> bytes:
        """``GET /api/netbus``: blocks until something changed; a JSON array of updates."""
        # no silent re-login here: listeners belong to the session, so a new session must
        # register them again (the caller sees SessionExpired and does)
        return await self.request("GET", "/api/netbus", timeout=timeout_s, retries=0, channel="longpoll",
                                  relogin=False)

    async def keep_alive(self) -> Any:
        return await self.get("/keepAlive")

    # --- news -----------------------------------------------------------------------------------
    @staticmethod
    def search_ref(source: str, start_s: int, end_s: int, langs: Sequence[str] = (), keyword: str = "") -> str:
        ref = f"/news/sources/{source}/article/search/{start_s}/{end_s}"
        if langs:
            ref += "/" + msgspec.json.encode(list(langs)).decode()
        if keyword:
            ref += "/" + keyword
        return ref

    async def search_news(self, source: str, start_s: int, end_s: int, langs: Sequence[str] = (),
                          keyword: str = "") -> bytes:
        return await self.get_raw(self.search_ref(source, start_s, end_s, langs, keyword), channel="news")

    async def publish_article(self, source: str, article: dict[str, Any]) -> dict[str, Any]:
        """``POST /edit/news/sources/{SRC}/article`` -> ``{"code":"writeEditableArticle","id":..}``."""
        body = msgspec.json.encode({"code": "newsArticle", **article})
        data = generic_decoder.decode(await self.request("POST", f"/edit/news/sources/{encode_ref(source)}/article",
                                                         body, retries=0, channel="publish"))
        if not isinstance(data, dict) or not data.get("success"):
            raise VendorError(200, f"publishing to {source} failed", data)
        return data


def _body(resp: httpx.Response) -> Any:
    try:
        return msgspec.json.decode(resp.content)
    except msgspec.DecodeError:
        return resp.text[:500]


def _is_401(resp: httpx.Response) -> bool:
    return resp.status_code == 401
