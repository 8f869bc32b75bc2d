"""Sitagri AgriMarket sandbox: REST reference tree, prices, history, news, websocket netbus, long polling.

Default port 8704. Static token ``85045E8E-CE68-2956-9E11-96F51837C71B`` (the vendor's example)
always works; ``POST /api/login`` with ``{"login":"demo","password":"demo"}`` issues expiring ones.
"""

from __future__ import annotations

from ..common.base import SandboxSpec
from .routes import Sandbox, build, error_body
from .settings import DEFAULT_TOKEN, SitagriSettings

SANDBOX = SandboxSpec(
    name="sitagri",
    default_port=8704,
    settings_cls=SitagriSettings,
    build=build,
    error_body=error_body,
    description="Sitagri AgriMarket: REST + websocket netbus + long polling, X-Session-Token",
    extra={"token": DEFAULT_TOKEN},
)

__all__ = ["DEFAULT_TOKEN", "SANDBOX", "Sandbox", "SitagriSettings"]
