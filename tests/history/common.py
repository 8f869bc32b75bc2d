"""Helpers of the history writer tests."""

from __future__ import annotations

import uuid
from decimal import Decimal

from marketbus.contracts import Trade, event_id

T0 = 1_763_700_000_000_000_000  # 2025-11-21T04:40:00Z
SEC = 1_000_000_000


def unique_symbol(prefix: str = "S") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10].upper()}"


def trade(symbol: str, i: int, source: str = "finx", venue: str = "CB", ts: int | None = None) -> Trade:
    return Trade(
        id=event_id(source, "trade", venue, symbol, i), source=source, venue=venue, symbol=symbol,
        ts_event=ts if ts is not None else T0 + i * SEC // 10, ts_recv=T0 + i * SEC // 10 + 7,
        price=Decimal("100.25") + i, size=Decimal("0.0010"), side="buy" if i % 2 else "sell", trade_id=str(i),
    )


def writer_overrides(
    nats_url: str, backend: str, data_dir: str, pg_dsn: str | None, durable: str, **extra: object
) -> dict:
    out = {
        "nats_url": nats_url, "backend": backend, "data_dir": data_dir, "durable": durable, "http_port": 0,
        "batch_max_wait_s": 0.05, "heartbeat_interval_s": 1.0, "query_queue": durable, "ack_wait_s": 5.0,
        "pg_table_prefix": f"h_{durable}_", "compact_interval_s": 3600.0,
    }
    if pg_dsn:
        out["pg_dsn"] = pg_dsn
    out.update(extra)
    return out
