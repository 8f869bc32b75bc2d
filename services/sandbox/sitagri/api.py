"""The reference grammar: one resolver for GET /api{ref}, batch POST /api and websocket requests."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

import msgspec

from .history import HistoryError, history
from .news import NewsBook
from .prices import Market
from .session import Session
from .settings import SitagriSettings
from .tree import Tree


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message

    def body(self) -> dict[str, Any]:
        return error_dict(self.status, self.error, self.message)


def error_dict(status: int, error: str, message: str) -> dict[str, Any]:
    """The sandbox's error object (the vendor documents none; this shape is [inferred])."""
    return {"code": "error", "status": status, "error": error, "message": message}


class Subscriber(Protocol):
    def deliver(self, item: bytes) -> None: ...


class Listeners(Protocol):
    """What the resolver needs from the netbus hub."""

    def register_price(self, sub: Subscriber, ref: str) -> bytes: ...
    def unregister_price(self, sub: Subscriber, ref: str) -> bool: ...
    def register_news(self, sub: Subscriber, source: str) -> None: ...
    def unregister_news(self, sub: Subscriber, source: str) -> bool: ...
    def pumping(self, ref: str) -> bool: ...
    def before_ack(self) -> bool: ...


@dataclass
class Context:
    session: Session
    subscriber: Subscriber  # the websocket client, or the session itself for long polling
    over_ws: bool = False
    after: list[Callable[[], None]] = field(default_factory=list)  # run once the reply is queued


EXPIRED = re.compile(r"(/market/sources/[^/]+/future/[^/]+)(?:/expired)?/(\d{4})/(\d{1,2})/history/([^/]+)")
HISTORY = re.compile(r"(/market/.+)/history/([^/]+)")
NEWS_LISTEN = re.compile(r"/news/sources/([^/]+)/article/(register|unregister)")
NEWS_SEARCH = re.compile(r"/news/sources/([^/]+)/article/search/(-?\d+)/(-?\d+)(?:/(.*))?")
NEWS_ARTICLE = re.compile(r"/news/sources/([^/]+)/article/([^/]+)")
L10N = re.compile(r"/l10n/([^/]+)/([^/]+)")


