"""Exactly once under kill -9: the writer process (``python -m services.history_writer``) is
SIGKILLed again and again while a publisher runs; afterwards the stored ids are exactly the
published ids (no loss, no duplicate), on both backends (Iceberg tables, embedded configuration,
and PostgreSQL; two writers sharing the durable consumer: test_iceberg_kill.py). With the default ack wait (no
shortened setting), everything the last killed writer held is stored by its successor within
10 s of the kill.

Start-up is not what is measured: each writer is killed only once it consumes (``/healthz``),
a little while into its writes. On a host at load 16-24 the imports alone take 30 s of wall
time, so the waits for it are long (``STARTUP_S``); the 10 s bound starts at the last kill,
when the successor is already consuming."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from marketbus.history.lakehouse import LakehouseSettings
from marketbus.runtime.http import free_port
from marketbus.runtime.publisher import JetStreamPublisher
from services.history_writer.store.base import Selector
from services.history_writer.store.iceberg import IcebergStore
from services.history_writer.store.postgres import PostgresStore
from tests.helpers import wait_for

from .common import trade, unique_symbol

ROOT = Path(__file__).resolve().parents[2]
STARTUP_S = 240.0  # a writer's start-up: ~1 s on a quiet host, 30 s and more at load 16-24


def _spawn(env: dict[str, str], log: Path, http_port: int = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.history_writer"], cwd=ROOT,
        env={**env, "MARKETBUS_HISTORY_WRITER_HTTP_PORT": str(http_port)},
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )


async def _consuming(port: int) -> bool:
    """The writer on ``port`` answers /healthz and its MD intake runs."""
    try:
        async with httpx.AsyncClient(timeout=1.0) as http:
            response = await http.get(f"http://127.0.0.1:{port}/healthz")
        return response.status_code == 200 and "MD" in response.json().get("streams", {})
    except httpx.HTTPError:
        return False


async def wait_consuming(port: int, what: str) -> None:
    """Until the writer on ``port`` consumes, for as long as a start-up takes on a loaded host."""
    await wait_for(lambda: _consuming(port), STARTUP_S, interval=0.2, what=what)


@pytest.fixture
def nats_url(nats_server: Any) -> str:
    """A private nats-server: the writer's new durable reads MD from its start, and the session's
    shared server holds every earlier test's messages (thousands, hostile ones too), which would be
    part of what the 10 s bound measures."""
    return nats_server.url


# whole_system: one heavy test at a time across the xdist workers; it measures the 10 s bound of
# issue #12, which a host running a whole system beside it at load 15+ cannot hold
@pytest.mark.whole_system
@pytest.mark.timeout(1200)  # against a hang: six writer start-ups of up to STARTUP_S on a loaded host
@pytest.mark.parametrize("backend", ["iceberg", "postgres"])
async def test_sigkill_loop_loses_nothing_and_duplicates_nothing(nc, js, nats_url, tmp_path, backend, request,
                                                                 record_property) -> None:
    dsn = request.getfixturevalue("pg_dsn") if backend == "postgres" else None
    sym = unique_symbol("K")
    durable = f"k{uuid.uuid4().hex[:8]}"
    prefix = f"h_{durable}_"
    data_dir = tmp_path / "history"
    env = dict(os.environ, **{
        "MARKETBUS_HISTORY_WRITER_NATS_URL": nats_url,
        "MARKETBUS_HISTORY_WRITER_BACKEND": backend,
        "MARKETBUS_HISTORY_WRITER_DATA_DIR": str(data_dir),
        "MARKETBUS_HISTORY_WRITER_DURABLE": durable,
        "MARKETBUS_HISTORY_WRITER_QUERY_QUEUE": durable,
        "MARKETBUS_HISTORY_WRITER_PG_TABLE_PREFIX": prefix,
        "MARKETBUS_HISTORY_WRITER_BATCH_MAX_WAIT_S": "0.03",
        "MARKETBUS_HISTORY_WRITER_BATCH_MAX_MSGS": "700",
        "MARKETBUS_HISTORY_WRITER_PULL_BATCH": "500",
        "MARKETBUS_HISTORY_WRITER_COMPACT_INTERVAL_S": "1",
        "MARKETBUS_HISTORY_WRITER_COMPACT_MIN_FILES": "4",
        # hold each batch's acks 0.2 s after its write: most kills land between write and ack
        "MARKETBUS_HISTORY_WRITER_DEBUG_ACK_DELAY_S": "0.2",
        "MARKETBUS_HISTORY_WRITER_LOG_LEVEL": "WARNING",
    })
    if dsn:
        env["MARKETBUS_HISTORY_WRITER_PG_DSN"] = dsn
    store: IcebergStore | PostgresStore
    if backend == "iceberg":  # reads the tables through the embedded catalog, as any reader does
        store = IcebergStore(LakehouseSettings.from_env(data_dir))
    else:
        assert dsn is not None
        store = PostgresStore(dsn, table_prefix=prefix)
    await store.open()  # creates the tables up front (PG) so the check below can read at any time

    total = 12_000
    tail = 1_500  # published right before the last kill: that writer dies holding some of them
    events = [trade(sym, i) for i in range(total)]
    rng = random.Random(7)
    log = tmp_path / "writer.log"

    async def publish() -> None:
        pub = await JetStreamPublisher(nc).start()
        i = 0
        while i < total - tail:
            if rng.random() < 0.3:  # a batch envelope now and then
                n = rng.randint(50, 400)
                await pub.publish_batch(events[i:min(i + n, total - tail)])
            else:
                n = rng.randint(50, 300)
                for e in events[i:min(i + n, total - tail)]:
                    await pub.publish_event(e)
            i += n
            await asyncio.sleep(0.02)
        await pub.flush()
        await pub.close()

    publisher = asyncio.create_task(publish())
    kills = 0
    proc: subprocess.Popen[bytes] | None = None
    second: subprocess.Popen[bytes] | None = None
    try:
        while kills < 5:
            port = free_port()
            proc = _spawn(env, log, port)
            if kills == 4:
                # the last kill: this writer and a second one run (start-up time is not what is
                # measured), the tail is published, and this one dies holding its share of it
                await publisher
                second_port = free_port()
                second = _spawn(env, log, second_port)
                await wait_consuming(port, f"the last writer consuming (log: {log})")
                await wait_consuming(second_port, f"the second writer consuming (log: {log})")

                async def caught_up() -> bool:  # what the earlier writers left is stored and acked
                    info = await js.consumer_info("MD", f"{durable}_md")
                    return info.num_pending == 0 and info.num_ack_pending == 0

                # on a loaded host the backlog takes a while: the 10 s bound is about what the
                # last writer holds of the tail, not about a backlog it had not worked through
                await wait_for(caught_up, STARTUP_S, interval=0.2, what=f"the backlog stored (log: {log})")
                pub = await JetStreamPublisher(nc).start()
                for e in events[total - tail:]:
                    await pub.publish_event(e)
                await pub.flush()
                await pub.close()
                await asyncio.sleep(0.1)
            else:
                # killed once it consumes, a little while into its writes (batches of 700 acked
                # 0.2 s after their write): most kills land mid-write or between write and ack
                await wait_consuming(port, f"writer {kills + 1} consuming (log: {log})")
                await asyncio.sleep(rng.uniform(0.2, 1.4))
            proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            await asyncio.to_thread(proc.wait)
            kills += 1
        info = await js.consumer_info("MD", f"{durable}_md")
        held = info.num_ack_pending
        assert held > 0, "the last writer held nothing when it was killed: the timing below would prove nothing"
        proc = second  # the second writer runs to the end

        async def stored() -> int:
            tables = await store.read_table(Selector(kind="trade", symbol=sym), 0, 2**63 - 1, columns=["id"])
            return tables["trade"].num_rows if "trade" in tables else 0

        async def settled() -> bool:
            info = await js.consumer_info("MD", f"{durable}_md")
            return info.num_ack_pending == 0 and info.num_pending == 0 and await _at_least(stored, total)

        await wait_for(settled, timeout=40, interval=0.2,
                       what=f"{total} trades stored and acked after {kills} kills (log: {log})")
        visible_after = time.monotonic() - killed_at
        record_property("held_messages", held)
        record_property("kill_to_stored_s", round(visible_after, 2))
        # the successor starts (~1-2 s); the dead writer's messages come back after the ack wait (5 s)
        assert visible_after < 10.0, (f"the {held} messages the killed writer held were stored {visible_after:.1f} s "
                                      f"after the kill (log: {log})")
        await asyncio.sleep(0.5)  # anything extra (a duplicate) would land now
        ids = (await store.read_table(Selector(kind="trade", symbol=sym), 0, 2**63 - 1, columns=["id"]))["trade"]
        ids = ids.column("id").to_pylist()
        assert len(ids) == total, f"{len(ids) - len(set(ids))} duplicates"
        assert set(ids) == {e.id for e in events}
    finally:
        publisher.cancel()
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), 10)
            except TimeoutError:
                proc.kill()
        if isinstance(store, PostgresStore):
            await store.drop_all()
        await store.close()


async def _at_least(fn, n: int) -> bool:
    return await fn() >= n
