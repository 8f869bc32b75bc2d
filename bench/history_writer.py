"""History writer benchmarks (one run, < 60 s): prints markdown table rows.

- embedded store (Iceberg tables, SQLite catalog, local warehouse) from single-event messages (10 and 10,000
  symbols), and from batch envelopes; reference: the raw nats-py pull rate of the same messages
  (callback subscription, big pull batches, no processing) and a raw pyarrow Parquet write of the
  same rows;
- PostgreSQL (asyncpg COPY) from batch envelopes; reference: a raw asyncpg COPY of the same rows;
- a query of 1M trades of one symbol and day through the store read API (Arrow);
  reference: pyarrow reading the same files without ordering.

Run: ``.venv/bin/python bench/history_writer.py [--pg-dsn DSN] [--singles N] [--batched N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared")]

import nats  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from nats.js.api import AckPolicy, ConsumerConfig  # noqa: E402

from marketbus.contracts import Trade, event_id  # noqa: E402
from marketbus.contracts.streams import ensure_all  # noqa: E402
from marketbus.runtime.http import free_port  # noqa: E402
from marketbus.runtime.natsserver import NatsServer  # noqa: E402
from marketbus.runtime.publisher import JetStreamPublisher  # noqa: E402

DAY0 = 1_763_683_200_000_000_000  # 2025-11-21T00:00:00Z
rows_out: list[str] = []


T_START = time.perf_counter()


def phase(name: str) -> None:
    print(f"  [{time.perf_counter() - T_START:5.1f}s] {name}", file=sys.stderr, flush=True)


def row(figure: str, value: str, target: str, reference: str, ratio: str) -> None:
    line = f"| {figure} | {value} | {target} | {reference} | {ratio} |"
    rows_out.append(line)
    print(line, flush=True)


PROFILE: Any = None  # cProfile.Profile of the batch figure's writer (--profile)
SERVER_PID = 0  # the nats-server's process: its CPU time is read from /proc (CPU figures on a loaded host)


def server_cpu() -> float:
    """CPU seconds (user + system) the nats-server process used so far (0 where /proc is not there)."""
    try:
        fields = Path(f"/proc/{SERVER_PID}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class Cpu:
    """Wall and CPU (this process, the nats-server) of a span, per event: on a loaded host the CPU
    per event of the writer against that of the raw pull says what wall rates cannot."""

    def __init__(self) -> None:
        self.wall, self.proc, self.server = time.perf_counter(), time.process_time(), server_cpu()

    def per_event(self, events: int) -> tuple[float, float, float]:
        """(wall s, µs of this process per event, µs of the server per event)."""
        return (time.perf_counter() - self.wall, (time.process_time() - self.proc) / events * 1e6,
                (server_cpu() - self.server) / events * 1e6)


def trades(n: int, symbol: str, offset: int = 0, spacing_ns: int = 40_000_000) -> list[Trade]:
    return [
        Trade(id=event_id("bench", "trade", symbol, i + offset), source="bench", venue="X", symbol=symbol,
              ts_event=DAY0 + (i + offset) * spacing_ns, ts_recv=DAY0 + (i + offset) * spacing_ns + 1000,
              price=Decimal("100.25"), size=Decimal("0.5"), side="buy", trade_id=str(i + offset))
        for i in range(n)
    ]


async def publish(url: str, events: list[Trade], batch: int | None) -> None:
    nc = await nats.connect(url)
    pub = await JetStreamPublisher(nc, max_inflight=64 if batch else 20_000).start()
    if batch:
        for i in range(0, len(events), batch):
            await pub.publish_batch(events[i:i + batch])
    else:
        for e in events:
            await pub.publish_event(e)
    await pub.flush(timeout=120)
    await pub.close()
    await nc.close()


async def raw_pull_rate(url: str, count: int, cpu: list[tuple[float, float]] | None = None) -> float:
    """Messages/s of a raw nats-py pull of the stream's messages: pull requests exactly as the
    writer sends them (``pull_batch`` 10,000 messages, ``pull_max_bytes`` 8 MB, two outstanding), a
    callback subscription, no processing, AckNone. ``cpu``: gets (client, server) CPU µs per message."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    name = f"raw{time.time_ns() % 10**9}"
    await js.add_consumer("MD", ConsumerConfig(durable_name=name, ack_policy=AckPolicy.NONE, max_waiting=512))
    done = asyncio.Event()
    got = 0
    reqs: list[list[int]] = []  # outstanding pull requests [msgs left], at most 2 (double buffering)
    wake = asyncio.Event()
    inbox = nc.new_inbox()

    async def cb(msg):
        nonlocal got
        if not msg.reply:  # status: request ended (408 expired / 409 max bytes)
            if msg.headers and msg.headers.get("Status") in ("408", "409") and reqs:
                reqs.pop(0)
                wake.set()
            return
        got += 1
        if reqs:
            reqs[0][0] -= 1
            if reqs[0][0] <= 0:
                reqs.pop(0)
                wake.set()
        if got >= count:
            done.set()

    sub = await nc.subscribe(inbox, cb=cb, pending_msgs_limit=-1, pending_bytes_limit=-1)
    api = f"$JS.API.CONSUMER.MSG.NEXT.MD.{name}"
    req = json.dumps({"batch": 10_000, "max_bytes": 8 << 20, "expires": 2_000_000_000}).encode()
    span = Cpu()
    t0 = time.perf_counter()

    async def pump() -> None:
        while not done.is_set():
            while len(reqs) < 2:
                await nc.publish(api, req, reply=inbox)
                reqs.append([10_000])
            wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), 2.5)
            if not wake.is_set():
                reqs.clear()

    task = asyncio.create_task(pump())
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(span.per_event(count)[1:])
    task.cancel()
    await sub.unsubscribe()
    await js.delete_consumer("MD", name)
    await nc.close()
    return count / elapsed


