"""Shared fixtures: a real nats-server per session (free port, JetStream, temp dir), a 3-node
JetStream cluster for tests that ask for one, and PostgreSQL. Every server a fixture starts is
provisioned (`marketbus provision`: streams, buckets, object stores, durable consumers), as
`marketbus up` and compose do before any service starts. Where a Docker engine is reachable
and MARKETBUS_TEST_USE_DOCKER=1, NATS and PostgreSQL come from testcontainers instead."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
import pytest_asyncio

from marketbus.runtime.natsserver import NatsCluster, NatsServer
from marketbus.runtime.provision import provision
from tests.ephemeral_ports import use_ephemeral_http_ports

use_ephemeral_http_ports()  # services default to fixed ports (9101-9108): tests ask for free ones


def provision_server(url: str | list[str], replicas: int = 1, timeout: float = 30.0) -> None:
    """Provision a fresh server (retried while a cluster elects its JetStream meta leader)."""
    import time

    async def once() -> None:
        nc = await nats.connect(url if isinstance(url, list) else url.split(","))
        try:
            await provision(nc.jetstream(), replicas)
        finally:
            await nc.close()

    deadline = time.monotonic() + timeout
    while True:
        try:
            asyncio.run(once())
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _docker_available() -> bool:
    if os.environ.get("MARKETBUS_TEST_USE_DOCKER") != "1":
        return False
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def _nats_container() -> Iterator[str]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    with DockerContainer("nats:2.11").with_command("-js").with_exposed_ports(4222) as container:
        wait_for_logs(container, "Server is ready")
        yield f"nats://{container.get_container_host_ip()}:{container.get_exposed_port(4222)}"


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real JetStream-enabled nats-server shared by the session (never the machine's)."""
    if _docker_available():
        with _nats_container() as url:
            provision_server(url)
            yield url
        return
    server = NatsServer(data_dir=tmp_path_factory.mktemp("nats"), port=0).start()
    try:
        provision_server(server.url)
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def nats_server(tmp_path: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A private nats-server for one test (isolation, or tests that stop/kill the server)."""
    from marketbus.runtime.http import free_port

    server = NatsServer(data_dir=tmp_path / "nats", port=free_port()).start()  # type: ignore[operator]
    try:
        provision_server(server.url)
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def unprovisioned_nats_server(tmp_path: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A private nats-server nobody provisioned: what a client finds on a server that is not
    marketbus's (no streams, no buckets)."""
    from marketbus.runtime.http import free_port

    server = NatsServer(data_dir=tmp_path / "bare-nats", port=free_port()).start()  # type: ignore[operator]
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A 3-node JetStream cluster on this machine."""
    cluster = NatsCluster(size=3, base_dir=tmp_path_factory.mktemp("nats-cluster")).start()
    try:
        provision_server(cluster.urls, replicas=3)
        yield cluster
    finally:
        cluster.cleanup()


@pytest_asyncio.fixture
async def nc(nats_url: str) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(nats_url)
    try:
        yield client
    finally:
        await client.drain()


@pytest_asyncio.fixture
async def js(nc: nats.NATS):
    from marketbus.contracts.streams import ensure_all

    ctx = nc.jetstream()
    await ensure_all(ctx)
    return ctx


def _pg_reachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _per_worker(dsn: str) -> str:
    """Under pytest-xdist every worker gets a database of its own (``<db>_<worker>``), created on
    first use: the PostgreSQL tests of two workers never see each other's tables."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return dsn
    from urllib.parse import urlsplit, urlunsplit

    import psycopg2

    parts = urlsplit(dsn)
    base_db = parts.path.lstrip("/") or "postgres"
    name = f"{base_db}_{worker}"
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """MARKETBUS_TEST_PG_DSN, else the server at 127.0.0.1:5432, else testcontainers, else skip."""
    dsn = os.environ.get("MARKETBUS_TEST_PG_DSN")
    if dsn:
        yield _per_worker(dsn)
        return
    if _pg_reachable("127.0.0.1", 5432):
        yield _per_worker("postgresql://postgres@127.0.0.1:5432/test")
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16") as pg:
            yield pg.get_connection_url().replace("+psycopg2", "")
        return
    pytest.skip("no PostgreSQL: set MARKETBUS_TEST_PG_DSN, run one on 127.0.0.1:5432, or provide Docker")


# The files holding ``whole_system`` tests. Under ``--dist loadfile`` they form ONE work unit (the
# scheduler below): one xdist worker runs them one after the other while the other workers go on
# with the rest of the suite. Spread over several workers, they would only wait on the lock below,
# each blocking a worker that could run other files meanwhile.
WHOLE_SYSTEM_FILES = frozenset({
    "tests/chaos/test_chaos.py",
    "tests/e2e/test_make_run.py",
    "tests/e2e/test_up_lifecycle.py",
    "tests/history/test_kill.py",
    "tests/integration/test_compose_run.py",
    "tests/security/test_system.py",
})
WHOLE_SYSTEM_UNIT = "whole-system tests"


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist (absent under -p no:xdist)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadfile`` with the WHOLE_SYSTEM_FILES as one work unit, handed out first (it is
    the longest unit: it must start at once, not after the other workers ran out of work)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class WholeSystemFirst(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return WHOLE_SYSTEM_UNIT if scope in WHOLE_SYSTEM_FILES else scope

        def _assign_work_unit(self, node: object) -> None:
            if WHOLE_SYSTEM_UNIT in self.workqueue:
                self.workqueue.move_to_end(WHOLE_SYSTEM_UNIT, last=False)
            super()._assign_work_unit(node)

    return WholeSystemFirst(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A ``whole_system`` test may first wait for the others to finish (the lock below): its
    pytest-timeout covers the wait too (each such test has deadlines of its own for its steps).
    Such a test outside WHOLE_SYSTEM_FILES is an error: xdist would run it beside the others."""
    for item in items:
        if item.get_closest_marker("whole_system") is not None:
            item.add_marker(pytest.mark.timeout(900))
            if item.nodeid.split("::", 1)[0] not in WHOLE_SYSTEM_FILES:
                raise pytest.UsageError(f"{item.nodeid} is marked whole_system: add its file to "
                                        "WHOLE_SYSTEM_FILES in tests/conftest.py")


@pytest.fixture(autouse=True)
def _one_whole_system_at_a_time(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests marked ``whole_system`` start ten processes and many ports (sandboxes, export API,
    replay): on a 2-core machine, two at once on different xdist workers starve each other and race
    for free ports. An inter-process lock runs them one after the other; other tests go on."""
    if request.node.get_closest_marker("whole_system") is None:
        yield
        return
    import fcntl
    import tempfile
    from pathlib import Path

    with (Path(tempfile.gettempdir()) / "marketbus-tests-whole-system.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest_asyncio.fixture(autouse=True)
async def _dump_tasks_of_a_stuck_test(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """A test still running 10 s before pytest-timeout stops it prints every asyncio task's stack
    (pytest-timeout shows only threads, and an async test's frames are not on any of them)."""
    import sys

    limit = request.node.get_closest_marker("timeout")
    seconds = float(limit.args[0]) if limit and limit.args else float(request.config.getini("timeout") or 0)
    if seconds <= 20:
        yield
        return

    def dump() -> None:
        print(f"\n--- asyncio tasks of {request.node.nodeid}, still running after {seconds - 10:.0f} s ---",
              file=sys.stderr)
        for task in asyncio.all_tasks():
            print(f"{task!r}", file=sys.stderr)
            coro = task.get_coro()
            while coro is not None:  # the whole chain of awaits, innermost last
                frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
                if frame is not None:
                    print(f"    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}", file=sys.stderr)
                coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
                if coro is not None and not hasattr(coro, "cr_frame") and not hasattr(coro, "gi_frame"):
                    print(f"    awaiting {coro!r}"[:300], file=sys.stderr)
                    break

    handle = asyncio.get_running_loop().call_later(seconds - 10, dump)
    try:
        yield
    finally:
        handle.cancel()
