"""Assembles the FinX sandbox: websocket routes, REST routes, JSON 404/405, admin routes."""

from __future__ import annotations

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from services.sandbox.common.faults import FaultInjector

from . import rest, ws
from .admin import admin_routes
from .context import FinxContext
from .data import FinxMarket
from .settings import FinxSettings


def error_body(status: int, code: str, message: str) -> tuple[bytes, dict[str, str]]:
    """The sandbox's error JSON (the vendor documents none; see vendors/finx.md section 6)."""
    return msgspec.json.encode({"error": message}), {}


async def _http_error(request: Request, exc: Exception) -> Response:
    # Every response is JSON: the client calls .json() on whatever comes back.
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    return rest.error_response(status, "not found" if status == 404 else str(getattr(exc, "detail", "error")))


def build(settings: FinxSettings, faults: FaultInjector) -> tuple[Starlette, list[Route]]:
    ctx = FinxContext(settings, FinxMarket(settings), faults, set(settings.api_keys))
    routes: list[BaseRoute] = [WebSocketRoute(path, endpoint) for path, endpoint in ws.endpoints(ctx).items()]
    routes.extend(rest.routes(ctx))
    app = Starlette(routes=routes, exception_handlers={404: _http_error, 405: _http_error})
    app.state.finx = ctx
    # No background generator: tapes are random-access, the newest tick simply follows the clock.
    app.state.background = []
    return app, admin_routes(ctx)
