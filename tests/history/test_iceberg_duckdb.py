"""Any engine reads the history tables: DuckDB's ``iceberg_scan`` over the trade table returns
exactly the rows the NATS history query API returns (same ids, times, exact decimals, order).

DuckDB's extensions come from PyPI (``duckdb-extension-iceberg``/``-avro``, installed without
dependencies by requirements-nodeps.txt) and are loaded by path: DuckDB cannot download them
here. They are built for DuckDB 1.5.5 only, while the project pins duckdb 2.0.0 (an extension
refuses to load into another version), so this test runs the reference DuckDB 1.5.5 in a
subprocess from a directory of its own, installed once with uv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from marketbus.history.lakehouse import LakehouseSettings, Tables
from services.history_writer.app import HistoryWriter
from services.history_writer.query import make_query, query_events
from services.history_writer.store.base import Selector
from tests.helpers import wait_for

from .common import SEC, T0, trade, unique_symbol, writer_overrides
from .test_writer import _publish

DUCKDB_VERSION = "1.5.5"  # the version of the duckdb-extension-* packages

SCAN = """
import json, sys
sys.path.insert(0, sys.argv[1])
import duckdb
assert duckdb.__version__ == sys.argv[2], duckdb.__version__
con = duckdb.connect()
for ext in sys.argv[3].split(","):
    con.execute(f"LOAD '{ext}'")
rows = con.execute(
    "SELECT id, ts_event_ns, epoch_us(ts_event), price::VARCHAR, size::VARCHAR, side FROM iceberg_scan(?) "
    "WHERE symbol = ? AND ts_event_ns >= ? AND ts_event_ns < ? ORDER BY ts_event_ns, _stream, _seq, _idx",
    [sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7])]).fetchall()
print(json.dumps([list(r) for r in rows]))
"""


@pytest.fixture(scope="session")
def duckdb_reference() -> tuple[str, list[str]]:
    """(directory holding duckdb==DUCKDB_VERSION, paths of its iceberg and avro extensions)."""
    import duckdb_extension_avro
    import duckdb_extension_iceberg

    exts = [str(next(Path(m.__file__).parent.rglob(f"v{DUCKDB_VERSION}/*.duckdb_extension")))
            for m in (duckdb_extension_avro, duckdb_extension_iceberg)]
    target = Path(sys.prefix) / f"duckdb-{DUCKDB_VERSION}"
    if not (target / "duckdb").is_dir():
        uv = Path(sys.prefix) / "bin" / "uv"
        subprocess.run([str(uv), "pip", "install", "--quiet", "--target", str(target), f"duckdb=={DUCKDB_VERSION}"],
                       check=True, timeout=300)
    return str(target), exts


async def test_duckdb_iceberg_scan_returns_what_the_query_api_returns(nc, js, nats_url, tmp_path,
                                                                      duckdb_reference) -> None:
    sym, other = unique_symbol("D"), unique_symbol("O")
    durable = f"d{uuid.uuid4().hex[:8]}"
    writer = HistoryWriter(**writer_overrides(nats_url, "iceberg", str(tmp_path / "h"), None, durable))
    await writer.start()
    try:
        events = [trade(sym, i) for i in range(1500)]
        await _publish(nc, [trade(other, i) for i in range(200)] + events[:500], events[500:])

        async def stored() -> bool:
            tables = await writer.store.read_table(Selector(kind="trade", symbol=sym), 0, 2**63 - 1, columns=["id"])
            return "trade" in tables and tables["trade"].num_rows == 1500

        await wait_for(stored, timeout=20, what="1500 trades stored")
        start, end = T0 + 10 * SEC, T0 + 120 * SEC
        api = [
            e async for e in query_events(nc, make_query(Selector(kind="trade", symbol=sym), start, end, limit=5000))
        ]
        assert len(api) == 1100

        table = Tables(LakehouseSettings.from_env(tmp_path / "h")).get("trade", refresh=True)
        path, exts = duckdb_reference
        out = subprocess.run(
            [sys.executable, "-c", SCAN, path, DUCKDB_VERSION, ",".join(exts), table.metadata_location, sym,
             str(start), str(end)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONNOUSERSITE": "1"})
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)
        assert [r[0] for r in rows] == [e.id for e in api]
        assert [r[1] for r in rows] == [e.ts_event for e in api]
        assert [(Decimal(r[3]), Decimal(r[4]), r[5]) for r in rows] == [(e.price, e.size, e.side) for e in api]
        assert [r[2] for r in rows] == [e.ts_event // 1000 for e in api]  # timestamptz for the engines, µs
    finally:
        await writer.stop()
