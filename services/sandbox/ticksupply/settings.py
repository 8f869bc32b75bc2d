"""Settings of the TickSupply sandbox (env prefix ``MARKETBUS_SANDBOX_TICKSUPPLY_``)."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from services.sandbox.common.base import SandboxSettings


class TickSupplySettings(SandboxSettings, kw_only=True):
    env_prefix: ClassVar[str] = "MARKETBUS_SANDBOX_TICKSUPPLY_"
    # Each key is its own account (subscriptions, exports, schemas and idempotency keys are per key).
    api_keys: list[str] = msgspec.field(default_factory=lambda: ["ts_sandbox_key", "ts_sandbox_key_2"])
    # Token bucket per API key; requests_per_s <= 0 disables the limiter.
    requests_per_s: float = 20.0
    burst: int = 40
    # Export state machine: seconds spent queued and (at least) running, divided by export_speed.
    export_queued_s: float = 1.0
    export_running_s: float = 2.0
    export_speed: float = 1.0
    # Presigned artifact URLs: lifetime and the HMAC key that signs them.
    artifact_url_ttl_s: int = 300
    signing_secret: str = "ticksupply-sandbox-signing-secret"
    idempotency_ttl_s: int = 86_400
    # The most rows a single export may hold (a guard for memory; larger exports fail).
    max_export_rows: int = 5_000_000