class Api:
    def __init__(self, settings: SitagriSettings, tree: Tree, market: Market, news: NewsBook,
                 hub: Listeners) -> None:
        self.settings = settings
        self.tree = tree
        self.market = market
        self.news = news
        self.hub = hub

    def resolve(self, ref: str, ctx: Context) -> Any:
        """The reply to one reference (an ApiError for a bad one)."""
        if ref == "":
            return self.cache()
        if ref == "/session":
            out: dict[str, Any] = {"code": "session", "token": ctx.session.token,
                                   "timeout": self.settings.timeout_field}
            if not ctx.over_ws:
                out |= {"ttl": self.settings.session_ttl, "lang": self.settings.lang}
            return out
        if ref == "/keepAlive":
            return {"code": "keepAlive", "success": True}
        if ref.startswith("/market/"):
            return self._market(ref, ctx)
        if ref.startswith("/news/"):
            return self._news(ref, ctx)
        m = L10N.fullmatch(ref)
        if m:
            text = self.tree.l10n.get(ref)
            if text is None:
                raise ApiError(404, "notFound", f"unknown reference {ref}")
            return {"code": m.group(2), "text": text}
        raise ApiError(404, "notFound", f"unknown reference {ref}")

    # --- market ---------------------------------------------------------------------------
    def _market(self, ref: str, ctx: Context) -> Any:
        now = int(time.time())
        m = EXPIRED.fullmatch(ref)
        if m and m.group(1) in self.tree.future_classes:
            fc = self.tree.future_classes[m.group(1)]
            info = fc.expired(int(m.group(2)), int(m.group(3)), now)
            if info is None:
                raise ApiError(404, "notFound", f"no expired delivery {m.group(2)}/{m.group(3)} for {fc.ref}")
            return self._history(info.ref, m.group(4), now, info, allow_shift=True)
        m = HISTORY.fullmatch(ref)
        if m:
            return self._history(m.group(1), m.group(2), now)
        for suffix in ("/price/register", "/price/unregister"):
            if ref.endswith(suffix):
                quote = self._quote(ref[: -len(suffix)])
                return self._listen_price(quote.ref, suffix.endswith("/register"), ctx)
        if ref.endswith("/price"):
            quote = self._quote(ref[:-6])
            state = self.market.state(quote.ref)
            if not self.hub.pumping(quote.ref):  # a registered quote is kept current by the pump
                state.catch_up()
            return state.price()
        if ref.endswith("/orderBook"):
            quote = self._quote(ref[:-10])
            if not quote.order_book:
                raise ApiError(404, "noOrderBook", f"market source {quote.source} has no order books")
            state = self.market.state(quote.ref)
            if not self.hub.pumping(quote.ref):
                state.catch_up()
            return state.order_book(self.settings.orderbook_depth)
        if ref in self.tree.lists:
            return self.tree.lists[ref]
        if "/deliveries/" in ref:
            item = self.market.delivery(ref, now)
            if item is not None:
                return item
        if ref in self.tree.items:
            return self.tree.items[ref]
        raise ApiError(404, "notFound", f"unknown reference {ref}")

    def _quote(self, ref: str) -> Any:
        info = self.tree.quotes.get(ref)
        if info is None:
            raise ApiError(404, "notFound", f"unknown quote {ref}")
        return info

    def _history(self, quote_ref: str, params: str, now: int, info: Any = None, allow_shift: bool = False) -> Any:
        info = info or self._quote(quote_ref)
        parts = params.split(",")
        if len(parts) not in ((3, 4) if allow_shift else (3,)):
            expected = "START,END,RESOLUTION" + (",SHIFT" if allow_shift else "")
            raise ApiError(400, "badRequest", f"history expects {expected}")
        try:
            start, end = int(parts[0]), int(parts[1])
            shift = int(parts[3]) if len(parts) == 4 else 0
        except ValueError:
            raise ApiError(400, "badRequest", "START, END and SHIFT are integers (unix seconds)") from None
        try:
            return history(self.market, info, start, end, parts[2], now, self.settings.history_cap, shift)
        except HistoryError as exc:
            raise ApiError(400, "badResolution", str(exc)) from None

    def _listen_price(self, quote_ref: str, register: bool, ctx: Context) -> Any:
        if not register:
            ok = self.hub.unregister_price(ctx.subscriber, quote_ref)
            return {"code": "unregisterPrice", "quote": quote_ref, "success": ok}
        snapshot = self.hub.register_price(ctx.subscriber, quote_ref)
        # The real server may push a price before its register reply: so does the sandbox, sometimes.
        if self.hub.before_ack():
            ctx.subscriber.deliver(snapshot)
        else:
            ctx.after.append(lambda: ctx.subscriber.deliver(snapshot))
        return {"code": "registerPrice", "quote": quote_ref, "success": True}

    # --- news -----------------------------------------------------------------------------
    def _news(self, ref: str, ctx: Context) -> Any:
        if ref == "/news/sources":
            return self.tree.lists[ref]
        if ref in self.tree.items:
            return self.tree.items[ref]
        now = int(time.time())
        m = NEWS_LISTEN.fullmatch(ref)
        if m:
            source = self._news_source(m.group(1))
            src_ref = f"/news/sources/{source}"
            if m.group(2) == "register":
                self.hub.register_news(ctx.subscriber, source)
                return {"code": "registerNews", "source": src_ref, "success": True}
            ok = self.hub.unregister_news(ctx.subscriber, source)
            return {"code": "unregisterNews", "source": src_ref, "success": ok}
        m = NEWS_SEARCH.fullmatch(ref)
        if m:
            source = self._news_source(m.group(1))
            langs, keyword = parse_search_tail(m.group(4) or "")
            data = self.news.search(source, int(m.group(2)), int(m.group(3)), langs, keyword, now)
            return {"code": "searchNews", "source": f"/news/sources/{source}", "data": data}
        m = NEWS_ARTICLE.fullmatch(ref)
        if m:
            source = self._news_source(m.group(1))
            art = self.news.article(source, m.group(2), now)
            if art is None:
                raise ApiError(404, "notFound", f"no article {m.group(2)} in {source}")
            return art
        raise ApiError(404, "notFound", f"unknown reference {ref}")

    def _news_source(self, code: str) -> str:
        if code not in self.tree.news_sources:
            raise ApiError(404, "notFound", f"unknown news source {code}")
        return code

    # --- whole cache ----------------------------------------------------------------------
    def cache(self) -> dict[str, Any]:
        """GET /api: every item of the tree keyed by its reference, l10n texts included [inferred]."""
        now = int(time.time())
        data: dict[str, Any] = dict(self.tree.items)
        for ref, info in self.tree.quotes.items():
            if info.continuous is not None:
                data[ref] = self.market.delivery(ref, now)
        for ref, text in self.tree.l10n.items():
            data[ref] = {"code": ref.rsplit("/", 1)[1], "text": text}
        return {"code": "cache", "data": data}


def parse_search_tail(tail: str) -> tuple[list[str] | None, str | None]:
    """``["EN","FR"]``, ``wheat`` or ``["EN","FR"]/wheat`` (URL-encoded or not)."""
    tail = unquote(tail)
    if not tail:
        return None, None
    if tail.startswith("["):
        end = tail.find("]")
        if end < 0:
            raise ApiError(400, "badRequest", "unterminated languages array")
        raw, rest = tail[: end + 1], tail[end + 1:]
        if "'" in raw:
            raise ApiError(400, "badRequest", "only double quotes are accepted in the languages array")
        try:
            langs = msgspec.json.decode(raw, type=list[str])
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise ApiError(400, "badRequest", f"bad languages array {raw}") from None
        keyword = rest[1:] if rest.startswith("/") else rest
        return langs, keyword or None
    return None, tail
