"""What a history commit records about its messages, in the Iceberg snapshot summary: the
JetStream stream and the sequence ranges it holds (``a-b,c,d-e``), and the writer that made it.

Its own module because both the writer (which writes them) and the maintenance jobs (which read
them to expire snapshots whose messages are acked) need them, and neither should import the other
for it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

STREAM_PROP = "marketbus.stream"
SEQS_PROP = "marketbus.seqs"
WRITER_PROP = "marketbus.writer"


def encode_ranges(seqs: Iterable[int]) -> str:
    """Sorted sequences -> ``a-b,c,d-e``."""
    arr = np.asarray(seqs, np.int64) if isinstance(seqs, np.ndarray) else np.fromiter(seqs, np.int64)
    if not len(arr):
        return ""
    steps = np.diff(arr)
    if (steps >= 0).all():  # (a commit's rows: by message, in order) the distinct values without a sort
        arr = arr[np.concatenate([[True], steps != 0])]
    else:
        arr = np.unique(arr)
    breaks = np.nonzero(np.diff(arr) != 1)[0]
    starts = np.concatenate([arr[:1], arr[breaks + 1]])
    ends = np.concatenate([arr[breaks], arr[-1:]])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in zip(starts.tolist(), ends.tolist()))


def decode_ranges(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        if not part:
            continue
        a, _, b = part.partition("-")
        out.append((int(a), int(b or a)))
    return out
