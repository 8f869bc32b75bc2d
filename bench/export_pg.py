"""Export data path from PostgreSQL history vs from the Iceberg tables, same rows, same run.

The same trade table is written through the history writer's two stores (``IcebergStore``,
embedded catalog; ``PostgresStore`` into ``--pg-dsn``), then read back by the export
orchestrator's ``HistorySource`` (``HistoryReader`` / ``PgHistoryReader``) into a CSV.gz
``SplitWriter``, exactly what a job runs without the bus. Prints rows/s of each and the ratio
PostgreSQL / Iceberg (best of two runs each, interleaved).

    .venv/bin/python bench/export_pg.py --pg-dsn postgresql://postgres@127.0.0.1:5432/db [--rows 300000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared"), str(ROOT / "bench")]

from export_orchestrator import T0, store_selector, trade_table  # noqa: E402

from marketbus.history.lakehouse import LakehouseSettings  # noqa: E402
from marketbus.history.pg_reader import PgHistoryReader  # noqa: E402
from marketbus.history.reader import HistoryReader  # noqa: E402
from services.export_orchestrator.history_source import HistorySource  # noqa: E402
from services.export_orchestrator.layouts import layout_for  # noqa: E402
from services.export_orchestrator.writer import SplitWriter  # noqa: E402
from services.history_writer.schema import Decoded  # noqa: E402
from services.history_writer.store.iceberg import IcebergStore  # noqa: E402
from services.history_writer.store.postgres import PostgresStore  # noqa: E402


async def data_path(reader: HistoryReader | PgHistoryReader, work: Path, n: int) -> float:
    src = HistorySource(None, None, reader)
    w = SplitWriter(work, "csv.gz", "trade-bench", "trade", None, 10**9, 1 << 40,
                    layout=layout_for("marketbus", None, "trade", "XCHG"))
    rows = 0
    t = time.perf_counter()
    async for _, batch in src.batches(store_selector(), T0, T0 + 10**18):
        await asyncio.to_thread(w.write, batch)
        rows += batch.num_rows
    await asyncio.to_thread(w.finish)
    dt = time.perf_counter() - t
    assert rows == n, rows
    return n / dt


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg-dsn", required=True)
    ap.add_argument("--rows", type=int, default=300_000)
    args = ap.parse_args()
    n = args.rows
    table = trade_table(n)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ice = IcebergStore(LakehouseSettings(history_dir=str(tmp / "history")))
        await ice.open()
        await ice.write("MD", Decoded(tables={"trade": [table]}, bad=[], events=n))
        pg = PostgresStore(args.pg_dsn, table_prefix=f"bench_{uuid.uuid4().hex[:8]}_", timescale=False)
        await pg.open()
        try:
            await pg.write("MD", Decoded(tables={"trade": [table]}, bad=[], events=n))
            reader = PgHistoryReader(args.pg_dsn, table_prefix=pg.prefix)
            await reader.open()
            ice_rates, pg_rates = [], []
            for i in range(2):
                ice_rates.append(await data_path(ice.reader, tmp / f"ice{i}", n))
                pg_rates.append(await data_path(reader, tmp / f"pg{i}", n))
            await reader.close()
        finally:
            await pg.drop_all()
            await pg.close()
            await ice.close()
    ice_best, pg_best = max(ice_rates), max(pg_rates)
    print(f"| history -> CSV.gz data path ({n:,} trade rows) | rows/s | ratio to Iceberg, same run |")
    print("|---|---|---|")
    print(f"| Iceberg tables (HistoryReader), reference | {ice_best:,.0f} | 1.00x |")
    print(f"| PostgreSQL (PgHistoryReader) | {pg_best:,.0f} | {pg_best / ice_best:.2f}x |")


if __name__ == "__main__":
    asyncio.run(main())
