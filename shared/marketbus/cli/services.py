"""The services ``marketbus up`` runs (and docker-compose lists), in start order."""

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
]


def existing_services() -> list[tuple[str, str]]:
    """The services whose package is present in this checkout."""
    found = []
    for name, module in SERVICES:
        try:
            if importlib.util.find_spec(f"{module}.__main__") is not None:
                found.append((name, module))
        except ModuleNotFoundError:
            continue
    return found
