"""PostgreSQL store against raw asyncpg COPY of the same rows (issue #16: ratio >= 0.5).

The history writer's ``PostgresStore.write`` on flushes of trade rows (batch envelopes decoded
by the writer's own ``decode_messages``, as a flush hands them over), measured alone: NATS and
the message decode are not in it (their rates are printed apart). References, same run, same rows:

- raw ``asyncpg.copy_records_to_table`` of prepared records (Python tuples, Decimals) into a table
  of the same shape: same columns, primary key and indexes (``LIKE ... INCLUDING ALL``): what any
  client pays to load these rows into that table;
- the same raw COPY into a table without the key and indexes (``LIKE`` alone), which is what the
  older figure in ``bench/history_writer.py`` compares with: the difference is PostgreSQL's own
  index maintenance, not the store's.

Rounds alternate store and references; the best round of each is reported, and the ratio of each
pair. Run: ``.venv/bin/python bench/postgres_store.py [--rows 200000] [--flush 20000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared")]

from marketbus.contracts import Trade, codec, event_id, subjects  # noqa: E402
from marketbus.history.schema import Message, decode_messages  # noqa: E402
from services.history_writer.store.postgres import PostgresStore  # noqa: E402

DAY0 = 1_764_547_200 * 10**9


def trades(n: int) -> list[Trade]:
    return [Trade(id=event_id("bench", "trade", "PGSYM", i), source="bench", venue="BENCH", symbol="PGSYM",
                  ts_event=DAY0 + i * 40_000_000, ts_recv=DAY0 + i * 40_000_000 + 5000,
                  price=Decimal(64000) + Decimal(i % 5000) / 100, size=Decimal(i % 977 + 1) / 1000,
                  side="buy" if i % 2 else "sell", trade_id=str(i)) for i in range(n)]


def messages(events: list[Trade], per_batch: int) -> list[Message]:
    out = []
    for seq, i in enumerate(range(0, len(events), per_batch), start=1):
        batch = codec.make_batch(events[i:i + per_batch])
        out.append(Message(stream="MD", seq=seq, subject=subjects.for_event(events[i]), data=codec.encode(batch),
                           type="batch"))
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--flush", type=int, default=20_000, help="rows per store.write (a writer flush)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg-dsn", default=os.environ.get("MARKETBUS_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"))
    args = ap.parse_args()
    import asyncpg

    try:
        con = await asyncpg.connect(args.pg_dsn, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        print(f"(PostgreSQL unreachable, skipped: {exc!r})", file=sys.stderr)
        return
    events = trades(args.rows)
    msgs = messages(events, 2000)
    per_flush = max(1, args.flush // 2000)
    t0 = time.perf_counter()
    flushes = [decode_messages(msgs[i:i + per_flush], "MD") for i in range(0, len(msgs), per_flush)]
    decode_rate = args.rows / (time.perf_counter() - t0)
    prefix = f"pgbench{os.getpid()}_"
    store = PostgresStore(args.pg_dsn, table_prefix=prefix)
    await store.open()
    cols = [c for c, _ in store._columns("trade")]
    # the same rows as the store writes them, as prepared records (what copy_records_to_table takes)
    records = []
    for d in flushes:
        for table in d.tables["trade"]:
            data = [table.column(c).to_pylist() for c in cols]
            records += [tuple(Decimal(v) if cols[k] in ("price", "size") and v is not None else v
                              for k, v in enumerate(r)) for r in zip(*data)]
    assert len(records) == args.rows, (len(records), args.rows)
    chunks = [records[i:i + args.flush] for i in range(0, len(records), args.flush)]
    store_rates: list[float] = []
    same_rates: list[float] = []
    bare_rates: list[float] = []
    client_cpu: dict[str, float] = {"store": 0.0, "same": 0.0, "bare": 0.0}  # this process's CPU seconds
    try:
        for _ in range(args.rounds):
            await con.execute(f'TRUNCATE "{prefix}trade", "{prefix}progress"')
            t0, c0 = time.perf_counter(), time.process_time()
            for d in flushes:
                await store.write("MD", d)
            store_rates.append(args.rows / (time.perf_counter() - t0))
            client_cpu["store"] += time.process_time() - c0
            count = await con.fetchval(f'SELECT count(*) FROM "{prefix}trade"')
            assert count == args.rows, count
            for name, like, rates in (("same", "INCLUDING ALL", same_rates), ("bare", "", bare_rates)):
                await con.execute(f'DROP TABLE IF EXISTS "{prefix}raw_{name}"')
                await con.execute(f'CREATE TABLE "{prefix}raw_{name}" (LIKE "{prefix}trade" {like})')
                t0, c0 = time.perf_counter(), time.process_time()
                for chunk in chunks:
                    async with con.transaction():
                        await con.copy_records_to_table(f"{prefix}raw_{name}", records=chunk, columns=cols)
                rates.append(args.rows / (time.perf_counter() - t0))
                client_cpu[name] += time.process_time() - c0
    finally:
        await store.drop_all()
        for name in ("same", "bare"):
            await con.execute(f'DROP TABLE IF EXISTS "{prefix}raw_{name}"')
        await store.close()
        await con.close()
    pairs = [s / r for s, r in zip(store_rates, same_rates)]
    print(
        "| figure | measured (best round) | target | reference (same run, best round) | ratio (best/best; per round "
        "min / median / max) |"
    )
    print("|---|---|---|---|---|")
    print(f"| PostgreSQL store.write, {args.rows:,} trade rows in flushes of {args.flush:,} (COPY csv built by Arrow) "
          f"| {max(store_rates):,.0f} rows/s | >= 0.5 of raw COPY | raw asyncpg COPY of the same records into a table "
          f"with the same key and indexes: {max(same_rates):,.0f} rows/s | {max(store_rates) / max(same_rates):.2f}; "
          f"{min(pairs):.2f} / {statistics.median(pairs):.2f} / {max(pairs):.2f} |")
    print(f"| the same store figure | {max(store_rates):,.0f} rows/s | - | raw asyncpg COPY into a table without key "
          f"and indexes: {max(bare_rates):,.0f} rows/s | {max(store_rates) / max(bare_rates):.2f} |")
    per_row = {k: v / (args.rows * args.rounds) * 1e6 for k, v in client_cpu.items()}
    print(f"| client CPU time a row (this process; PostgreSQL's own CPU not in it): store.write | "
          f"{per_row['store']:.2f} µs | - | raw COPY of prepared records {per_row['same']:.2f} µs (same-key table), "
          f"{per_row['bare']:.2f} µs (bare table) | {per_row['same'] / per_row['store']:.2f} (raw / store: >1 means "
          f"the store costs the client less) |")
    print(f"| load average at the end | {' '.join(f'{x:.1f}' for x in os.getloadavg())} | | | |")
    print(f"| writer decode of the same batch messages (decode_messages, before the store) | {decode_rate:,.0f} rows/s "
          "| - | - | - |")


if __name__ == "__main__":
    asyncio.run(main())
