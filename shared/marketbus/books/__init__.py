"""Order books as snapshot + deltas.

- :class:`BookDeltas` (producer side, :mod:`.delta`): the events an ingestor publishes for each
  observed book: a snapshot first (and after a resync, and periodically), then deltas with a
  per-book sequence number.
- :class:`BookBuilder` / :class:`BookBuilders` (consumer side, :mod:`.builder`): apply snapshots
  and deltas, detect a sequence gap (then wait for the next snapshot), expose the book.
- :func:`rebuild` / :func:`book_at` (:mod:`.history`): a book at a point in time from the history.
"""

from .builder import BookBuilder, BookBuilders
from .delta import BookDeltas, diff_side
from .history import book_at, rebuild

__all__ = ["BookBuilder", "BookBuilders", "BookDeltas", "book_at", "diff_side", "rebuild"]
