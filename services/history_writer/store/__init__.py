"""History stores behind one interface: Apache Iceberg tables (default; embedded SQLite catalog or
PostgreSQL catalog + S3 warehouse) and PostgreSQL rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Cursor, HistoryStore, Selector, WriteResult

if TYPE_CHECKING:
    from ..settings import HistoryWriterSettings

__all__ = ["Cursor", "HistoryStore", "Selector", "WriteResult", "open_store"]


def open_store(settings: HistoryWriterSettings, writer_id: str | None = None) -> HistoryStore:
    """The store the settings choose (not opened yet: ``await store.open()``)."""
    if settings.backend == "postgres":
        from .postgres import PostgresStore

        timescale = {"auto": None, "on": True, "off": False}[settings.timescale]
        return PostgresStore(settings.pg_dsn.get(), table_prefix=settings.pg_table_prefix, timescale=timescale,
                             reader_role=settings.pg_reader_role, reader_password=settings.pg_reader_password.get())
    from marketbus.history.lakehouse import LakehouseSettings

    from .iceberg import AckFloors, IcebergStore

    d = settings.durable  # the intake's durable consumers (consumer.py / app.py)
    floors = AckFloors(settings.connect_options("history_writer-floors"),
                       {"MD": f"{d}_md", "REF": f"{d}_ref", "STATUS": f"{d}_status"})
    return IcebergStore(LakehouseSettings.from_env(settings.history_dir()), writer_id=writer_id,
                        compact_min_files=settings.compact_min_files, snapshot_min_age_s=settings.snapshot_min_age_s,
                        orphan_age_s=settings.orphan_age_s, ack_floors=floors)
