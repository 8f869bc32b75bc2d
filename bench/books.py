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


def _time(run: Any) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(stream: list[BookSnapshot], versions: list[tuple[Any, Any]], rounds: int = 9,
            ) -> tuple[float, list[tuple[float, float, int, float]]]:
    """The snapshot encode reference (updates/s) and, per version ``(BookDeltas, BookBuilder)``,
    (deltas/s, deltas+encode/s, deltas per stream, builder applies/s) for one stream. Every round
    runs the reference and every version in turn (interleaved: a change of host load hits all)."""
    encode = codec.encode
    reference = float("inf")
    best = [[float("inf")] * 3 for _ in versions]
    events = [0] * len(versions)
    published: list[list[Any]] = []
    for deltas_cls, _ in versions:  # the events a consumer applies: the first snapshot, then the deltas
        update = deltas_cls("digitex", snapshot_interval_s=1e12).update
        published.append([event for book in stream for event in update(book)])

    def compute(deltas_cls: Any) -> None:
        update = deltas_cls("digitex", snapshot_interval_s=1e12).update
        update(stream[0])
        for book in stream:
            update(book)

    def compute_encode(deltas_cls: Any, i: int) -> None:
        deltas = deltas_cls("digitex", snapshot_interval_s=1e12)
        update = deltas.update
        update(stream[0])
        for book in stream:
            for event in update(book):
                encode(event)
        events[i] = deltas.counts["delta"]

    def snapshots() -> None:
        for book in stream:
            encode(book)

    def build(builder_cls: Any, i: int) -> None:
        builder = builder_cls()
        apply = builder.apply
        for event in published[i]:
            apply(event)
        assert builder.synced, "the builder lost the book"

    for _ in range(rounds):
        reference = min(reference, _time(snapshots))
        for i, (deltas_cls, builder_cls) in enumerate(versions):
            best[i][0] = min(best[i][0], _time(lambda: compute(deltas_cls)))  # noqa: B023 - called at once
            best[i][1] = min(best[i][1], _time(lambda: compute_encode(deltas_cls, i)))  # noqa: B023
            best[i][2] = min(best[i][2], _time(lambda: build(builder_cls, i)))  # noqa: B023
    n = len(stream)
    return n / reference, [(n / b[0], n / b[1], events[i], (len(published[i]) - 1) / b[2])
                           for i, b in enumerate(best)]


def main(against: str | None = None) -> list[str]:
    header = (
        "| benchmark (20 levels a side, one core) | result | target | reference: full snapshot encode (same run) "
        "| ratio |"
    )
    rows = [header, "|---|---|---|---|---|"]
    versions = [("", (BookDeltas, BookBuilder))]
    if against:
        versions.append((f" [at {against}]", load_at(against)))
    for name, every in (("typical", False), ("every level changes", True)):
        snapshot, results = measure(books(every), [classes for _, classes in versions])
        for (label, _), (compute, with_encode, deltas, applied) in zip(versions, results, strict=True):
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
