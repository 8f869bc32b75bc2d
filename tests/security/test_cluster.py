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


async def test_the_shipped_cluster_config_lets_in_only_routes_with_the_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/nats/cluster.conf as shipped (ports moved to free ones on 127.0.0.1): two nodes with
    the route password of `make secrets` form a cluster; a server without it is not let in."""
    import json
    import shutil
    import urllib.request

    from marketbus.runtime.http import free_port
    from marketbus.runtime.natsserver import NatsServer
    from marketbus.security.credentials import CLUSTER_ENV, compose_secrets

    root = Path(__file__).resolve().parents[2]
    store = CredentialStore(tmp_path / "secrets")
    store.ensure()
    compose_secrets(store.directory)
    for env_file in ("nats-keys.env", CLUSTER_ENV):
        for line in (store.directory / env_file).read_text().splitlines():
            monkeypatch.setenv(*line.split("=", 1))
    password = (store.directory / "nats_route_password").read_text().strip()
    route_ports, monitor_ports = [free_port() for _ in range(3)], [free_port() for _ in range(2)]
    for i, node in enumerate(("N1", "N2", "N3")):  # n3 is never started: its route just retries
        monkeypatch.setenv(f"MARKETBUS_ROUTE_{node}", f"nats-route://route:{password}@127.0.0.1:{route_ports[i]}")
    monkeypatch.setenv("SERVER_NAME", "unused")  # each node's name is given on its command line
    nodes: list[NatsServer] = []
    rogue = None

    def routes(monitor_port: int) -> set[str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/routez", timeout=5) as resp:
            return {r.get("remote_name") or r["remote_id"] for r in json.loads(resp.read())["routes"]}

    try:
        for i in range(2):
            directory = tmp_path / f"n{i + 1}"
            directory.mkdir()
            shutil.copy(root / "deploy/nats/auth.conf", directory / "auth.conf")
            conf = (root / "deploy/nats/cluster.conf").read_text()
            conf = (
                conf.replace("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{route_ports[i]}")
                .replace("http_port: 8222", f"http_port: {monitor_ports[i]}")
                .replace("store_dir: /data", f"store_dir: {directory}/js")
            )
            assert str(route_ports[i]) in conf and str(monitor_ports[i]) in conf
            (directory / "cluster.conf").write_text(conf)
            nodes.append(NatsServer(data_dir=directory, port=free_port(), jetstream=False, name=f"n{i + 1}",
                                    config_file=directory / "cluster.conf").start())
        rogue = NatsServer(data_dir=tmp_path / "rogue", port=free_port(), jetstream=False, name="rogue",
                           cluster_port=free_port(), routes=[f"nats-route://127.0.0.1:{route_ports[0]}"]).start()
        deadline = time.monotonic() + 20
        while routes(monitor_ports[0]) != {"n2"} and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # the rogue has tried (and retried) to join by now
        joined = routes(monitor_ports[0])
        rogue_log = "".join(p.read_text() for p in (tmp_path / "rogue").glob("*.log"))
    finally:
        for server in [*nodes, *([rogue] if rogue else [])]:
            server.cleanup()
    assert (joined, "Authorization Violation" in rogue_log or "authentication" in rogue_log.lower()) == (
        {"n2"}, True), rogue_log[-2000:]
