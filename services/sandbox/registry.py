"""The sandboxes marketbus ships, by name, with their documented default ports."""

from __future__ import annotations

import importlib

from .common.base import SandboxSpec

# name -> (module, default port). Ports are documented in the README.
SANDBOXES: dict[str, tuple[str, int]] = {
    "finx": ("services.sandbox.finx", 8701),
    "ticksupply": ("services.sandbox.ticksupply", 8702),
    "digitex": ("services.sandbox.digitex", 8703),
    "sitagri": ("services.sandbox.sitagri", 8704),
}


def load_spec(name: str) -> SandboxSpec:
    try:
        module_name, _ = SANDBOXES[name]
    except KeyError:
        raise ValueError(f"unknown sandbox {name!r}; choose from {', '.join(SANDBOXES)}") from None
    return importlib.import_module(module_name).SANDBOX


def available() -> list[str]:
    """Sandboxes whose package is present (all four once issue #3 is done)."""
    names = []
    for name, (module_name, _) in SANDBOXES.items():
        try:
            importlib.import_module(module_name).SANDBOX  # noqa: B018
        except (ImportError, AttributeError):
            continue
        names.append(name)
    return names
