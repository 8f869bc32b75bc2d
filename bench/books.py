"""Books benchmark (issue #19): delta computation per book update, 20 levels a side, one core.

``marketbus.books.BookDeltas.update`` on a stream of observed books (what both book ingestors
run per poll), target >= 50,000 updates/s. Reference measured in the same run: publishing the
full snapshot instead (``codec.encode`` of each observed book, what the ingestors did before).
Two streams of books: "typical" (a few sizes change per update, at times the ladder moves one
tick or a level thins out) and "every level" (every size changes on every update, as the Digitex
sandbox's book does: the worst case for a delta). Rates: the best of interleaved rounds. The
consumer's side too: :class:`marketbus.books.BookBuilder` applying the published deltas.

``--against REV`` also measures ``marketbus.books`` as it was at git revision ``REV``, in the same
run on the same streams (a before/after of a change to the delta path).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
import types
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "shared")]

from marketbus.books import BookBuilder, BookDeltas  # noqa: E402
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


def load_at(rev: str) -> tuple[Any, Any]:
    """(BookDeltas, BookBuilder) of ``marketbus.books`` at git revision ``rev``, loaded next to the
    current ones (same process, same run): the "before" of a before/after measurement."""
    root = Path(__file__).resolve().parents[1]
    mods = {}
    for name in ("delta", "builder"):
        source = subprocess.run(["git", "show", f"{rev}:shared/marketbus/books/{name}.py"], cwd=root, check=True,
                                capture_output=True, text=True).stdout
        module = sys.modules[f"books_at_{name}"] = types.ModuleType(f"books_at_{name}")
        exec(compile(source, f"{rev}:{name}.py", "exec"), module.__dict__)  # our own file, at rev
        mods[name] = module
    return mods["delta"].BookDeltas, mods["builder"].BookBuilder


def measure(stream: list[BookSnapshot], rounds: int = 9, deltas_cls: Any = BookDeltas,
            builder_cls: Any = BookBuilder) -> tuple[float, float, float, int, float]:
    """(deltas/s, deltas+encode/s, snapshot encode/s, events per update, builder applies/s) for
    one stream."""
    encode = codec.encode
    best = [float("inf")] * 4
    events = 0
    published: list[Any] = []
    for _ in range(rounds):
        deltas = deltas_cls("digitex", snapshot_interval_s=1e12)
        update = deltas.update
        update(stream[0])
        start = time.perf_counter()
        for book in stream:
            update(book)
        best[0] = min(best[0], time.perf_counter() - start)

        deltas = deltas_cls("digitex", snapshot_interval_s=1e12)
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

        if not published:  # the events a consumer applies: the first snapshot, then the deltas
            update = deltas_cls("digitex", snapshot_interval_s=1e12).update
            for book in stream:
                published += update(book)
        builder = builder_cls()
        apply = builder.apply
        start = time.perf_counter()
        for event in published:
            apply(event)
        best[3] = min(best[3], time.perf_counter() - start)
        assert builder.synced, "the builder lost the book"
    n = len(stream)
    return n / best[0], n / best[1], n / best[2], events, (len(published) - 1) / best[3]


def main(against: str | None = None) -> list[str]:
    header = "| benchmark (20 levels a side, one core) | result | target | reference: full snapshot encode (same run) | ratio |"
    rows = [header, "|---|---|---|---|---|"]
    before = load_at(against) if against else None
    for name, every in (("typical", False), ("every level changes", True)):
        stream = books(every)
        for label, classes in (("", (BookDeltas, BookBuilder)), (f" [at {against}]", before)):
            if classes is None:
                continue
            compute, with_encode, snapshot, deltas, applied = measure(stream, deltas_cls=classes[0],
                                                                     builder_cls=classes[1])
            rows.append(f"| books: delta computation, {name}{label} | {compute:,.0f} updates/s | >= {TARGET:,}/s | "
                        f"{snapshot:,.0f}/s | x{compute / snapshot:.2f} |")
            rows.append(f"| books: delta computation + encode, {name} ({deltas:,} deltas){label} | {with_encode:,.0f} "
                        f"updates/s | | {snapshot:,.0f}/s | x{with_encode / snapshot:.2f} |")
            rows.append(f"| books: BookBuilder applying the deltas, {name}{label} | {applied:,.0f} deltas/s | | "
                        f"{snapshot:,.0f}/s | x{applied / snapshot:.2f} |")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", metavar="REV", help="also measure marketbus.books at this git revision")
    print("\n".join(main(parser.parse_args().against)))
