"""marketbus.books without servers: deltas from successive snapshots, the builder, gaps, hostile
deltas, and the rebuild at a point in time (the same code the ingestors and the CLI run)."""

from __future__ import annotations

import random
from decimal import Decimal

import msgspec
import pytest

from marketbus.books import BookBuilder, BookBuilders, BookDeltas, rebuild
from marketbus.contracts import codec
from marketbus.contracts.market import BookChange, BookDelta, BookLevel, BookSnapshot

D = Decimal


def snap(i: int, bids: list[tuple[str, str, int | None]], asks: list[tuple[str, str, int | None]],
         symbol: str = "X") -> BookSnapshot:
    return BookSnapshot(id=f"s{i}", source="digitex", venue="V", symbol=symbol, ts_event=1_000 + i, ts_recv=2_000 + i,
                        bids=[BookLevel(D(p), D(s), o) for p, s, o in bids],
                        asks=[BookLevel(D(p), D(s), o) for p, s, o in asks])


def walk(rng: random.Random, n: int, depth: int = 20) -> list[BookSnapshot]:
    """Books like a venue's: mostly a few sizes change, at times the ladder moves or thins out."""
    mid, out = 1000, []
    sizes = {side: [rng.randint(1, 40) for _ in range(depth)] for side in ("b", "a")}
    for i in range(n):
        r = rng.random()
        if r < 0.15:
            mid += rng.choice((-2, -1, 1, 2))
        for side in ("b", "a"):
            for _ in range(rng.randint(0, 3)):
                sizes[side][rng.randrange(depth)] = rng.randint(1, 40)
        d = depth - (rng.randint(1, 5) if r > 0.95 else 0)
        out.append(snap(i, [(str(mid - k - 1), str(sizes["b"][k]), k % 4 or None) for k in range(d)],
                        [(f"{mid + k + 1}.0", str(sizes["a"][k]), None) for k in range(depth)]))
    return out


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_book_rebuilt_from_snapshot_and_deltas_equals_every_snapshot() -> None:
    clock = Clock()
    deltas = BookDeltas("digitex", snapshot_interval_s=10.0, clock=clock, seed=lambda: 500)
    builder = BookBuilder()
    outcomes: list[str] = []
    for book in walk(random.Random(7), 400):
        clock.t += 1.0
        for event in deltas.update(book):
            # over the wire and back: what a consumer decodes
            outcomes.append(builder.apply(codec.decode(codec.encode(event))))
        assert builder.synced and builder.bids() == book.bids and builder.asks() == book.asks
    assert outcomes[0] == "snapshot" and builder.gaps == builder.bad == builder.mismatches == 0
    assert outcomes.count("checked") >= 30  # the periodic snapshots, checked against the built book
    assert deltas.counts["first"] == 1 and deltas.counts["delta"] >= 350 and deltas.counts["periodic"] >= 30
    assert builder.sequence == deltas.sequence(("V", "X")) and builder.sequence is not None and builder.sequence > 500


def test_sequences_and_ids() -> None:
    deltas = BookDeltas("digitex", snapshot_interval_s=1e9, seed=lambda: 100)
    a = snap(0, [("10", "1", None)], [("11", "1", None)])
    b = snap(1, [("10", "2", None)], [("11", "1", None)])
    c = snap(2, [("9", "2", 3)], [("11", "1", None)])
    (first,) = deltas.update(a)
    assert isinstance(first, BookSnapshot) and first.sequence == 100 and first.bids == a.bids
    assert deltas.update(a) == []  # unchanged: nothing
    (d1,) = deltas.update(b)
    assert isinstance(d1, BookDelta) and (d1.prev_sequence, d1.sequence) == (100, 101)
    assert d1.changes == [BookChange("bid", D(10), D(2))] and (d1.ts_event, d1.ts_recv) == (b.ts_event, b.ts_recv)
    (d2,) = deltas.update(c)
    assert d2.changes == [BookChange("bid", D(9), D(2), 3), BookChange("bid", D(10), D(0))]  # new, removed
    assert len({first.id, d1.id, d2.id}) == 3
    # a resync (reconnect, failed poll): a snapshot with the next sequence
    deltas.resync(("V", "X"))
    (again,) = deltas.update(c)
    assert isinstance(again, BookSnapshot) and again.sequence == 103 and deltas.counts["resync"] == 1
    # a restart (a new BookDeltas) starts above: its first sequence is the clock in microseconds
    assert BookDeltas("digitex").update(c)[0].sequence > 1_700_000_000_000_000


