"""Replay (history playback) benchmarks, one run: prints markdown table rows.

- ``max`` playback of 1,000,000 stored trades delivered to a plain core-NATS subscriber (events/s,
  first message to end marker), twice: the service reading the history tables in-process (its
  default with the Iceberg backend) and reading through the history query over NATS
  (``MARKETBUS_REPLAY_HISTORY_READ=nats``, the PostgreSQL path); references: the read
  rates of the same data in the same run (``TableSource`` in this process, ``HistoryClient.pages``
  over NATS), nothing published.
- 1x pacing at 5,000 events/s (25,000 trades 200 us apart, 5 s): per event, arrival time at
  the subscriber minus its schedule (``ts_event`` gap from the first event); p50/p99/max of the
  absolute error, and the lag p99 the service reports.

The history writer and the replay service run as their own processes (``python -m ...``), the
subscriber in this one: three processes on the machine's cores.

Run: ``.venv/bin/python bench/replay.py [--events N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared")]

import nats  # noqa: E402

from marketbus.clients import HistoryClient, PlaybackClient, RequestError  # noqa: E402
from marketbus.clients.history import make_query  # noqa: E402
from marketbus.contracts import Trade, codec, event_id, subjects  # noqa: E402
from marketbus.contracts.streams import ensure_all  # noqa: E402
from marketbus.runtime.natsserver import NatsServer  # noqa: E402
from marketbus.runtime.publisher import JetStreamPublisher  # noqa: E402

DAY0 = 1_763_683_200_000_000_000  # 2025-11-21T00:00:00Z
T_START = time.perf_counter()


def phase(name: str) -> None:
    print(f"  [{time.perf_counter() - T_START:5.1f}s] {name}", file=sys.stderr, flush=True)


def row(*cells: str) -> None:
    print("| " + " | ".join(cells) + " |", flush=True)


def trades(n: int, symbol: str, spacing_ns: int, t0: int = DAY0) -> list[Trade]:
    return [Trade(id=event_id("bench", "trade", symbol, i), source="bench", venue="X", symbol=symbol,
                  ts_event=t0 + i * spacing_ns, ts_recv=t0 + i * spacing_ns + 1000, price=Decimal("100.25"),
                  size=Decimal("0.5"), side="buy", trade_id=str(i)) for i in range(n)]


async def publish(nc: nats.NATS, events: list[Trade]) -> None:
    pub = await JetStreamPublisher(nc, max_inflight=64).start()
    for i in range(0, len(events), 2000):
        await pub.publish_batch(events[i:i + 2000])
    await pub.flush(timeout=300)
    await pub.close()


def service(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full = os.environ | env | {"PYTHONPATH": f"{ROOT}:{ROOT / 'shared'}"}
    return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=full, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)


async def wait_stored(nc: nats.NATS, selector: str, n: int, timeout: float = 240) -> None:
    client = HistoryClient(nc, timeout=30)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = await client.coverage(selector)
            if sum(s.rows for s in reply.streams) >= n:
                return
        except Exception:
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{n} events of {selector} not stored within {timeout}s")


async def history_read_rate(nc: nats.NATS, selector: str, n: int) -> float:
    client = HistoryClient(nc, timeout=30)
    query = make_query(selector, DAY0, DAY0 + 10**15, limit=200_000, chunk_rows=5_000)  # the service's paging
    started = time.perf_counter()
    got = 0
    async for events, _ in client.pages(query):
        got += len(events)
    elapsed = time.perf_counter() - started
    assert got == n, (got, n)
    return n / elapsed


async def table_read_rate(history_dir: Path, selector: str, n: int) -> float:
    from marketbus.clients.selectors import parse_selector
    from services.replay.source import open_table_source

    source = open_table_source(str(history_dir))
    sel = parse_selector(selector)
    started = time.perf_counter()
    got = 0
    async for chunk in source.chunks(sel, DAY0, DAY0 + 10**15):
        got += len(chunk)
    elapsed = time.perf_counter() - started
    assert got == n, (got, n)
    return n / elapsed


_TS_EVENT = re.compile(rb'"ts_event":(\d+)')


async def count_messages(url: str, subject: str, end_subject: str, paced: bool = False) -> None:
    """The plain subscriber (``--count-sub``, a process of its own): a raw NATS connection that
    counts the messages on ``subject`` until one arrives on ``end_subject``, then prints
    ``RESULT <count> <seconds from the first to the end>`` (``paced``: ``RESULT <count> <p50>
    <p99> <max>``, the pacing error in ms: arrival since the first message minus its
    ``ts_event`` since the first one's). No client library per message: it
    measures what the publisher delivers, not what a Python client can decode."""
    host, port = url.removeprefix("nats://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 24)
    await reader.readline()  # INFO
    writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n'
                 b"SUB %s 1\r\nSUB %s 2\r\nPING\r\n" % (subject.encode(), end_subject.encode()))
    await writer.drain()
    while (await reader.readline()).strip() != b"PONG":
        pass
    print("READY", flush=True)
    buf = b""
    n, first = 0, 0.0
    arrivals: list[tuple[float, int]] = []
    while True:
        data = await reader.read(1 << 20)
        if not data:
            raise RuntimeError("connection closed")
        buf += data
        pos = 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            line = buf[pos:eol]
            if line.startswith((b"HMSG", b"MSG")):
                parts = line.split(b" ")
                end = eol + 2 + int(parts[-1]) + 2
                if end > len(buf):
                    break
                if parts[2] == b"2":
                    if paced:
                        a0, t0 = arrivals[0]
                        errs = sorted(abs((a - a0) - (t - t0) / 1e9) * 1000 for a, t in arrivals)
                        q = lambda f: errs[min(len(errs) - 1, int(f * len(errs)))]  # noqa: E731, B023 (a quantile helper, called within this iteration)
                        print(f"RESULT {n} {q(0.5):.3f} {q(0.99):.3f} {errs[-1]:.3f}", flush=True)
                    else:
                        print(f"RESULT {n} {time.perf_counter() - first:.6f}", flush=True)
                    return
                if not n:
                    first = time.perf_counter()
                if paced:
                    ts = _TS_EVENT.search(buf, eol, end)
                    arrivals.append((time.perf_counter(), int(ts.group(1)) if ts else 0))
                n += 1
                pos = end
            else:
                if line == b"PING":
                    writer.write(b"PONG\r\n")
                pos = eol + 2
        buf = buf[pos:]


async def max_playback(nc: nats.NATS, url: str, selector: str, prefix: str) -> tuple[float, int]:
    """Rate at which a ``max`` playback reaches the plain subscriber (another process)."""
    counter = subprocess.Popen([sys.executable, __file__, "--count-sub", url, subjects.playback_filter(prefix, "md.>"),
                                subjects.playback_end(prefix)], stdout=subprocess.PIPE, text=True)
    assert counter.stdout is not None
    ready = await asyncio.to_thread(counter.stdout.readline)
    assert ready.strip() == "READY", ready
    for attempt in range(60):  # a replay service just started may not subscribe yet on a loaded machine
        try:
            await PlaybackClient(nc, timeout=60).start(selector, DAY0, DAY0 + 10**15, speed="max", prefix=prefix)
            break
        except RequestError as exc:
            if exc.code != "no_responders" or attempt == 59:
                raise
            await asyncio.sleep(0.5)
    result = await asyncio.to_thread(counter.stdout.readline)
    counter.wait(30)
    _, count, seconds = result.split()
    return int(count) / float(seconds), int(count)


class MemorySource:
    """An EventSource over events held in memory: what the replay service does once its reads
    cost nothing (the upper bound of its publish path)."""

    def __init__(self, payloads: list[bytes]) -> None:
        self.payloads = payloads

    async def count(self, *_: object) -> int:
        return len(self.payloads)

    async def chunks(self, *_: object):
        for i in range(0, len(self.payloads), 5000):
            yield self.payloads[i:i + 5000]


async def paced_playback(
    nc: nats.NATS, url: str, selector: str, prefix: str
) -> tuple[tuple[float, float, float], int, float]:
    """1x playback to the plain subscriber (timing arrivals): ((p50, p99, max) error ms, count,
    the lag p99 the service reported in its last status)."""
    counter = subprocess.Popen([sys.executable, __file__, "--pace-sub", url, subjects.playback_filter(prefix, "md.>"),
                                subjects.playback_end(prefix)], stdout=subprocess.PIPE, text=True)
    assert counter.stdout is not None
    ready = await asyncio.to_thread(counter.stdout.readline)
    assert ready.strip() == "READY", ready
    client = PlaybackClient(nc, timeout=60)
    session = await client.start(selector, DAY0, DAY0 + 10**15, speed="1x", prefix=prefix, hold=True)
    last = None
    async for status in client.follow(session, resume=True):
        last = status
    result = await asyncio.to_thread(counter.stdout.readline)
    counter.wait(30)
    _, count, p50, p99, worst = result.split()
    return (float(p50), float(p99), float(worst)), int(count), last.lag_p99_ms if last else 0.0


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--paced", type=int, default=25_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mb-bench-replay-") as tmp_dir:
        tmp = Path(tmp_dir)
        server = NatsServer(data_dir=tmp / "nats", port=0).start()
        procs: list[subprocess.Popen[bytes]] = []
        nc = await nats.connect(server.url)
        try:
            await ensure_all(nc.jetstream())
            phase(f"publish {args.events:,} + {args.paced:,} trades")
            bulk = trades(args.events, "BULK", 40_000_000)
            await publish(nc, bulk)
            paced = trades(args.paced, "PACED", 200_000, t0=DAY0 + 10**14)  # 5,000/s
            await publish(nc, paced)
            del bulk
            common = {"NATS_URL": server.url, "MARKETBUS_DATA_DIR": str(tmp / "data")}
            procs.append(
                service(
                    "services.history_writer",
                    common | {"MARKETBUS_HISTORY_WRITER_DATA_DIR": str(tmp / "h")},
                    tmp / "writer.log",
                )
            )
            phase("history writer stores them")
            await wait_stored(nc, "trade.bench.X.BULK", args.events)
            await wait_stored(nc, "trade.bench.X.PACED", args.paced)
            replay_env = common | {
                "MARKETBUS_REPLAY_HTTP_PORT": "0",
                "MARKETBUS_HISTORY_WRITER_DATA_DIR": str(tmp / "h"),
            }
            procs.append(service("services.replay", replay_env, tmp / "replay.log"))
            await asyncio.sleep(3)  # the replay service connects

            phase("history read rates (references)")
            read_rate = await history_read_rate(nc, "trade.bench.X.BULK", args.events)
            table_rate = await table_read_rate(tmp / "h", "trade.bench.X.BULK", args.events)
            phase("1x playback at 5,000 ev/s")  # first: nothing else has run in the service yet
            (p50, p99, worst), paced_n, reported = await paced_playback(nc, server.url, "trade.bench.X.PACED",
                                                                         "replay.bench1x")
            phase("max playback (history tables)")
            rate, delivered = await max_playback(nc, server.url, "trade.bench.X.BULK", "replay.benchmax")
            stop(procs.pop())
            phase("max playback (history query over NATS)")
            procs.append(service("services.replay", replay_env | {"MARKETBUS_REPLAY_HISTORY_READ": "nats"},
                                 tmp / "replay-nats.log"))
            await asyncio.sleep(3)
            nats_rate, nats_delivered = await max_playback(nc, server.url, "trade.bench.X.BULK", "replay.benchnats")
            stop(procs.pop())
            phase("max playback from memory (the service in this process, the history writer idle)")
            from services.replay.app import ReplayService

            svc = ReplayService(nats_url=server.url, http_port=0)
            svc.source = MemorySource(codec.encode_many(trades(args.events, "BULK", 40_000_000)))
            await svc.start()
            try:
                mem_rate, mem_delivered = await max_playback(nc, server.url, "trade.bench.X.BULK", "replay.benchmem")
            finally:
                await svc.stop()

            row("figure", "measured", "target", "reference (same run)", "ratio")
            row("---", "---", "---", "---", "---")
            row(f"playback at max, {args.events:,} trades read from the history tables, to a plain subscriber",
                f"{rate:,.0f} ev/s ({delivered:,} delivered)", ">= 300,000 ev/s",
                f"history tables read in-process (TableSource) {table_rate:,.0f} ev/s",
                f"{rate / table_rate:.2f} of the read rate, {rate / 300_000:.2f} of target")
            row(f"playback at max, {args.events:,} trades read over NATS (history query), to a plain subscriber",
                f"{nats_rate:,.0f} ev/s ({nats_delivered:,} delivered)", ">= 300,000 ev/s",
                f"history read over NATS (HistoryClient) {read_rate:,.0f} ev/s",
                f"{nats_rate / read_rate:.2f} of the read rate, {nats_rate / 300_000:.2f} of target")
            row(f"playback at max, {args.events:,} trades from an in-memory source (publish path alone)",
                f"{mem_rate:,.0f} ev/s ({mem_delivered:,} delivered)", ">= 300,000 ev/s",
                f"history read over NATS {read_rate:,.0f} ev/s", f"{mem_rate / 300_000:.2f} of target")
            row(f"1x pacing error at 5,000 ev/s ({paced_n:,} trades): p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
                f"max {worst:.2f} ms", f"p99 {p99:.2f} ms", "p99 < 5 ms",
                f"service-reported lag p99 {reported:.2f} ms", f"{p99 / 5:.2f} of target")
        finally:
            await nc.close()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            server.cleanup()


if __name__ == "__main__":
    if sys.argv[1:2] in (["--count-sub"], ["--pace-sub"]):
        asyncio.run(count_messages(*sys.argv[2:5], paced=sys.argv[1] == "--pace-sub"))
    else:
        asyncio.run(main())