async def run_writer(
    url: str, backend: str, data_dir: Path, expected_rows: int, dsn: str | None, prefix: str
) -> tuple[float, object]:
    from services.history_writer.app import HistoryWriter

    over = dict(
        nats_url=url,
        backend=backend,
        data_dir=str(data_dir),
        durable=f"bench{time.time_ns() % 10**9}",
        http_port=0,
        pull_batch=10_000,
        batch_max_msgs=20_000,
        batch_max_wait_s=0.25,
        compact_interval_s=3600.0,
        query_queue=f"bench{os.getpid()}",
        pg_table_prefix=prefix,
        log_level="WARNING",
    )
    if dsn:
        over["pg_dsn"] = dsn
    if backend == "postgres":
        from services.history_writer.store.postgres import PostgresStore

        pgs = PostgresStore(dsn, table_prefix=prefix)  # type: ignore[arg-type]
        await pgs.open()
        await pgs.drop_all()
        await pgs.close()
    writer = HistoryWriter(**over)
    await writer.start()
    try:
        t0 = time.perf_counter()
        cpu0 = time.process_time()  # (start-up excluded: warm-up, catalog, consumers)
        server0 = server_cpu()
        times0 = os.times()
        import resource

        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        if PROFILE is not None:
            PROFILE.enable()
        md = writer.intakes[0]
        while md.stored + md.duplicates < expected_rows:  # duplicates: redeliveries found stored
            await asyncio.sleep(0.01)
            if time.perf_counter() - t0 > 120:
                raise RuntimeError(f"only {md.stored} rows stored ({md.duplicates} duplicates, {md.bad} bad, "
                                   f"{md.acked} acked, {md.buffered} buffered)")
        elapsed = time.perf_counter() - t0
        if PROFILE is not None:
            PROFILE.disable()
        writer.bench_cpu_us = (time.process_time() - cpu0) / max(expected_rows, 1) * 1e6  # type: ignore[attr-defined]
        times1 = os.times()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        writer.bench_rusage = (ru1.ru_minflt - ru0.ru_minflt, ru1.ru_nvcsw - ru0.ru_nvcsw,  # type: ignore[attr-defined]
                               ru1.ru_nivcsw - ru0.ru_nivcsw)
        writer.bench_user_sys_us = tuple((b - a) / max(expected_rows, 1) * 1e6  # type: ignore[attr-defined]
                                         for a, b in zip(times0[:2], times1[:2], strict=True))
        writer.bench_server_cpu_us = (server_cpu() - server0) / max(expected_rows, 1) * 1e6  # type: ignore[attr-defined]
        return expected_rows / elapsed, writer
    finally:
        await writer.stop()


