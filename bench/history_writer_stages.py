"""Where the history writer's batch path spends its time, stage by stage, in one process, without
NATS: the same 2000-event trade envelopes as ``bench/history_writer.py`` (100,000-event flushes),
each flush through the stages the writer runs (decode = envelope scan + forged-source check; the
store's prepare: duplicate-id check, ledger, table columns (casts), partition split / sort,
Parquet encode + statistics; commit). Wall and process CPU per event, per stage.

Run: ``.venv/bin/python bench/history_writer_stages.py [--events N] [--flush N] [--profile FILE]``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared")]

from bench.history_writer import trades  # noqa: E402
from marketbus.contracts import codec  # noqa: E402
from marketbus.history import datafiles  # noqa: E402
from marketbus.history import writer as writer_mod  # noqa: E402
from marketbus.history.lakehouse import LAYOUTS, LakehouseSettings  # noqa: E402
from marketbus.history.schema import Message, decode_messages  # noqa: E402
from marketbus.history.writer import HistoryTableWriter  # noqa: E402

WALL: dict[str, float] = defaultdict(float)
CPU: dict[str, float] = defaultdict(float)


@contextmanager
def stage(name: str):  # type: ignore[no-untyped-def]
    w, c = time.perf_counter(), time.process_time()
    yield
    WALL[name] += time.perf_counter() - w
    CPU[name] += time.process_time() - c


def envelopes(n: int, per: int = 2000) -> list[Message]:
    events = trades(n, "BATCHED")
    out = []
    for k, i in enumerate(range(0, n, per)):
        payload = codec.encode(codec.make_batch(events[i:i + per]))
        out.append(Message("MD", k + 1, "md.trade.bench.X.BATCHED", payload, "batch"))
    return out


def instrumented() -> None:
    """Wrap the writer's stages with timers (the functions the store calls)."""
    first, files, to_table, slices, pw = (writer_mod._first_per_id, writer_mod._write_files,
                                          None, datafiles.partition_slices, datafiles.pq.ParquetWriter)
    layout = LAYOUTS["trade"]
    to_table = type(layout).to_table

    def first_per_id(rows):  # type: ignore[no-untyped-def]
        with stage("prepare: duplicate-id check"):
            return first(rows)

    def table_cols(self, rows):  # type: ignore[no-untyped-def]
        with stage("prepare: table columns (ts/decimal casts)"):
            return to_table(self, rows)

    def part(*a, **k):  # type: ignore[no-untyped-def]
        with stage("prepare: partition split / order check"):
            return slices(*a, **k)

    class Writer(pw):  # type: ignore[misc,valid-type]
        def write_table(self, *a, **k):  # type: ignore[no-untyped-def]
            with stage("prepare: parquet encode + write"):
                return super().write_table(*a, **k)

        def close(self):  # type: ignore[no-untyped-def]
            with stage("prepare: parquet encode + write"):
                return super().close()

    writer_mod._first_per_id = first_per_id
    type(layout).to_table = table_cols  # type: ignore[method-assign]
    datafiles.partition_slices = part
    datafiles.pq.ParquetWriter = Writer  # type: ignore[misc]
    del files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--flush", type=int, default=100_000)
    ap.add_argument("--profile", default="")
    ap.add_argument("--no-stages", action="store_true", help="no per-stage timers (totals only)")
    args = ap.parse_args()
    msgs = envelopes(args.events)
    per_flush = args.flush // 2000
    tmp = Path(tempfile.mkdtemp(prefix="hwstages"))
    w = HistoryTableWriter(LakehouseSettings(history_dir=str(tmp)), "stages")
    table = w.tables.get("trade", create=True)
    decode_messages(msgs[:1], "MD")  # warm-up
    if not args.no_stages:
        instrumented()
    prof = cProfile.Profile() if args.profile else None
    w0, c0 = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    for i in range(0, len(msgs), per_flush):
        group = msgs[i:i + per_flush]
        with stage("decode (envelope scan + forged check)"):
            decoded = decode_messages(group, "MD")
        rows = decoded.tables["trade"][0]
        with stage("prepare (total)"):
            prepared = w.prepare(table, "trade", "MD", rows)
        with stage("commit"):
            w.commit(prepared)
    if prof:
        prof.disable()
        prof.dump_stats(args.profile)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    n = args.events
    print(f"| stage ({n:,} trades, {args.flush:,}-event flushes) | wall µs/ev | CPU µs/ev |")
    print("|---|---|---|")
    for name in WALL:
        print(f"| {name} | {WALL[name] / n * 1e6:.3f} | {CPU[name] / n * 1e6:.3f} |")
    print(f"| total | {wall / n * 1e6:.3f} | {cpu / n * 1e6:.3f} |")
    print(f"({n / wall:,.0f} ev/s single-threaded, {w.commits} commits)")


if __name__ == "__main__":
    main()
