"""Prometheus metrics of books, per book: what :class:`~.delta.BookDeltas` published (producer:
the book ingestors) and what a :class:`~.builder.BookBuilders` saw (consumer: gaps, resyncs).

Both are collectors read at scrape time from the counters the two classes keep anyway, so the
hot paths (a delta per book update, a builder per event) pay nothing for them::

    register_deltas(ingestor.metrics.registry, deltas)               # an ingestor
    register_builders(prometheus_client.REGISTRY, builders, "spread_alerts")   # a consumer

Producer (labels ``source``, ``venue``, ``symbol``):

- ``marketbus_book_snapshots_total`` (+ ``reason``: first, resync, periodic, unordered, zero_size)
- ``marketbus_book_deltas_total``
- ``marketbus_book_resyncs_total``: times the book lost sync (a failed poll or publish, a
  reconnect); the next observation is then published as a snapshot
- ``marketbus_book_sequence``, ``marketbus_book_synced`` (gauges)

Consumer (labels ``consumer``, ``source``, ``venue``, ``symbol``):

- ``marketbus_book_builder_gaps_total``: deltas that showed a missed delta (then waiting)
- ``marketbus_book_builder_resyncs_total``: snapshots that brought the book back in sync
- ``marketbus_book_builder_events_total`` (+ ``outcome``: snapshot, delta, checked, mismatch,
  stale, gap, bad, waiting; see :meth:`~.builder.BookBuilder.apply`)
- ``marketbus_book_builder_synced`` (gauge)

**Cardinality is bounded**: the first ``max_books`` books (in the order they were first seen)
have their own labels; any further book is added to ``venue="_other", symbol="_other"``. A book
keeps its labels for the life of the process, so every counter stays monotonic.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .builder import BookBuilder, BookBuilders
from .delta import REASONS, BookDeltas

MAX_BOOKS = 500
OTHER = "_other"
OUTCOMES = ("snapshot", "delta", "checked", "mismatch", "stale", "gap", "bad", "waiting")


def _bounded(keys: Iterable[Any], max_books: int) -> Iterator[tuple[Any, bool]]:
    """Each key and whether it keeps its own labels (the first ``max_books`` of the given order)."""
    for i, key in enumerate(keys):
        yield key, i < max_books


class _Sums:
    """Samples per label tuple, summed (several books may share the ``_other`` labels)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], float] = {}

    def add(self, labels: tuple[str, ...], value: float) -> None:
        self.values[labels] = self.values.get(labels, 0) + value

    def into(self, family: CounterMetricFamily | GaugeMetricFamily) -> Metric:
        for labels, value in self.values.items():
            family.add_metric(list(labels), value)
        return family


class DeltasCollector(Collector):
    """The producer metrics of one :class:`BookDeltas` (see the module doc)."""

    def __init__(self, deltas: BookDeltas, max_books: int = MAX_BOOKS) -> None:
        self.deltas = deltas
        self.max_books = max_books

    def collect(self) -> Iterator[Metric]:
        source = self.deltas.source
        snapshots, deltas, resyncs, sequence, synced = _Sums(), _Sums(), _Sums(), _Sums(), _Sums()
        for (venue, symbol), own in _bounded(list(self.deltas.books), self.max_books):
            state = self.deltas.books[(venue, symbol)]
            book = (source, venue, symbol) if own else (source, OTHER, OTHER)
            for reason in REASONS:
                snapshots.add((*book, reason), state.snapshots[reason])
            deltas.add(book, state.deltas)
            resyncs.add(book, state.resyncs)
            if own:  # a sum of sequences or of flags means nothing
                sequence.add(book, state.sequence)
                synced.add(book, 1 if state.synced else 0)
        labels = ["source", "venue", "symbol"]
        yield snapshots.into(CounterMetricFamily("marketbus_book_snapshots", "book snapshots published, by reason",
                                                 labels=[*labels, "reason"]))
        yield deltas.into(CounterMetricFamily("marketbus_book_deltas", "book deltas published", labels=labels))
        yield resyncs.into(CounterMetricFamily(
            "marketbus_book_resyncs", "times a book lost sync (failed poll or publish): a snapshot follows",
            labels=labels))
        yield sequence.into(GaugeMetricFamily("marketbus_book_sequence", "a book's last published sequence",
                                              labels=labels))
        yield synced.into(GaugeMetricFamily("marketbus_book_synced",
                                            "1 when a book's next observation is published as a delta", labels=labels))


class BuildersCollector(Collector):
    """The consumer metrics of one :class:`BookBuilders` (see the module doc)."""

    def __init__(self, builders: BookBuilders, consumer: str, max_books: int = MAX_BOOKS) -> None:
        self.builders = builders
        self.consumer = consumer
        self.max_books = max_books

    def collect(self) -> Iterator[Metric]:
        events, gaps, resyncs, synced = _Sums(), _Sums(), _Sums(), _Sums()
        for key, own in _bounded(list(self.builders.books), self.max_books):
            b: BookBuilder = self.builders.books[key]
            source, venue, symbol = key
            book = (self.consumer, source, venue, symbol) if own else (self.consumer, source, OTHER, OTHER)
            counts = {"snapshot": b.snapshots - b.mismatches, "delta": b.deltas, "checked": b.checked - b.mismatches,
                      "mismatch": b.mismatches, "stale": b.stale, "gap": b.gaps, "bad": b.bad, "waiting": b.ignored}
            for outcome in OUTCOMES:
                events.add((*book, outcome), counts[outcome])
            gaps.add(book, b.gaps)
            resyncs.add(book, b.resyncs)
            if own:
                synced.add(book, 1 if b.synced else 0)
        labels = ["consumer", "source", "venue", "symbol"]
        yield gaps.into(CounterMetricFamily("marketbus_book_builder_gaps",
                                            "book deltas that showed a missed delta (then waiting for a snapshot)",
                                            labels=labels))
        yield resyncs.into(CounterMetricFamily("marketbus_book_builder_resyncs",
                                               "snapshots that brought a book back in sync", labels=labels))
        yield events.into(CounterMetricFamily("marketbus_book_builder_events", "book events applied, by outcome",
                                              labels=[*labels, "outcome"]))
        yield synced.into(GaugeMetricFamily("marketbus_book_builder_synced", "1 while a book is in sync",
                                            labels=labels))


def register_deltas(registry: CollectorRegistry, deltas: BookDeltas, *, max_books: int = MAX_BOOKS) -> DeltasCollector:
    """Export ``deltas``'s per-book counts on ``registry`` (an ingestor's)."""
    collector = DeltasCollector(deltas, max_books)
    registry.register(collector)
    return collector


def register_builders(registry: CollectorRegistry, builders: BookBuilders, consumer: str, *,
                      max_books: int = MAX_BOOKS) -> BuildersCollector:
    """Export ``builders``'s per-book counts on ``registry``, labelled ``consumer``."""
    collector = BuildersCollector(builders, consumer, max_books)
    registry.register(collector)
    return collector
