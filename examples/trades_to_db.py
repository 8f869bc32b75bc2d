"""Trades into your own database: a durable, idempotent writer to PostgreSQL (asyncpg).

Consumes ``md.trade.>`` through a JetStream durable on stream MD and inserts each trade into the
table ``trades`` of ``TRADES_DB_DSN`` (created if missing). The trade's ``id`` is the primary key
and inserts are ``ON CONFLICT DO NOTHING``: JetStream delivers at least once (a message whose
handler raised, e.g. the database was down, comes again) and the table still holds each trade
once. A batch envelope (backfills, replays) is one transaction.

    NATS_URL=nats://127.0.0.1:4222 TRADES_DB_DSN=postgresql://me@localhost/mydb \
        faststream run examples.trades_to_db:app

Settings (env): ``TRADES_DB_DSN``, ``TRADES_DURABLE`` (``trades_to_db``), ``TRADES_TABLE``
(``trades``), ``TRADES_REPLAY_FROM`` (ISO time: backfill the table from there on first start).
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

import asyncpg
from faststream import FastStream

from marketbus.contracts.market import Trade
from marketbus.faststream import Events, consumer_broker, durable_subscriber
from marketbus.runtime.settings import Settings, load_settings


class TradesDbSettings(Settings, kw_only=True):
    env_prefix: ClassVar[str] = "TRADES_"
    db_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    durable: str = "trades_to_db"
    table: str = "trades"
    replay_from: str = ""


settings = load_settings(TradesDbSettings)
broker = consumer_broker("trades-to-db")
app = FastStream(broker)
TABLE = settings.table  # an identifier from your own configuration, not from the bus

CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id text PRIMARY KEY,
    source text NOT NULL, venue text NOT NULL, symbol text NOT NULL,
    ts_event timestamptz NOT NULL, ts_event_ns bigint NOT NULL,
    price numeric NOT NULL, size numeric NOT NULL, side text NOT NULL, trade_id text
)"""
INSERT = f"""
INSERT INTO {TABLE} (id, source, venue, symbol, ts_event, ts_event_ns, price, size, side, trade_id)
VALUES ($1, $2, $3, $4, to_timestamp($5::double precision / 1e9), $5, $6, $7, $8, $9)
ON CONFLICT (id) DO NOTHING"""


class Database:
    """The connection pool, opened after the broker connects and closed at shutdown."""

    pool: asyncpg.Pool | None = None


db = Database()


@app.on_startup
async def open_database() -> None:
    db.pool = await asyncpg.create_pool(settings.db_dsn, min_size=1, max_size=4)
    async with db.pool.acquire() as conn:
        await conn.execute(CREATE)


@app.on_shutdown
async def close_database() -> None:
    if db.pool is not None:
        await db.pool.close()


@durable_subscriber(broker, "md.trade.>", settings.durable, deliver="new",
                    start_time=datetime.fromisoformat(settings.replay_from) if settings.replay_from else None)
async def on_trades(trades: Events[Trade]) -> None:
    """Raising here (database down) nacks the message: JetStream delivers it again."""
    if not trades:
        return
    assert db.pool is not None, "on_startup opens the pool before the broker starts"
    rows = [(t.id, t.source, t.venue, t.symbol, t.ts_event, t.price, t.size, t.side, t.trade_id) for t in trades]
    async with db.pool.acquire() as conn, conn.transaction():
        await conn.executemany(INSERT, rows)
