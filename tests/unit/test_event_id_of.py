"""``ids.event_id_of`` (compiled BLAKE2b where built): the same ids as ``event_id`` and hashlib,
for heads and tails of every length class (one block, exactly 128 bytes, many blocks, non-ASCII)."""

from __future__ import annotations

import random
from hashlib import blake2b

import pytest

from marketbus.contracts import ids


def test_event_id_of_is_event_id() -> None:
    head = ids.id_head("digitex", "trade", 1)
    assert ids.event_id_of(head, "123456") == ids.event_id("digitex", "trade", 1, 123456)
    head = ids.id_head("finx", "tick", "BTC:USD", "COINBASE")
    assert ids.event_id_of(head, "1700000000000000000\x1f21865.01") == ids.event_id(
        "finx", "tick", "BTC:USD", "COINBASE", 1_700_000_000_000_000_000, "21865.01")


def test_same_hash_as_hashlib_for_every_length() -> None:
    rng = random.Random(16)
    for n in [*range(0, 300), 511, 512, 513, 4000]:
        head = rng.randbytes(rng.randrange(0, 140))
        tail = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(160, 0x3000)])) for _ in range(n))
        expected = blake2b(head + tail.encode(), digest_size=12).hexdigest()
        assert ids.event_id_of(head, tail) == expected, (len(head), n)
    for total in (127, 128, 129, 255, 256, 257):  # block boundaries of the whole message
        head = b"h" * 10
        assert ids.event_id_of(head, "t" * (total - 10)) == blake2b(b"h" * 10 + b"t" * (total - 10),
                                                                    digest_size=12).hexdigest()


def test_a_tail_that_is_not_text_is_refused() -> None:
    with pytest.raises((TypeError, UnicodeEncodeError)):
        ids.event_id_of(b"x", "\ud800")
    with pytest.raises(TypeError):
        ids.event_id_of(b"x", 5)  # type: ignore[arg-type]
