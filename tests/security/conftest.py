"""A real nats-server running the generated authorization (one nkey identity per service),
provisioned by the admin identity, and clients connected as any identity."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio

from marketbus.runtime.http import free_port
from marketbus.runtime.natsserver import NatsServer
from marketbus.runtime.provision import provision
from marketbus.security.credentials import CredentialStore
from marketbus.security.identities import inbox_prefix


@dataclass
class SecureBus:
    server: NatsServer
    store: CredentialStore
    clients: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def options(self, identity: str) -> dict[str, Any]:
        return {"nkeys_seed": str(self.store.seed_file(identity)), "inbox_prefix": inbox_prefix(identity)}

    def service_settings(self, identity: str) -> dict[str, Any]:
        """Settings overrides that make a Service connect as ``identity``."""
        return {"nats_url": self.url, "nats_nkey_seed_file": str(self.store.seed_file(identity)),
                "nats_inbox_prefix": inbox_prefix(identity)}

    async def connect(self, identity: str) -> Probe:
        probe = Probe(identity)
        probe.nc = await nats.connect(self.url, error_cb=probe.on_error, max_reconnect_attempts=0,
                                      **self.options(identity))
        self.clients.append(probe.nc)
        return probe


class Probe:
    """A client that records the server's permission violations."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.nc: Any = None
        self.violations: list[str] = []

    async def on_error(self, exc: Exception) -> None:
        self.violations.append(str(exc))

    async def _violated(self, needle: str, timeout: float = 2.0) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if any(needle.lower() in v.lower() for v in self.violations):  # nats-py lower-cases it
                return True
            await asyncio.sleep(0.02)
        return False

    async def publish_denied(self, subject: str, payload: bytes = b"{}") -> bool:
        """True when the server refused this identity's publish to ``subject``."""
        await self.nc.publish(subject, payload, reply=self.nc.new_inbox())
        await self.nc.flush()
        return await self._violated(f'Publish to "{subject}"')

    async def subscribe_denied(self, subject: str) -> bool:
        await self.nc.subscribe(subject)
        await self.nc.flush()
        return await self._violated(f'Subscription to "{subject}"')


def start_secure(tmp: Path) -> SecureBus:
    store = CredentialStore(tmp / "credentials")
    store.ensure()
    server = NatsServer(data_dir=tmp / "nats", port=free_port(), config_file=store.auth_conf).start()
    return SecureBus(server, store)


async def provision_as_admin(bus: SecureBus) -> None:
    nc = await nats.connect(bus.url, **bus.options("admin"))
    try:
        await provision(nc.jetstream())
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBus]:
    bus = start_secure(tmp_path_factory.mktemp("secure"))
    try:
        asyncio.run(provision_as_admin(bus))
        yield bus
    finally:
        bus.server.cleanup()


@pytest_asyncio.fixture
async def bus(secure_server: SecureBus) -> AsyncIterator[SecureBus]:
    yield secure_server
    for nc in secure_server.clients:
        if not nc.is_closed:
            await nc.close()
    secure_server.clients.clear()
