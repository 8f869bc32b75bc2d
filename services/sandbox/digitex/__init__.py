"""Digitex exchange bot REST API sandbox (``/dapi/v1/exchange/bot/``) with a tiny matching engine.

Default port 8703, token ``dgtx_sandbox_token``. See admin.py for the ``/_sandbox/digitex`` routes
and faults.py for the order-placement faults.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from services.sandbox.common.base import SandboxSpec
from services.sandbox.common.faults import FaultInjector

from .admin import admin_routes
from .routes import DigitexApi, error_body
from .settings import DigitexSettings


def build(settings: DigitexSettings, faults: FaultInjector) -> tuple[Starlette, list[Route]]:
    api = DigitexApi(settings)
    app = api.app()
    app.state.api = api  # reachable from tests and benches through runner.vendor_app
    return app, admin_routes(api)


SANDBOX = SandboxSpec(
    name="digitex",
    default_port=8703,
    settings_cls=DigitexSettings,
    build=build,
    error_body=error_body,
    description="Digitex bot REST API: markets, book, trades, OHLCV, balances, positions, orders",
)