@pytest.mark.parametrize("book,reason", [
    (snap(1, [("10", "1", None), ("12", "1", None)], [("13", "1", None)]), "unordered"),
    (snap(1, [("10", "1", None), ("10", "2", None)], [("13", "1", None)]), "unordered"),
    (snap(1, [("10", "0", None)], [("13", "1", None)]), "zero_size"),
])
def test_what_a_delta_cannot_say_is_a_snapshot(book: BookSnapshot, reason: str) -> None:
    deltas = BookDeltas("sitagri", snapshot_interval_s=1e9)
    builder = BookBuilder()
    for event in deltas.update(snap(0, [("10", "5", None)], [("13", "1", None)])):
        builder.apply(event)
    (event,) = deltas.update(book)
    assert isinstance(event, BookSnapshot) and deltas.counts[reason] == 1
    assert builder.apply(event) == "snapshot"
    after = snap(2, [("10", "3", None)], [("13", "1", None)])
    (nxt,) = deltas.update(after)  # after an unordered one: a snapshot again (no delta can follow it)
    assert isinstance(nxt, BookSnapshot if reason == "unordered" else BookDelta)
    builder.apply(nxt)
    assert builder.bids() == after.bids


def test_a_dropped_delta_is_detected_and_the_next_snapshot_resyncs() -> None:
    clock = Clock()
    deltas = BookDeltas("digitex", snapshot_interval_s=30.0, clock=clock)
    events = []
    books = walk(random.Random(3), 100)
    for book in books:
        clock.t += 1.0
        events += deltas.update(book)
    dropped = next(i for i, e in enumerate(events) if isinstance(e, BookDelta) and i > 5)
    builder = BookBuilder()
    outcomes = [builder.apply(e) for e in events[:dropped] + events[dropped + 1:]]
    assert outcomes[dropped] == "gap" and builder.gaps == 1
    resumed = next(i for i, o in enumerate(outcomes) if i > dropped and o == "snapshot")
    assert set(outcomes[dropped + 1:resumed]) <= {"waiting"}
    assert builder.synced and builder.bids() == books[-1].bids and builder.asks() == books[-1].asks


def test_hostile_and_out_of_order_deltas_never_raise() -> None:
    builder = BookBuilder()
    base = snap(0, [("10", "1", None)], [("11", "1", None)])
    assert builder.apply(BookDelta(id="d", source="digitex", venue="V", symbol="X", ts_event=1, ts_recv=1,
                                   changes=[], sequence=2, prev_sequence=1)) == "waiting"
    assert builder.apply(msgspec.structs.replace(base, sequence=5)) == "snapshot"

    def delta(seq: int | None, prev: int | None, *changes: BookChange) -> BookDelta:
        return BookDelta(id="d", source="digitex", venue="V", symbol="X", ts_event=2, ts_recv=2, changes=list(changes),
                         sequence=seq, prev_sequence=prev)

    assert builder.apply(delta(5, 4)) == "stale"  # a duplicate
    assert builder.apply(msgspec.structs.replace(base, sequence=4)) == "stale"
    # removing a level the book does not have: bad, nothing applied, waiting for a snapshot
    assert builder.apply(delta(6, 5, BookChange("bid", D(10), D(7)), BookChange("ask", D(99), D(0)))) == "bad"
    assert builder.bad == 1 and not builder.synced and builder.bids() == base.bids
    assert builder.apply(msgspec.structs.replace(base, sequence=9)) == "snapshot"
    assert builder.apply(delta(None, None)) == "bad"
    assert builder.apply(msgspec.structs.replace(base, sequence=10)) == "snapshot"
    # a snapshot of the same sequence that differs: counted, and it wins
    other = snap(1, [("10", "2", None)], [("11", "1", None)])
    assert builder.apply(msgspec.structs.replace(other, sequence=10)) == "mismatch" and builder.mismatches == 1
    assert builder.bids() == other.bids
    many = BookBuilders()
    assert many.apply("not a book") is None and many.apply(msgspec.structs.replace(base, sequence=1)) == "snapshot"
    assert many.get("digitex", "V", "X") is not None


def test_rebuild_at_a_point_in_time() -> None:
    clock = Clock()
    deltas = BookDeltas("digitex", snapshot_interval_s=25.0, clock=clock)
    books = walk(random.Random(11), 120)
    events = []
    for book in books:
        clock.t += 1.0
        events += deltas.update(book)
    shuffled = events[:]
    random.Random(1).shuffle(shuffled)  # the history's order of equal times must not matter
    for k in (0, 1, 24, 25, 26, 60, 119):
        built = rebuild(shuffled, books[k].ts_event)
        assert built.synced and built.bids() == books[k].bids and built.asks() == books[k].asks, k
    assert not rebuild(events, books[0].ts_event - 1).synced  # before the first snapshot: no book
    assert rebuild(events, books[-1].ts_event).snapshot(books[-1]).bids == books[-1].bids


def test_change_of_is_the_checked_constructor_without_the_second_check() -> None:
    from marketbus.contracts.market import change_of

    for level in (BookLevel(D("0.5"), D("0"), None), BookLevel(D("41060.000"), D("1e-8"), 7)):
        for side in ("bid", "ask"):
            made = change_of(side, level)
            assert made == BookChange(side, level.price, level.size, level.orders)
            assert codec.encode(made) == codec.encode(BookChange(side, level.price, level.size, level.orders))  # type: ignore[arg-type]
    assert change_of("bid", BookLevel(D(1), D(2))) is not change_of("bid", BookLevel(D(1), D(2)))
    with pytest.raises(KeyError):
        change_of("middle", BookLevel(D(1), D(2)))  # type: ignore[arg-type]


