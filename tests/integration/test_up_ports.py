"""`marketbus up` with MARKETBUS_UP_PORT_OFFSET runs next to another system on the same machine:
every fixed port a child binds moves by the offset, the services' /healthz and /metrics ports
included (a second `up` otherwise crash-loops on "Address already in use")."""

from __future__ import annotations

import importlib

from marketbus.cli.services import existing_services
from marketbus.cli.up import moved_ports_env
from marketbus.runtime.service import ServiceSettings

OFFSET = 537


def _settings_classes(module: str) -> list[type[ServiceSettings]]:
    settings = importlib.import_module(f"{module}.settings")
    return [c for c in vars(settings).values()
            if isinstance(c, type) and issubclass(c, ServiceSettings) and c.__module__ == settings.__name__]


def test_every_service_http_port_moves_with_the_offset() -> None:
    env = moved_ports_env(OFFSET)
    for name, module in existing_services():
        classes = _settings_classes(module)
        assert classes, module
        for cls in classes:
            for field in ("http_port", "api_port"):
                default = getattr(cls(), field, None)
                if not default:  # 0: any free port, nothing to move
                    continue
                var = f"{cls.env_prefix}{field.upper()}"
                assert env.get(var) == str(default + OFFSET), (name, var, env.get(var))
