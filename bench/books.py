"""Books benchmark (issue #19): delta computation per book update, 20 levels a side, one core.

``marketbus.books.BookDeltas.update`` on a stream of observed books (what both book ingestors
run per poll), target >= 50,000 updates/s. Reference measured in the same run: publishing the
full snapshot instead (``codec.encode`` of each observed book, what the ingestors did before).
Two streams of books: "typical" (a few sizes change per update, at times the ladder moves one
tick or a level thins out) and "every level" (every size changes on every update, as the Digitex
sandbox's book does: the worst case for a delta). Rates: the best of interleaved rounds.
"""

from __future__ import annotations

import random
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "shared")]

from marketbus.books import BookDeltas  # noqa: E402
from marketbus.contracts import codec  # noqa: E402
from marketbus.contracts.market import BookLevel, BookSnapshot  # noqa: E402

DEPTH = 20
N = 20_000
TARGET = 50_000


def books(every_level: bool, n: int = N, seed: int = 1) -> list[BookSnapshot]:
    rng = random.Random(seed)
    mid, out = 40_000 * 2, []
    sizes = [rng.randint(1, 400) for _ in range(2 * DEPTH)]
    for i in range(n):
        r = rng.random()
        if r < 0.1:
            mid += rng.choice((-1, 1))
        if every_level:
            sizes = [rng.randint(1, 400) for _ in range(2 * DEPTH)]
        else:
            for _ in range(rng.randint(1, 4)):
                sizes[rng.randrange(2 * DEPTH)] = rng.randint(1, 400)
        depth = DEPTH - 1 if r > 0.97 else DEPTH
        ts = 1_700_000_000_000_000_000 + i * 1_000_000
        out.append(BookSnapshot(
            id=f"b{i}", source="digitex", venue="DIGITEX", symbol="FS-BTCUSD", ts_event=ts, ts_recv=ts + 1000,
            bids=[BookLevel(Decimal(mid - k - 1) * 5 / 2, Decimal(sizes[k]) / 1000, (k % 7) + 1) for k in range(depth)],
            asks=[BookLevel(Decimal(mid + k + 1) * 5 / 2, Decimal(sizes[DEPTH + k]) / 1000, (k % 5) + 1)
                  for k in range(DEPTH)],
            quality="realtime"))
    return out


def measure(stream: list[BookSnapshot], rounds: int = 9) -> tuple[float, float, float, int]:
    """(deltas/s, deltas+encode/s, snapshot encode/s, events per update) for one stream."""
    encode = codec.encode
    best = [float("inf")] * 3
    events = 0
    for _ in range(rounds):
        deltas = BookDeltas("digitex", snapshot_interval_s=1e12)
        update = deltas.update
        update(stream[0])
        start = time.perf_counter()
        for book in stream:
            update(book)
        best[0] = min(best[0], time.perf_counter() - start)

        deltas = BookDeltas("digitex", snapshot_interval_s=1e12)
        update = deltas.update
        update(stream[0])
        start = time.perf_counter()
        for book in stream:
            for event in update(book):
                encode(event)
        best[1] = min(best[1], time.perf_counter() - start)
        events = deltas.counts["delta"]

        start = time.perf_counter()
        for book in stream:
            encode(book)
        best[2] = min(best[2], time.perf_counter() - start)
    n = len(stream)
    return n / best[0], n / best[1], n / best[2], events


def main() -> list[str]:
    rows = ["| benchmark (20 levels a side, one core) | result | target | reference: full snapshot encode (same run) | ratio |",
            "|---|---|---|---|---|"]
    for name, every in (("typical", False), ("every level changes", True)):
        compute, with_encode, snapshot, deltas = measure(books(every))
        rows.append(f"| books: delta computation, {name} | {compute:,.0f} updates/s | >= {TARGET:,}/s | "
                    f"{snapshot:,.0f}/s | x{compute / snapshot:.2f} |")
        rows.append(f"| books: delta computation + encode, {name} ({deltas:,} deltas) | {with_encode:,.0f} updates/s | | "
                    f"{snapshot:,.0f}/s | x{with_encode / snapshot:.2f} |")
    return rows


if __name__ == "__main__":
    print("\n".join(main()))
