"""Services listen on fixed health/metrics ports by default (9101-9108, README: Monitoring). Tests
start many services in one process and next to a `make run` that may hold those ports: they must
ask for free ports instead. Call :func:`use_ephemeral_http_ports` once, before any service is
built (tests/conftest.py does, at import)."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SERVICE_PREFIXES = (
    "MARKETBUS_HISTORY_WRITER_", "MARKETBUS_INGEST_FINX_", "MARKETBUS_INGEST_TICKSUPPLY_",
    "MARKETBUS_INGEST_DIGITEX_", "MARKETBUS_INGEST_SITAGRI_", "MARKETBUS_ORDER_ROUTER_", "MARKETBUS_EXPORT_",
    "MARKETBUS_BUS_EXPORTER_", "MARKETBUS_REPLAY_",
)


def use_ephemeral_http_ports(env: MutableMapping[str, str] = os.environ) -> None:
    """``<PREFIX>HTTP_PORT=0`` for every service, unless the variable is already set."""
    for prefix in SERVICE_PREFIXES:
        env.setdefault(f"{prefix}HTTP_PORT", "0")
