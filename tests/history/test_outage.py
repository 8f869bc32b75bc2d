"""The writer rides out PostgreSQL outages: started while PostgreSQL is down it waits (one log line
per attempt, no traceback) instead of exiting; PostgreSQL stopped mid-run makes /healthz say 503
with the reason while the batch is kept (+WPI, not redelivered), and stored once PostgreSQL is
back. Nothing lost, nothing twice. A private PostgreSQL cluster is started and stopped (never the
machine's shared server)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from marketbus.runtime.natsserver import NatsServer
from marketbus.runtime.publisher import JetStreamPublisher
from services.history_writer.app import HistoryWriter
from services.history_writer.store.base import Selector
from tests.helpers import wait_for

from .common import trade, unique_symbol, writer_overrides
from .pgcluster import PrivatePostgres


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """A private nats-server per test: the held messages and consumers of this test are its own."""
    return nats_server.url


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    try:
        pg = PrivatePostgres()
    except FileNotFoundError as exc:
        pytest.skip(f"cannot run a private PostgreSQL here: {exc}")
    try:
        yield pg
    finally:
        pg.cleanup()


async def _publish(nc, events) -> None:
    pub = await JetStreamPublisher(nc).start()
    for e in events:
        await pub.publish_event(e)
    await pub.flush()
    await pub.close()


async def _health(writer: HistoryWriter) -> tuple[int, dict]:
    async with httpx.AsyncClient(timeout=2.0) as http:
        response = await http.get(f"{writer.http_url}/healthz")
    return response.status_code, response.json()


async def _unhealthy(writer: HistoryWriter) -> bool:
    status, body = await _health(writer)
    return status == 503 and "store" in body.get("unhealthy", "")


async def _healthy(writer: HistoryWriter) -> bool:
    return (await _health(writer))[0] == 200


@pytest.mark.timeout(120)
async def test_postgres_down_at_start_and_mid_run_loses_nothing(nc, js, nats_url, tmp_path, private_pg, caplog) -> None:
    caplog.set_level(logging.INFO, logger="marketbus.history_writer")
    sym = unique_symbol("O")
    durable = f"o{uuid.uuid4().hex[:8]}"
    first = [trade(sym, i) for i in range(200)]
    second = [trade(sym, i) for i in range(200, 500)]
    # a short ack wait: had the kept batch not been kept alive with +WPI, it would be redelivered
    writer = HistoryWriter(**writer_overrides(nats_url, "postgres", str(tmp_path / "h"), private_pg.dsn, durable,
                                              ack_wait_s=1.0, store_retry_max_s=1.0))
    await writer.start()  # PostgreSQL is not running: the start does not fail
    try:
        await wait_for(lambda: _unhealthy(writer), 10, what="/healthz 503 while PostgreSQL is down")
        await _publish(nc, first)
        await asyncio.sleep(2.0)
        attempts = [r for r in caplog.records
                    if r.name == "marketbus.history_writer" and "cannot open the postgres store" in r.getMessage()]
        assert len(attempts) >= 3 and all(r.exc_info is None for r in attempts)  # one line each, no traceback

        await asyncio.to_thread(private_pg.start)
        await wait_for(lambda: writer.intakes, 15, what="the intakes started once PostgreSQL is up")
        await wait_for(lambda: _stored(writer, sym, len(first)), 15, what="the first events stored")
        await wait_for(lambda: _healthy(writer), 10, what="/healthz 200 again")

        await asyncio.to_thread(private_pg.stop)  # mid-run
        await _publish(nc, second)
        await wait_for(lambda: _unhealthy(writer), 15, what="/healthz 503 while the store fails")
        await asyncio.sleep(2.5)  # over twice the ack wait: the kept batch is not redelivered
        info = await js.consumer_info("MD", f"{durable}_md")
        assert info.num_ack_pending > 0 and info.num_redelivered == 0, info

        await asyncio.to_thread(private_pg.start)
        await wait_for(lambda: _stored(writer, sym, len(first) + len(second)), 20,
                       what="the kept batch stored once PostgreSQL is back")
        await wait_for(lambda: _healthy(writer), 10, what="/healthz 200 again")
        ids = await _ids(writer, sym)
        assert sorted(ids) == sorted(e.id for e in first + second)  # nothing lost, nothing twice
        info = await js.consumer_info("MD", f"{durable}_md")
        assert info.num_ack_pending == 0
        assert not [r for r in caplog.records if r.exc_info is not None and r.name.startswith("marketbus.history")]
    finally:
        await writer.stop()


async def _ids(writer: HistoryWriter, sym: str) -> list[str]:
    try:
        tables = await writer.store.read_table(Selector(kind="trade", symbol=sym), 0, 2**63 - 1, columns=["id"])
    except Exception:
        return []
    return tables["trade"].column("id").to_pylist() if "trade" in tables else []


async def _stored(writer: HistoryWriter, sym: str, n: int) -> bool:
    return len(await _ids(writer, sym)) == n


async def test_a_table_dropped_under_the_writer_delays_but_loses_nothing(nc, js, nats_url, tmp_path, pg_dsn) -> None:
    """Not an outage, not bad data (the table is gone): the batch goes back with the back-off
    (not split message by message, not dead-lettered), /healthz says why, and it is stored once
    the table is back."""
    from services.history_writer.store.postgres import PostgresStore

    sym = unique_symbol("T")
    durable = f"t{uuid.uuid4().hex[:8]}"
    prefix = f"h_{durable}_"
    first = [trade(sym, i) for i in range(50)]
    second = [trade(sym, i) for i in range(50, 150)]
    writer = HistoryWriter(**writer_overrides(nats_url, "postgres", str(tmp_path / "h"), pg_dsn, durable))
    await writer.start()
    letters: list[Any] = []

    async def on_letter(msg: Any) -> None:
        letters.append(msg)

    sub = await nc.subscribe("dlq.history_writer.>", cb=on_letter)
    try:
        await _publish(nc, first)
        await wait_for(lambda: _stored(writer, sym, len(first)), 15, what="the first events stored")
        store = PostgresStore(pg_dsn, table_prefix=prefix)
        await store.open()
        await store.drop_all()  # under the running writer
        await _publish(nc, second)
        await wait_for(lambda: _unhealthy(writer), 15, what="/healthz 503 with the store error")
        await asyncio.sleep(1.0)
        assert writer.intakes[0].retried > 0 and not letters
        await store.open()  # the tables are back
        await store.close()
        await wait_for(lambda: _stored(writer, sym, len(second)), 20, what="the batch stored once the table is back")
        await wait_for(lambda: _healthy(writer), 10, what="/healthz 200 again")
        assert not letters
    finally:
        await sub.unsubscribe()
        if writer.store.backend == "postgres":
            await writer.store.drop_all()  # type: ignore[attr-defined]
        await writer.stop()