def test_a_delta_that_cannot_apply_leaves_the_book_as_it_was() -> None:
    """The builder applies a delta in place and undoes it when a later change cannot apply: a
    level added, changed and removed again before the bad change are all rolled back."""
    builder = BookBuilder()
    base = msgspec.structs.replace(snap(0, [("10", "1", 2), ("9", "4", None)], [("11", "1", None)]), sequence=1)
    assert builder.apply(base) == "snapshot"
    assert builder.best_bid() == base.bids[0] and builder.best_ask() == base.asks[0]
    bad = BookDelta(id="d", source="digitex", venue="V", symbol="X", ts_event=2, ts_recv=2, sequence=2, prev_sequence=1,
                    changes=[BookChange("bid", D(12), D(5)), BookChange("bid", D(10), D(3), 1),
                             BookChange("bid", D(9), D(0)), BookChange("bid", D(12), D(0)),
                             BookChange("ask", D(99), D(0))])
    assert builder.apply(bad) == "bad" and not builder.synced
    assert builder.bids() == base.bids and builder.asks() == base.asks and builder.sequence == 1
    assert builder.apply(msgspec.structs.replace(base, sequence=3)) == "snapshot"
    good = msgspec.structs.replace(bad, sequence=4, prev_sequence=3, changes=bad.changes[:3])
    assert builder.apply(good) == "delta"
    assert builder.bids() == [BookLevel(D(12), D(5)), BookLevel(D(10), D(3), 1)]
    assert builder.best_bid() == BookLevel(D(12), D(5))
    empty = BookBuilder()
    assert empty.best_bid() is None and empty.best_ask() is None


def test_book_metrics_are_per_book_with_bounded_cardinality() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from marketbus.books import register_builders, register_deltas

    def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = generate_latest(registry).decode()
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    registry = CollectorRegistry()
    deltas = BookDeltas("digitex", snapshot_interval_s=1e12)
    builders = BookBuilders()
    register_deltas(registry, deltas, max_books=2)
    register_builders(registry, builders, "test", max_books=2)
    for i, symbol in enumerate(("A", "B", "C", "D")):
        for step in range(3):
            for event in deltas.update(snap(step, [("10", str(step + 1), None)], [("11", "1", None)], symbol=symbol)):
                if not (symbol == "B" and step == 1 and isinstance(event, BookDelta)):  # B misses a delta
                    builders.apply(event)
        if i == 0:
            deltas.resync(("V", "A"))
            deltas.resync(("V", "A"))  # one loss of sync, however many failed attempts
    got = samples(registry)

    def value(name: str, **labels: str) -> float:
        return got[(name, frozenset(labels.items()))]

    book = {"source": "digitex", "venue": "V"}
    assert value("marketbus_book_deltas_total", **book, symbol="A") == 2
    assert value("marketbus_book_resyncs_total", **book, symbol="A") == 1
    assert value("marketbus_book_resyncs_total", **book, symbol="B") == 0
    assert value("marketbus_book_snapshots_total", **book, symbol="A", reason="first") == 1
    # C and D share the "_other" labels: their sums, and no gauge (a sum of sequences means nothing)
    other = {"source": "digitex", "venue": "_other", "symbol": "_other"}
    assert value("marketbus_book_deltas_total", **other) == 4
    assert value("marketbus_book_snapshots_total", **other, reason="first") == 2
    assert ("marketbus_book_sequence", frozenset(other.items())) not in got
    assert value("marketbus_book_sequence", **book, symbol="B") == deltas.sequence(("V", "B"))
    assert {labels for name, labels in got if name == "marketbus_book_deltas_total"} == {
        frozenset({**book, "symbol": s}.items()) for s in ("A", "B")} | {frozenset(other.items())}
    # the consumer side: B's missed delta is a gap, and B waits for a snapshot
    mine = {"consumer": "test", "source": "digitex", "venue": "V"}
    assert value("marketbus_book_builder_gaps_total", **mine, symbol="B") == 1
    assert value("marketbus_book_builder_gaps_total", **mine, symbol="A") == 0
    assert value("marketbus_book_builder_events_total", **mine, symbol="B", outcome="gap") == 1
    assert value("marketbus_book_builder_events_total", **mine, symbol="A", outcome="delta") == 2
    assert value("marketbus_book_builder_synced", **mine, symbol="B") == 0
    assert value("marketbus_book_builder_synced", **mine, symbol="A") == 1
    assert value("marketbus_book_builder_events_total", consumer="test", source="digitex", venue="_other",
                 symbol="_other", outcome="delta") == 4
    # a snapshot brings B back: a resync
    builders.apply(deltas.update(snap(9, [("10", "9", None)], [("11", "1", None)], symbol="B"))[0])
    deltas.resync(("V", "B"))
    builders.apply(deltas.update(snap(10, [("10", "9", None)], [("11", "1", None)], symbol="B"))[0])
    got = samples(registry)
    assert value("marketbus_book_builder_resyncs_total", **mine, symbol="B") == 1
    assert value("marketbus_book_builder_synced", **mine, symbol="B") == 1
