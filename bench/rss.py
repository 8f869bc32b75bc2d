"""Memory flat? RSS of each ingestor's event path after 1M and 10M events (issue #16).

Each vendor runs in its own fresh process: the main event path of ``bench/peer_cryptofeed.py``
(wire bytes -> normalizer -> contract event -> subject + ``codec`` encode + header block) over
its corpus again and again, with the per-event state the ingestor keeps: Sitagri's
``RecentIds`` as ``services/ingest_sitagri/app.py`` makes it (``recent_ids()``) (every event offered
to it, as the app does). RSS (``/proc/self/statm``) is read after warm-up (100k events), at 1M
and at 10M. The reference, same run: a bare msgspec loop (Binance frame -> Struct -> JSON) in
its own process, which holds no state.

What repeats and what does not: Sitagri's dates (hence its ids) are shifted on every pass over
the corpus, so each of its events is new to ``RecentIds``; the other vendors' passes repeat the
same trades (their normalizers keep no per-id state; their caches of prices, ids' prefixes and
tokens are bounded by count, see bench/RESULTS.md). Not covered: the NATS client's buffers.

The order router (``--vendors order_router``): its per-order state path in this process, events
counted as order events published. Each order is created (``StateStore.create``, its
``pending_submit`` event), then moved ``submitted -> accepted -> filled`` by ``OrderBook.transition``
(persist with compare-and-set, publish, close: the closed order joins ``OrderBook.recent``), and
its fill goes through ``Reconciler``'s trade de-duplication. The KV bucket and the exchange are
stand-ins that keep nothing (the bucket's data lives in nats-server, not in the router), so what
grows is what the router itself keeps per order; 4 events an order.

Each row's ratio: the path's RSS at the end over its RSS at 1M (flat: 1.00), beside the
reference's same ratio. De-duplication state and its bounds: ``docs/memory.md``.

Run: ``.venv/bin/python bench/rss.py [--events 10000000] [--vendors digitex,finx,sitagri,ticksupply,order_router]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "shared"), str(HERE)]

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE / 2**20


def router_pass() -> object:
    """One order's life through the order router's state path (module docstring); returns a
    ``one_pass(k)`` doing 1000 orders (4000 events)."""
    import asyncio
    import logging
    from decimal import Decimal
    from typing import Any

    from marketbus.clients.orders import OrderRecord
    from marketbus.contracts import codec
    from services.order_router.metrics import RouterMetrics
    from services.order_router.reconcile import Reconciler
    from services.order_router.state import StateStore
    from services.order_router.tracking import OrderBook

    class NoKV:  # the bucket: revisions counted, nothing kept (the data is nats-server's)
        rev = 0

        async def create(self, key: str, value: bytes) -> int:
            self.rev += 1
            return self.rev

        put = create

        async def update(self, key: str, value: bytes, last: int) -> int:
            return await self.create(key, value)

    class Exchange:  # trade_history: this order's fill
        row: dict[str, Any] = {}

        async def trade_history(self, traded_at_from: int) -> list[dict[str, Any]]:
            return [self.row]

    async def emit(event: Any, subject: str) -> None:
        codec.encode(event)

    log = logging.getLogger("bench.rss.router")
    book = OrderBook(emit, RouterMetrics("order_router"), log)
    book.store = StateStore(NoKV(), "bench")
    exchange = Exchange()
    reconciler = Reconciler(book, exchange, None, None, log)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    qty, price = Decimal("3"), Decimal("25000.5")

    async def orders(k: int) -> int:
        for i in range(1000):
            n = k * 1000 + i
            rec = OrderRecord(client_id=f"{n:08x}-0000-4000-8000-{n:012x}", market="BTCUSD-PERP", market_id=1,
                              side="buy", order_type="limit", duration="GTC", quantity=qty, price=price, seq=1,
                              command_id=f"c{n}", created_ns=n, updated_ns=n)
            key = (rec.market, rec.client_id)
            book.orders[key] = rec
            await book.store.create(rec)
            await book.publish_order(rec)
            await book.transition(rec, "submitted")
            await book.transition(rec, "accepted")
            await book.transition(rec, "filled", filled=qty, average=price)
            exchange.row = {"contract_id": n, "traded_at": 1_700_000_000_000_000 + n}
            await reconciler._new_trades()
        return 4000

    return lambda k: loop.run_until_complete(orders(k))


def child(vendor: str, events: int, marks: list[int]) -> None:
    import peer_cryptofeed as pc

    trades = [] if vendor == "order_router" else pc.corpus(100_000)
    wire = pc.Wire()
    if vendor == "order_router":
        one_pass = router_pass()  # type: ignore[assignment]
    elif vendor == "sitagri":
        from services.ingest_sitagri import normalize as sg
        from services.ingest_sitagri.app import recent_ids

        pushes = pc.sitagri_pushes(trades)
        recent = recent_ids()  # the app's
        decode, push, send, add = sg.decode_push, sg.push, wire.send, recent.add
        ts = time.time_ns()

        def one_pass(k: int) -> int:
            # shift every date of the pass (1e6 s per pass): new ids for RecentIds
            old, new = b":1764", b":%d" % (1764 + k)
            for raw in pushes:
                event = push(decode(raw.replace(old, new)), ts)
                if add(event.id):
                    send([event])
            return len(pushes)
    else:
        fn, data = {
            "digitex": (pc.digitex_single, pc.digitex_pages),
            "finx": (pc.finx_single, pc.finx_frames),
            "ticksupply": (pc.ticksupply_single, pc.ticksupply_artifacts),
            "bare": (pc.bare_msgspec(pc._BareFrame), lambda t: [f.encode() for f in pc.binance_frames(t)]),
        }[vendor]
        payload = data(trades)

        def one_pass(k: int) -> int:
            return fn(payload, wire)
    del trades
    done, k, pending = 0, 0, sorted(set(marks))
    began = time.perf_counter()
    while pending:
        done += one_pass(k)
        k += 1
        while pending and done >= pending[0]:
            print(f"{pending.pop(0)} {rss_mb():.1f} {done / (time.perf_counter() - began):.0f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--vendors", default="digitex,finx,sitagri,ticksupply,order_router")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    marks = [100_000, min(1_000_000, args.events), args.events]
    if args.child:
        child(args.child, args.events, marks)
        return
    print("| path (own process) | RSS after warm-up (100k events) | at 1M | at 10M (or --events) | growth 1M -> end | "
          "events/s | reference: bare msgspec loop, same run (100k / 1M / end) | ratio end / 1M: path; reference |")
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for vendor in ["bare", *args.vendors.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--child", vendor, "--events", str(args.events)],
                             capture_output=True, text=True, check=True).stdout.split("\n")
        rows = [line.split() for line in out if line.strip()]
        results[vendor] = {int(m): (float(r), float(rate)) for m, r, rate in rows}
    bare = results.pop("bare")
    for vendor, at in results.items():
        warm, one, end = (at[m][0] for m in marks)
        b_warm, b_one, b_end = (bare[m][0] for m in marks)
        print(
            f"| {vendor}, {args.events:,} events | {warm:.1f} MB | {one:.1f} MB | {end:.1f} MB | {end - one:+.1f} MB "
            f"({(end - one) / one:+.0%}) "
            f"| {at[marks[-1]][1]:,.0f} | {b_warm:.1f} / {b_one:.1f} / {b_end:.1f} MB "
            f"| {end / one:.2f}; {b_end / b_one:.2f} |"
        )


if __name__ == "__main__":
    main()
