"""History readers get a read-only PostgreSQL role: the history writer creates it with its tables
(when a reader password is configured); as that role SELECT works and INSERT, DELETE, DROP and
CREATE are refused; the export orchestrator exports history from PostgreSQL through it."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from marketbus.contracts.jobs import ExportRequest, StreamSelector
from marketbus.runtime.settings import Secret
from services.history_writer.app import HistoryWriter
from services.history_writer.store.postgres import PostgresStore

from .conftest import T0, Harness, S, download_all, make_trades, publish, read_artifact, table_rows, trade_rows


def as_role(dsn: str, role: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))


@pytest.fixture
async def reader(pg_dsn: str) -> AsyncIterator[tuple[str, str]]:
    """A reader role name of this test and its password; dropped afterwards (roles are per server)."""
    role, password = f"mb_reader_{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(16)
    yield role, password
    con = await asyncpg.connect(pg_dsn)
    try:
        if await con.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            await con.execute(f'DROP OWNED BY "{role}"')  # its grants in this database
            await con.execute(f'DROP ROLE "{role}"')
    finally:
        await con.close()


async def test_the_reader_role_may_select_and_nothing_else(pg_dsn: str, reader: tuple[str, str]) -> None:
    role, password = reader
    prefix = f"hr_{uuid.uuid4().hex[:8]}_"
    store = PostgresStore(pg_dsn, table_prefix=prefix, reader_role=role, reader_password=password)
    await store.open()
    await store.open()  # a restart grants again: harmless
    await store.close()
    writer = await asyncpg.connect(pg_dsn)
    con = await asyncpg.connect(as_role(pg_dsn, role, password))
    try:
        await writer.execute(f'INSERT INTO "{prefix}progress" (stream, high_seq) VALUES ($1, 7)', "MD")
        assert await con.fetchval(f'SELECT high_seq FROM "{prefix}progress"') == 7
        assert await con.fetchval(f'SELECT count(*) FROM "{prefix}trade"') == 0
        assert await con.fetchval("SELECT current_user") == role
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):  # its sessions start read-only
            await con.execute(f'DELETE FROM "{prefix}progress"')
        await con.execute("SET default_transaction_read_only = off")  # and without that, no rights
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await con.execute(f'INSERT INTO "{prefix}progress" (stream, high_seq) VALUES ($1, 8)', "X")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await con.execute(f'DELETE FROM "{prefix}progress"')
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await con.execute(f'UPDATE "{prefix}progress" SET high_seq = 0')
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await con.execute(f'DROP TABLE "{prefix}trade"')
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await con.execute(f'CREATE TABLE "{prefix}mine" (x int)')
        assert await writer.fetchval(f'SELECT high_seq FROM "{prefix}progress"') == 7  # all still there
    finally:
        await con.close()
        await writer.close()


async def test_no_reader_password_no_role(pg_dsn: str) -> None:
    role = f"mb_reader_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(pg_dsn, table_prefix=f"hn_{uuid.uuid4().hex[:8]}_", reader_role=role)
    await store.open()
    await store.close()
    con = await asyncpg.connect(pg_dsn)
    try:
        assert await con.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role) is None
    finally:
        await con.close()


async def test_the_export_orchestrator_exports_as_the_reader_role(harness: Harness, pg_dsn: str,
                                                                  reader: tuple[str, str]) -> None:
    role, password = reader
    prefix = f"hx_{uuid.uuid4().hex[:8]}_"
    harness.writer = HistoryWriter(nats_url=harness.url, backend="postgres", pg_dsn=Secret(pg_dsn),
                                   pg_table_prefix=prefix, pg_reader_role=role, pg_reader_password=Secret(password),
                                   data_dir=str(harness.tmp / "history"), http_port=0, batch_max_wait_s=0.05,
                                   heartbeat_interval_s=60.0)
    await harness.writer.start()
    orch = await harness.start_orchestrator(history_backend="postgres",
                                            history_pg_dsn=Secret(as_role(pg_dsn, role, password)),
                                            history_pg_table_prefix=prefix)
    trades = make_trades("pgrole", "XCHG", "BTC-USD", [T0 + i * S // 10 for i in range(300)])
    assert harness.nc is not None and orch.api_url is not None
    await publish(harness.nc, trades)
    await harness.wait_stored("trade.pgrole.*.*", 300)
    req = ExportRequest(idempotency_key=str(uuid.uuid4()), selector=StreamSelector(kind="trade", source="pgrole"),
                        start_ns=T0, end_ns=T0 + 100 * S, format="csv.gz", fill_gaps=False)
    done = await harness.wait_state((await harness.create(req)).job_id)
    assert done.state == "succeeded", done.reason
    _, files = await download_all(orch.api_url, done.job_id)
    assert table_rows([read_artifact(a.filename, files[a.filename]) for a in done.artifacts]) == trade_rows(trades)
