"""Order books as snapshot + deltas.

- :class:`BookDeltas` (producer side, :mod:`.delta`): the events an ingestor publishes for each
  observed book: a snapshot first (and after a resync, and periodically), then deltas with a
  per-book sequence number.
- :class:`BookBuilder` / :class:`BookBuilders` (consumer side, :mod:`.builder`): apply snapshots
  and deltas, detect a sequence gap (then wait for the next snapshot), expose the book.
- :func:`rebuild` / :func:`book_at` (:mod:`.history`): a book at a point in time from the history.
- :func:`register_deltas` / :func:`register_builders` (:mod:`.metrics`): both sides' per-book
  counts (snapshots, deltas, resyncs, gaps) as Prometheus metrics.
"""

from .builder import BookBuilder, BookBuilders
from .delta import BookDeltas, diff_side
from .history import book_at, rebuild
from .metrics import register_builders, register_deltas

__all__ = ["BookBuilder", "BookBuilders", "BookDeltas", "book_at", "diff_side", "rebuild", "register_builders",
           "register_deltas"]