async def batches_to_visible(url: str, tmp: Path, rate: int, seconds: float,
                             size: int = 2000) -> tuple[float, float, int]:
    """Batch envelopes of ``size`` trades published at ``rate`` events/s into a running writer
    (default settings: flushes bounded by ``batch_max_events`` and ``batch_max_wait_s``); each
    envelope's delay until a reader of the table sees its last event (the reader polls every
    10 ms). Returns (p50 ms, p99 ms, envelopes)."""
    import numpy as np

    from marketbus.history.lakehouse import LakehouseSettings
    from marketbus.history.reader import HistoryReader
    from services.history_writer.app import HistoryWriter
    from services.history_writer.store.base import Selector

    writer = HistoryWriter(nats_url=url, backend="iceberg", data_dir=str(tmp / "pvb"), http_port=0,
                           durable=f"pvb{os.getpid()}", query_queue=f"pvb{os.getpid()}", compact_interval_s=3600.0,
                           log_level="WARNING")
    await writer.start()
    nc = await nats.connect(url)
    pub = await JetStreamPublisher(nc, max_inflight=64).start()
    reader = HistoryReader(LakehouseSettings.from_env(tmp / "pvb"))
    n = int(rate * seconds / size)
    sent = np.zeros(n)
    seen = np.full(n, np.nan)
    sel = Selector(kind="trade", symbol="PVB")

    async def poll() -> None:
        while np.isnan(seen).any():
            t = await asyncio.to_thread(reader.read_kind, "trade", sel, 0, 2**63 - 1, columns=["trade_id"])
            now = time.perf_counter()
            if t.num_rows:
                last = np.asarray(t.column("trade_id").to_pylist(), dtype=np.int64)
                done = np.unique(last[last % size == size - 1] // size)
                fresh = done[np.isnan(seen[done])]
                seen[fresh] = now
            await asyncio.sleep(0.01)

    poller = asyncio.create_task(poll())
    t0 = time.perf_counter()
    for k in range(n):
        delay = t0 + k * size / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[k] = time.perf_counter()
        await pub.publish_batch(trades(size, "PVB", k * size))
    await pub.flush(timeout=60)
    await asyncio.wait_for(poller, 120)
    await pub.close()
    await nc.close()
    await writer.stop()
    lag = (seen - sent) * 1000
    return float(np.percentile(lag, 50)), float(np.percentile(lag, 99)), n


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--singles", type=int, default=200_000)
    ap.add_argument("--batched", type=int, default=1_000_000)
    ap.add_argument("--pg-rows", type=int, default=300_000)
    ap.add_argument("--backend", default="iceberg", choices=["iceberg"])
    ap.add_argument("--symbols-events", type=int, default=100_000)
    ap.add_argument("--batched-only", action="store_true", help="only the batch-message figures (2., 3.)")
    ap.add_argument("--profile", action="store_true", help="cProfile the event loop's thread during the batch figure")
    ap.add_argument("--raw-rounds", type=int, default=3, help="raw pulls of the batch messages (median)")
    ap.add_argument("--ab-rounds", type=int, default=0,
                    help="then this many alternating rounds of the batch figure with the compiled envelope "
                         "scan off/on (marketbus.history.batch_decode.ENABLED): wall rate and process CPU per event")
    ap.add_argument("--pv-batch-rate", type=int, default=0,
                    help="then publish -> visible of 2000-event batch envelopes at this many events/s (5 s)")
    ap.add_argument("--pg-dsn", default=os.environ.get("MARKETBUS_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hwbench"))
    server = NatsServer(data_dir=tmp / "nats", port=free_port()).start()
    global SERVER_PID
    SERVER_PID = server.proc.pid if server.proc is not None else 0
    print("| figure | measured | target | reference (same run) | ratio |")
    print("|---|---|---|---|---|")
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await ensure_all(js)

        phase("1. single")
        singles: list[Trade] = []
        # 1. single-event messages into the embedded store
        if not args.batched_only:
            singles = trades(args.singles, "SINGLE")
            await publish(server.url, singles, None)
            ref = await raw_pull_rate(server.url, args.singles)
            rate, _ = await run_writer(server.url, args.backend, tmp / "h1", args.singles, None, "")
            row(f"{args.backend} store, single-event msgs", f"{rate:,.0f} ev/s", ">= 100,000 ev/s",
                f"raw nats-py pull {ref:,.0f} msg/s", f"{rate / ref:.2f}")
            await js.purge_stream("MD")

            phase("1b. symbols")
            # 1b. cost flat in the number of symbols: the same single-event messages over 10 and 10,000 symbols
            rates = {}
            for n_sym in (10, 10_000):
                # every symbol within the same hours of one day (interleaved in time, as a live feed)
                per = args.symbols_events // n_sym
                events = sorted((e for k in range(n_sym) for e in trades(per, f"S{k}", k, 1_000_000 * n_sym // 10)),
                                key=lambda e: e.ts_event)
                await publish(server.url, events, None)
                in_stream = (await js.stream_info("MD")).state.messages  # what the publisher got in
                rates[n_sym], _ = await run_writer(server.url, args.backend, tmp / f"sym{n_sym}", in_stream, None, "")
                await js.purge_stream("MD")
            row(f"{args.backend} store, single-event msgs over 10,000 symbols", f"{rates[10_000]:,.0f} ev/s",
                ">= 0.5 of the 10-symbol rate", f"10 symbols {rates[10]:,.0f} ev/s", f"{rates[10_000] / rates[10]:.2f}")

        phase("2. batch")
        # 2. batch envelopes into the embedded store (1M trades of one symbol, one day)
        batched = trades(args.batched, "BATCHED")
        del singles
        await publish(server.url, batched, 2_000)
        # the published events are not needed any more: alive, their 1M Structs (and their decimals
        # and strings) are traversed by every full garbage collection of the writer's run in this
        # process, a cost the raw pull (hardly any allocation) does not share, nor a writer service
        del batched
        gc.collect()
        # the reference: the raw pull of the same messages, before and after the writer (median of
        # --raw-rounds pulls; the host's load moves both)
        raw_cpu: list[tuple[float, float]] = []
        refs = [await raw_pull_rate(server.url, args.batched // 2_000, raw_cpu) * 2000
                for _ in range((args.raw_rounds + 1) // 2)]
        global PROFILE
        if args.profile:
            import cProfile

            PROFILE = cProfile.Profile()  # the event loop's thread after start-up: intake, acks, flush scheduling
        rate, hw = await run_writer(server.url, args.backend, tmp / "h2", args.batched, None, "")
        if PROFILE is not None:
            import pstats

            pstats.Stats(PROFILE, stream=sys.stderr).sort_stats("tottime").print_stats(30)
            PROFILE = None
        refs += [await raw_pull_rate(server.url, args.batched // 2_000, raw_cpu) * 2000
                 for _ in range(args.raw_rounds // 2)]
        ref = sorted(refs)[len(refs) // 2]
        row(f"{args.backend} store, batch msgs (2000 ev)", f"{rate:,.0f} ev/s", ">= 1,000,000 ev/s",
            f"raw nats-py pull {ref:,.0f} ev/s (median of {', '.join(f'{r / 1e6:.2f}M' for r in refs)})",
            f"{rate / ref:.2f}")
        raw_client = sorted(c for c, _ in raw_cpu)[len(raw_cpu) // 2] / 2000
        raw_server = sorted(s for _, s in raw_cpu)[len(raw_cpu) // 2] / 2000
        w_client, w_server = hw.bench_cpu_us, hw.bench_server_cpu_us  # type: ignore[attr-defined]
        row("  CPU per event: writer process + nats-server", f"{w_client:.2f} + {w_server:.2f} µs", "-",
            f"raw pull {raw_client:.3f} + {raw_server:.3f} µs",
            f"{(raw_client + raw_server) / (w_client + w_server):.2f}")
        print("  (writer process CPU user / system µs per event: %.2f / %.2f; minor faults, voluntary and "
              "involuntary context switches: %d, %d, %d)" % (*hw.bench_user_sys_us, *hw.bench_rusage),  # type: ignore[attr-defined]
              file=sys.stderr)
        if args.ab_rounds:
            from marketbus.history import batch_decode

            got: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for r in range(args.ab_rounds):
                for compiled in (False, True) if r % 2 == 0 else (True, False):
                    batch_decode.ENABLED = compiled
                    ab_rate, ab_writer = await run_writer(server.url, args.backend, tmp / f"ab{r}{compiled}",
                                                          args.batched, None, "")
                    commits = getattr(ab_writer.store, "writer", None)
                    got[compiled].append((ab_rate, ab_writer.bench_cpu_us))  # type: ignore[attr-defined]
                    if commits is not None:
                        print(f"  ({'compiled' if compiled else 'Arrow JSON'}: {commits.commits} commits, "
                              f"{args.batched / max(commits.commits, 1):,.0f} events per commit)", flush=True)
            batch_decode.ENABLED = True
            for compiled in (False, True):
                rates_ = ", ".join(f"{a:,.0f}" for a, _ in got[compiled])
                cpus = ", ".join(f"{c:.2f}" for _, c in got[compiled])
                print(f"  A/B envelope scan {'compiled' if compiled else 'Arrow JSON'}: ev/s {rates_}; "
                      f"writer process CPU us/ev (after start-up) {cpus}", flush=True)

        if args.pv_batch_rate:
            phase("publish -> visible, batches")
            await js.purge_stream("MD")
            p50, p99, n_env = await batches_to_visible(server.url, tmp, args.pv_batch_rate, 5.0)
            row(f"publish -> visible, {n_env} batch envelopes of 2000 at {args.pv_batch_rate:,} ev/s",
                f"p99 {p99:,.0f} ms", "p99 < 3,000 ms", f"p50 {p50:,.0f} ms", "-")

        phase("raw pyarrow")
        # raw pyarrow write of the same rows
        from marketbus.history.lakehouse import LakehouseSettings
        from services.history_writer.store.base import Selector
        from services.history_writer.store.iceberg import IcebergStore

        store = IcebergStore(LakehouseSettings(history_dir=str(tmp / "h2")))
        await store.open()
        day = Selector(kind="trade", symbol="BATCHED")
        table = (await store.read_table(day, DAY0, DAY0 + 86_400 * 10**9))["trade"]
        t0 = time.perf_counter()
        pq.write_table(table, tmp / "raw.parquet", compression="zstd")
        raw_write = table.num_rows / (time.perf_counter() - t0)
        row(
            "  vs raw pyarrow write of the same rows",
            f"{rate:,.0f} ev/s",
            "-",
            f"pq.write_table {raw_write:,.0f} rows/s",
            f"{rate / raw_write:.2f}",
        )

        phase("3. query")
        # 3. query: 1M trades of one symbol and day
        t0 = time.perf_counter()
        tables = await store.read_table(day, DAY0, DAY0 + 86_400 * 10**9)
        q = time.perf_counter() - t0
        n = tables["trade"].num_rows
        from pyiceberg.expressions import EqualTo

        itable = store.writer.tables.get("trade", refresh=True)
        files = [t.file.file_path for t in itable.scan(row_filter=EqualTo("symbol", "BATCHED")).plan_files()]
        t0 = time.perf_counter()
        pq.read_table([f.removeprefix("file://") for f in files])
        qref = time.perf_counter() - t0
        ref_name = "pyarrow read of its files"
        row(f"query {n:,} trades, 1 symbol/day, ordered (Arrow)", f"{q:.3f} s", "< 1 s", f"{ref_name} {qref:.3f} s",
            f"{q / qref:.2f}")
        await store.close()
        await js.purge_stream("MD")

        phase("4. PostgreSQL")
        # 4. PostgreSQL from batch envelopes (--pg-rows 0 skips it)
        try:
            import asyncpg

            if args.pg_rows <= 0:
                raise ImportError("--pg-rows 0")

            con = await asyncpg.connect(args.pg_dsn, timeout=3)
            pg_rows = trades(args.pg_rows, "PGSYM")
            await publish(server.url, pg_rows, 2_000)
            prefix = f"bench{os.getpid()}_"
            rate, _writer = await run_writer(server.url, "postgres", tmp / "pg", len(pg_rows), args.pg_dsn, prefix)
            # reference: raw COPY of the same rows into a plain table
            cols = [c for c in table.column_names]
            await con.execute(f'DROP TABLE IF EXISTS "{prefix}raw"')
            await con.execute(f'CREATE TABLE "{prefix}raw" (LIKE "{prefix}trade")')
            sub = table.slice(0, len(pg_rows))
            records = list(zip(*(sub.column(c).to_pylist() for c in cols)))
            records = [
                tuple(Decimal(v) if cols[i] in ("price", "size") else v for i, v in enumerate(r)) for r in records
            ]
            t0 = time.perf_counter()
            await con.copy_records_to_table(f"{prefix}raw", records=records, columns=cols)
            raw_copy = len(records) / (time.perf_counter() - t0)
            row(
                "postgres store, batch msgs (COPY csv; ON CONFLICT only on redelivery)",
                f"{rate:,.0f} rows/s",
                ">= 100,000 rows/s",
                f"raw asyncpg COPY {raw_copy:,.0f} rows/s",
                f"{rate / raw_copy:.2f}",
            )
            from services.history_writer.store.postgres import PostgresStore

            pgs = PostgresStore(args.pg_dsn, table_prefix=prefix)
            await pgs.open()
            await pgs.drop_all()
            await pgs.close()
            await con.execute(f'DROP TABLE IF EXISTS "{prefix}raw"')
            await con.close()
        except (TimeoutError, OSError, ImportError) as exc:
            print(f"(PostgreSQL skipped: {exc!r})", file=sys.stderr)
        await nc.close()
    finally:
        server.cleanup()
        import shutil

        if not os.environ.get("KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(tmp)


if __name__ == "__main__":
    asyncio.run(main())
