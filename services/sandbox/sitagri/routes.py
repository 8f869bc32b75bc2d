"""HTTP and websocket routes of the sandbox, and its ground-truth admin routes.

Vendor surface:
- ``POST /api/login`` {"login","password"} -> {"code":"login","token","timeout","ttl"} (sandbox stub
  of the separate login API; configured static tokens work without it)
- ``GET /api`` (whole cache), ``GET /api{reference}``, ``POST /api`` (batch: array of references)
- ``GET /api/netbus`` (long polling), websocket ``/api/netbus`` (token as subprotocol)
- ``POST /edit/news/sources/{SRC}/article`` (publish)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import msgspec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from ..common.faults import FaultInjector
from .api import Api, ApiError, Context, error_dict
from .netbus import Hub, long_poll, netbus_ws
from .news import NewsBook
from .prices import ENCODER, Market
from .session import Session, SessionStore
from .settings import SitagriSettings
from .tree import NEWS_SOURCES, Tree, build_tree


def error_body(status: int, code: str, message: str) -> tuple[bytes, dict[str, str]]:
    return ENCODER.encode(error_dict(status, code, message)), {}


def json(data: Any, status: int = 200) -> Response:
    return Response(ENCODER.encode(data), status_code=status, media_type="application/json")


def fail(exc: ApiError) -> Response:
    return json(exc.body(), exc.status)


class LoginBody(msgspec.Struct):
    login: str
    password: str


class ArticleBody(msgspec.Struct, kw_only=True):
    code: str = "newsArticle"
    copyright: str = ""
    lang: str
    title: str
    snippet: str = ""
    content: str = ""
    publicationDate: int
    modificationDate: int | None = None


@dataclass
class Sandbox:
    """Everything one running sandbox holds (also the in-process ground-truth helpers)."""

    settings: SitagriSettings
    tree: Tree
    market: Market
    news: NewsBook
    sessions: SessionStore
    hub: Hub
    api: Api

    @classmethod
    def create(cls, settings: SitagriSettings, faults: FaultInjector, now: int | None = None) -> Sandbox:
        tree = build_tree(int(time.time()) if now is None else now)
        market = Market(tree, settings.seed, settings.rate, settings.cash_rate, settings.orderbook_depth)
        news = NewsBook(settings.seed, settings.news_interval,
                        {c: langs for c, (_, langs, _) in NEWS_SOURCES.items() if c not in settings.writable_news},
                        {c for c, (_, _, meta) in NEWS_SOURCES.items() if meta})
        sessions = SessionStore(settings.seed, settings.session_timeout, settings.static_tokens,
                                settings.credentials, settings.longpoll_buffer)
        hub = Hub(settings, market, news, sessions, faults)
        return cls(settings, tree, market, news, sessions, hub, Api(settings, tree, market, news, hub))

    def ticks(self, quote_ref: str, start_s: float, end_s: float) -> list[dict[str, Any]]:
        """Ground truth: the ticks of a quote in [start, end] (what pushes carry in ``last``)."""
        return self.market.ticks(quote_ref, start_s, end_s)


def build(settings: SitagriSettings, faults: FaultInjector) -> tuple[Starlette, list[Route]]:
    sb = Sandbox.create(settings, faults)

    def session_of(request: Request) -> Session:
        session = sb.sessions.get(request.headers.get("x-session-token"))
        if session is None:
            raise ApiError(401, "invalidSession", "unknown or expired session token")
        return session

    async def login(request: Request) -> Response:
        try:
            body = msgspec.json.decode(await request.body(), type=LoginBody)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return fail(ApiError(400, "badRequest", f"expected {{\"login\",\"password\"}}: {exc}"))
        session = sb.sessions.login(body.login, body.password)
        if session is None:
            return fail(ApiError(401, "badCredentials", "wrong login or password"))
        return json({"code": "login", "token": session.token, "timeout": settings.timeout_field,
                     "ttl": settings.session_ttl})

    async def get_ref(request: Request) -> Response:
        try:
            session = session_of(request)
            ref = request.url.path[len("/api"):]  # raw path, so %-encoded search arrays stay intact
            return json(sb.api.resolve(unquote(ref).rstrip("/") if ref != "/" else "", Context(session, session)))
        except ApiError as exc:
            return fail(exc)

    async def batch(request: Request) -> Response:
        try:
            session = session_of(request)
            try:
                refs = msgspec.json.decode(await request.body())
            except msgspec.DecodeError:
                raise ApiError(400, "badRequest", "the body must be a JSON array of references") from None
            if not isinstance(refs, list):
                raise ApiError(400, "badRequest", "the body must be a JSON array of references")
            if len(refs) > settings.batch_cap:
                raise ApiError(400, "tooManyReferences", f"at most {settings.batch_cap} references per batch")
        except ApiError as exc:
            return fail(exc)
        ctx = Context(session, session)
        out = []
        for ref in refs:
            try:
                if not isinstance(ref, str):
                    raise ApiError(400, "badRequest", "a reference is a string")
                out.append(sb.api.resolve(ref, ctx))
            except ApiError as exc:
                out.append(exc.body())
        for callback in ctx.after:
            callback()
        return json(out)

    async def netbus_http(request: Request) -> Response:
        try:
            session = session_of(request)
        except ApiError as exc:
            return fail(exc)
        return await long_poll(session, sb.sessions, settings)

    async def publish(request: Request) -> Response:
        source = request.path_params["source"]
        try:
            session_of(request)
            if source not in sb.tree.news_sources:
                raise ApiError(404, "notFound", f"unknown news source {source}")
            if source not in settings.writable_news:
                raise ApiError(403, "forbidden", f"no write rights on news source {source}")
            try:
                body = msgspec.json.decode(await request.body(), type=ArticleBody)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise ApiError(400, "badRequest", f"bad newsArticle: {exc}") from None
        except ApiError as exc:
            return fail(exc)
        article = sb.news.publish(source, msgspec.structs.asdict(body))
        sb.hub.push_news(source, article)
        return json({"code": "writeEditableArticle", "source": f"/news/sources/{source}", "id": article["id"],
                     "success": True})

    async def ws(websocket: WebSocket) -> None:
        await netbus_ws(websocket, sb.api, sb.hub, sb.sessions, settings, faults)

    app = Starlette(
        routes=[
            Route("/api/login", login, methods=["POST"]),
            Route("/api/netbus", netbus_http, methods=["GET"]),
            WebSocketRoute("/api/netbus", ws),
            Route("/api", get_ref, methods=["GET"]),
            Route("/api", batch, methods=["POST"]),
            Route("/api/{ref:path}", get_ref, methods=["GET"]),
            Route("/edit/news/sources/{source}/article", publish, methods=["POST"]),
        ],
        middleware=[Middleware(GZipMiddleware, minimum_size=1024)],
    )
    app.state.background = [sb.hub.run, sb.hub.scheduled_reboots]
    app.state.sitagri = sb
    return app, _admin_routes(sb)


def _admin_routes(sb: Sandbox) -> list[Route]:
    async def tree(_: Request) -> Response:
        quotes = [{"ref": q.ref, "kind": q.kind, "price": q.price_code, "orderBook": q.order_book}
                  for q in sb.tree.quotes.values()]
        return json({"quotes": quotes, "items": len(sb.tree.items), "lists": sorted(sb.tree.lists),
                     "l10n": len(sb.tree.l10n)})

    async def ticks(request: Request) -> Response:
        q = request.query_params
        if q.get("quote") not in sb.tree.quotes:
            return json({"error": "unknown quote"}, 404)
        return json(sb.ticks(q["quote"], float(q.get("start", 0)), float(q.get("end", time.time()))))

    async def ws_refuse(request: Request) -> Response:
        if request.method == "POST":
            sb.hub.ws_refuse = request.query_params.get("enabled", "true").lower() in ("1", "true", "yes")
        return json({"ws_refuse": sb.hub.ws_refuse})

    async def state(_: Request) -> Response:
        return json({"sessions": len(sb.sessions.sessions), "listeners": sb.hub.listener_count(),
                     "pushed": sb.hub.pushed, "ws_refuse": sb.hub.ws_refuse})

    async def expire(request: Request) -> Response:
        return json({"expired": sb.sessions.expire(request.query_params.get("token", ""))})

    return [
        Route("/sitagri/tree", tree),
        Route("/sitagri/ticks", ticks),
        Route("/sitagri/ws_refuse", ws_refuse, methods=["GET", "POST"]),
        Route("/sitagri/state", state),
        Route("/sitagri/sessions/expire", expire, methods=["POST"]),
    ]
