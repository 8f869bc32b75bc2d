"""The same identities on a 3-node JetStream cluster: provisioned with 3 replicas by the admin,
a service publishes under its own identity, and the reader still may not purge."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import pytest

from marketbus.runtime.natsserver import NatsCluster
from marketbus.runtime.provision import provision
from marketbus.security.credentials import CredentialStore
from marketbus.security.identities import inbox_prefix

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(90)]


async def test_the_generated_authorization_runs_a_cluster(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "credentials")
    store.ensure()
    cluster = NatsCluster(size=3, base_dir=tmp_path / "cluster", config_file=store.auth_conf).start()

    def options(identity: str) -> dict:
        return {"nkeys_seed": str(store.seed_file(identity)), "inbox_prefix": inbox_prefix(identity)}

    try:
        admin = await nats.connect(cluster.urls, **options("admin"))
        deadline = time.monotonic() + 45
        while True:  # the JetStream meta leader is being elected
            try:
                await provision(admin.jetstream(), replicas=3)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        replicas = (await admin.jetstream().stream_info("MD")).config.num_replicas
        await admin.close()
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        finx = await nats.connect(cluster.urls, **options("ingest_finx"))
        ack = await finx.jetstream().publish("md.trade.finx.deribit.CLUSTER", b"{}", timeout=10)
        await finx.close()
        reader = await nats.connect(cluster.urls, error_cb=on_error, **options("reader"))
        await reader.publish("$JS.API.STREAM.PURGE.MD", b"{}")
        await reader.flush()
        await asyncio.sleep(0.5)
        await reader.close()
    finally:
        cluster.cleanup()
    assert (replicas, ack.stream, any("$js.api.stream.purge.md" in e for e in errors)) == (3, "MD", True)
