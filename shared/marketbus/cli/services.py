"""The services ``marketbus up`` runs (and docker-compose lists), in start order.

The CLI knows them by name only: each runs as ``python -m <module>`` in a process of its own, so
``marketbus`` never imports a service (see tests/unit/test_import_rules.py).
"""

from __future__ import annotations

import importlib.util

# (name, module run with `python -m`)
SERVICES: list[tuple[str, str]] = [
    ("history_writer", "services.history_writer"),
    ("ingest_finx", "services.ingest_finx"),
    ("ingest_ticksupply", "services.ingest_ticksupply"),
    ("ingest_digitex", "services.ingest_digitex"),
    ("ingest_sitagri", "services.ingest_sitagri"),
    ("order_router", "services.order_router"),
    ("export_orchestrator", "services.export_orchestrator"),
    ("replay", "services.replay"),
]

SANDBOX_MODULE = "services.sandbox"  # `python -m services.sandbox finx|ticksupply|digitex|sitagri|all`
SANDBOX_PORTS: dict[str, int] = {"finx": 8701, "ticksupply": 8702, "digitex": 8703, "sitagri": 8704}
"""The sandboxes' documented default ports (README), where `marketbus up` waits for them."""

# Each service's fixed HTTP port (/healthz, /metrics; the replay's HTTP API) and the variable
# that sets it (README, Monitoring): `marketbus up` moves them with the sandboxes'
# (MARKETBUS_UP_PORT_OFFSET), or a second system on the machine finds them taken.
SERVICE_HTTP_PORTS: dict[str, tuple[str, int]] = {
    "history_writer": ("MARKETBUS_HISTORY_WRITER_HTTP_PORT", 9101),
    "ingest_finx": ("MARKETBUS_INGEST_FINX_HTTP_PORT", 9102),
    "ingest_ticksupply": ("MARKETBUS_INGEST_TICKSUPPLY_HTTP_PORT", 9103),
    "ingest_digitex": ("MARKETBUS_INGEST_DIGITEX_HTTP_PORT", 9104),
    "ingest_sitagri": ("MARKETBUS_INGEST_SITAGRI_HTTP_PORT", 9105),
    "order_router": ("MARKETBUS_ORDER_ROUTER_HTTP_PORT", 9106),
    "export_orchestrator": ("MARKETBUS_EXPORT_HTTP_PORT", 9107),
    "replay": ("MARKETBUS_REPLAY_HTTP_PORT", 8711),
}


def existing_services() -> list[tuple[str, str]]:
    """The services whose package is present in this checkout (found by name, not imported)."""
    found = []
    for name, module in SERVICES:
        try:
            if importlib.util.find_spec(f"{module}.__main__") is not None:
                found.append((name, module))
        except ModuleNotFoundError:
            continue
    return found
