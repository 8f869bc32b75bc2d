"""FinX TickPlant sandbox: the real SDK wire format (see ../shared/vendors/finx.md)."""

from __future__ import annotations

from services.sandbox.common.base import SandboxSpec

from .app import build, error_body
from .data import FinxMarket, FinxTick
from .settings import DEFAULT_PORT, FinxSettings

SANDBOX = SandboxSpec(
    name="finx",
    default_port=DEFAULT_PORT,
    settings_cls=FinxSettings,
    build=build,
    error_body=error_body,
    description="FinX TickPlant: functionName JSON over /ws/ and /streamer/<key>, REST snap under /backend/",
)

__all__ = ["SANDBOX", "FinxMarket", "FinxSettings", "FinxTick"]
