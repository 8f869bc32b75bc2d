"""The duplicate-event-id check of the history writer (``writer._first_per_id``): a repeated id
within an envelope, or across the envelopes of one flush, is stored once (its first row), by the
compiled check (``_checks.first_ids``) and by the vectorized Arrow fallback alike."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from marketbus.contracts import codec
from marketbus.history import writer as writer_mod
from marketbus.history.lakehouse import LakehouseSettings
from marketbus.history.schema import Message, decode_messages

from .common import trade


def _expected(ids: list[str]) -> list[bool]:
    seen: set[str] = set()
    out = []
    for i in ids:
        out.append(i not in seen)
        seen.add(i)
    return out


@pytest.fixture(params=["compiled", "arrow"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "compiled":
        assert writer_mod._FIRST_IDS is not None, "the C extension lacks first_ids: rerun `make venv`"
    else:
        monkeypatch.setattr(writer_mod, "_FIRST_IDS", None)
    return str(request.param)


def test_first_of_each_matches_a_plain_set_on_many_shapes(path: str) -> None:
    """Random ids (empty, short, long, shared prefixes) with repeats, over several chunks that are
    slices of larger arrays (non-zero offsets): the mask is exactly the first occurrences."""
    rnd = random.Random(14)
    for trial in range(300):
        pool = [("x" * rnd.randrange(0, 40)) + str(rnd.randrange(0, 50)) for _ in range(rnd.randrange(1, 60))]
        pool += [""] if trial % 7 == 0 else []
        chunks = []
        for _ in range(rnd.randrange(1, 5)):
            values = [rnd.choice(pool) for _ in range(rnd.randrange(0, 80) + 3)]
            start = rnd.randrange(0, 3)
            chunks.append(pa.array(values, pa.string()).slice(start, len(values) - start - rnd.randrange(0, 2)))
        ids = pa.chunked_array(chunks, pa.string())
        flat = ids.to_pylist()
        want = _expected(flat)
        got = writer_mod._first_of_each(ids)
        if all(want):
            assert got is None, (path, flat)
        else:
            assert got is not None and got.tolist() == want, (path, flat)


def test_all_distinct_ids_give_none_and_a_large_column_is_exact(path: str) -> None:
    ids = pa.chunked_array([pa.array([f"id{i:08d}" for i in range(200_000)])])
    assert writer_mod._first_of_each(ids) is None
    doubled = pa.chunked_array([ids.chunk(0), ids.chunk(0).slice(150_000)])
    mask = writer_mod._first_of_each(doubled)
    assert mask is not None and mask.sum() == 200_000 and mask[:200_000].all() and not mask[200_000:].any()


def test_a_repeated_id_within_an_envelope_and_across_envelopes_of_a_flush_is_stored_once(path: str, tmp_path) -> None:
    """Three batch envelopes (scanned by the compiled envelope scan) in one flush: envelope 1
    repeats one of its own events, envelope 2 repeats two events of envelope 1 (other sizes: the
    first row of each id is the one kept, with its message's sequence). Then a second flush of
    new envelopes repeating an id within itself: stored once too; every other row stored, once."""
    events = [trade("DUP", i) for i in range(10)]
    first = codec.encode(codec.make_batch([*events[:5], events[2]]))
    changed = [e.__class__(**{**{f: getattr(e, f) for f in e.__struct_fields__}, "size": e.size * 2})
               for e in events[:2]]
    second = codec.encode(codec.make_batch([*changed, *events[5:8]]))
    third = codec.encode(codec.make_batch(events[8:]))
    msgs = [Message("MD", seq, "md.trade.finx.CB.DUP", data, "batch")
            for seq, data in ((11, first), (12, second), (13, third))]
    decoded = decode_messages(msgs, "MD")
    assert decoded.bad == [] and decoded.events == 6 + 5 + 2
    rows = pa.concat_tables(decoded.tables["trade"])
    w = writer_mod.HistoryTableWriter(LakehouseSettings(history_dir=str(tmp_path)), "w")
    assert w.append("trade", "MD", rows) == (10, 3)  # 3 repeats dropped
    again = [trade("DUP", i) for i in range(10, 14)]
    fourth = codec.encode(codec.make_batch([again[0], again[1], again[0], again[2], again[3], again[3]]))
    decoded = decode_messages([Message("MD", 14, "md.trade.finx.CB.DUP", fourth, "batch")], "MD")
    assert w.append("trade", "MD", pa.concat_tables(decoded.tables["trade"])) == (4, 2)
    stored = w.tables.get("trade", refresh=True).scan().to_arrow()
    ids = stored.column("id").to_pylist()
    assert sorted(ids) == sorted(e.id for e in events + again)  # each once
    by_id = {i: (seq, size) for i, seq, size in zip(ids, stored.column("_seq").to_pylist(),
                                                   stored.column("size").to_pylist(), strict=True)}
    for e in events[:5]:  # the first row of each repeated id: envelope 1's, not envelope 2's doubled size
        assert by_id[e.id] == (11, e.size)
    assert np.array([by_id[e.id][0] for e in events[5:8]]).tolist() == [12, 12, 12]
    assert {by_id[e.id][0] for e in again} == {14}


def test_the_compiled_check_refuses_buffers_that_are_not_a_string_column() -> None:
    """Offsets past the data or not ascending: an error, never a read out of the buffers."""
    import struct

    first_ids = writer_mod._FIRST_IDS
    assert first_ids is not None, "the C extension lacks first_ids: rerun `make venv`"
    with pytest.raises(ValueError, match="not ascending"):
        first_ids([(struct.pack("3i", 0, 5, 2), b"abcde", 0, 2)])
    with pytest.raises(ValueError, match="out of the data"):
        first_ids([(struct.pack("2i", 0, 9), b"abc", 0, 1)])
    with pytest.raises(ValueError, match="too short"):
        first_ids([(struct.pack("2i", 0, 1), b"a", 1, 1)])
    assert first_ids([(struct.pack("3i", 0, 1, 2), b"aa", 0, 2)]) == b"\x01\x00"
    assert first_ids([]) is None
