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


def data_files_read_back(history_dir: str) -> dict[str, int]:
    """Every data file of every history table read with ``pyarrow.parquet.read_table`` and the
    table's own schema (no "incompatible types": one schema per table, whatever the symbol or
    the writer); returns the data files per kind."""
    import pyarrow.parquet as pq

    from marketbus.history.lakehouse import LakehouseSettings, Tables
    from marketbus.history.schema import KINDS

    tables = Tables(LakehouseSettings(history_dir=history_dir))
    counts = {}
    for kind, table in tables.existing(list(KINDS), refresh=True).items():
        schema = table.schema().as_arrow()
        files = [task.file for task in table.scan().plan_files()]
        for file in files:
            with table.io.new_input(file.file_path).open() as f:
                data = pq.read_table(f, schema=schema)
            assert data.schema == schema and data.num_rows == file.record_count, (kind, file.file_path)
        counts[kind] = len(files)
    return counts
