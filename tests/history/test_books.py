"""Books in the history: the writer stores snapshots and deltas as published (both backends), a
book rebuilt at a point in time from the history (``marketbus.books.book_at`` over NATS, as
``marketbus history book`` does) equals the book observed then, and hostile delta messages are
dead-lettered while the good ones are stored."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from decimal import Decimal

import pytest

from marketbus.books import BookDeltas, book_at
from marketbus.cli.output import plain
from marketbus.clients import HistoryClient
from marketbus.contracts import BookLevel, BookSnapshot, DeadLetter, codec, subjects
from marketbus.contracts.market import BookDelta
from marketbus.runtime.publisher import JetStreamPublisher
from services.history_writer.app import HistoryWriter
from services.history_writer.store.base import Selector
from tests.helpers import wait_for

from .common import SEC, T0, unique_symbol, writer_overrides
from .test_cli import invoke
from .test_writer import _drop_pg, _fresh_pg


@pytest.fixture(params=["iceberg", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def dsn(backend: str, request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("pg_dsn") if backend == "postgres" else None


def observed(symbol: str, n: int) -> list[BookSnapshot]:
    """A book observed every second, 20 levels a side, a few sizes and at times the ladder change."""
    rng, mid, out = random.Random(5), 5000, []
    sizes = [rng.randint(1, 30) for _ in range(40)]
    for i in range(n):
        if rng.random() < 0.2:
            mid += rng.choice((-1, 1))
        for _ in range(3):
            sizes[rng.randrange(40)] = rng.randint(1, 30)
        ts = T0 + i * SEC
        out.append(BookSnapshot(
            id=f"b{i}", source="digitex", venue="DIGITEX", symbol=symbol, ts_event=ts, ts_recv=ts + 5,
            bids=[BookLevel(Decimal(mid - k - 1) / 2, Decimal(sizes[k]), k % 3 or None) for k in range(20)],
            asks=[BookLevel(Decimal(mid + k + 1) / 2, Decimal(sizes[20 + k])) for k in range(20)], quality="realtime"))
    return out


async def test_book_at_a_point_in_time_from_the_history(nc, js, nats_url, tmp_path, backend, dsn) -> None:
    sym = unique_symbol("BK")
    durable = f"t{uuid.uuid4().hex[:8]}"
    books = observed(sym, 60)
    clock = iter(range(10_000))
    deltas = BookDeltas("digitex", snapshot_interval_s=20.0, clock=lambda: float(next(clock)))
    events = [e for book in books for e in deltas.update(book)]
    assert sum(isinstance(e, BookSnapshot) for e in events) >= 3 and sum(isinstance(e, BookDelta) for e in events) >= 50
    # hostile deltas on the delta subject: not JSON, a negative price, a bad side, a string sequence
    good = next(e for e in events if isinstance(e, BookDelta))
    raw = codec.encode(good).decode()
    price = str(good.changes[0].price)
    hostile = [b'{"type":"book_delta","id":"x' + sym.encode() + b'"',
               raw.replace(f'"{price}"', f'"-{price}"', 1).replace(good.id, "neg" + sym).encode(),
               raw.replace('["bid",', '["middle",', 1).replace('["ask",', '["middle",', 1)
                  .replace(good.id, "side" + sym).encode(),
               raw.replace(f'"sequence":{good.sequence}', '"sequence":"x"').replace(good.id, "seq" + sym).encode()]
    dlq = await nc.subscribe(subjects.dead_letter("history_writer", "digitex"))
    await _fresh_pg(dsn, durable)
    writer = HistoryWriter(**writer_overrides(nats_url, backend, str(tmp_path / "h"), dsn, durable))
    await writer.start()
    try:
        pub = await JetStreamPublisher(nc).start()
        for event in events:
            await pub.publish_event(event)
        await pub.flush()
        await pub.close()
        subject = subjects.md("book_delta", "digitex", "DIGITEX", sym)
        for payload in hostile:
            await js.publish(subject, payload)

        async def stored() -> int:
            tables = await writer.store.read_table(Selector(symbol=sym), 0, 2**63 - 1)
            return sum(t.num_rows for t in tables.values())

        async def all_stored() -> bool:
            return await stored() == len(events)

        await wait_for(all_stored, timeout=20, what="every snapshot and delta stored")

        async def letters() -> list[bytes]:
            got: list[bytes] = []
            while len(got) < len(hostile):
                letter = codec.decode((await dlq.next_msg(timeout=10)).data)
                if isinstance(letter, DeadLetter) and sym.encode() in letter.payload:
                    assert letter.reason and letter.subject == subject
                    got.append(letter.payload)
            return got

        assert sorted(await asyncio.wait_for(letters(), 20)) == sorted(hostile)
        stored_events = [e async for e in writer.store.read_events(Selector(symbol=sym), 0, 2**63 - 1)]
        assert sorted(stored_events, key=lambda e: e.id) == sorted(events, key=lambda e: e.id)  # both kinds, exactly

        history = HistoryClient(nc)
        for k in (0, 1, 19, 20, 21, 40, 59):
            built = await book_at(history, "digitex", "DIGITEX", sym, books[k].ts_event + SEC // 2,
                                  lookback_ns=5 * SEC)
            assert built.synced and built.bids() == books[k].bids and built.asks() == books[k].asks, k
        assert not (await book_at(history, "digitex", "DIGITEX", sym, T0 - 1)).synced

        # the CLI: `marketbus history book source.venue.symbol --at TIME`
        k = 33
        at = str(books[k].ts_event + SEC // 2)
        res = await invoke(["history", "book", f"digitex.DIGITEX.{sym}", "--at", at, "--json", "--nats-url", nats_url])
        assert res.exit_code == 0, res.output
        got = json.loads(res.stdout)
        assert got["bids"] == [[plain(lv.price), plain(lv.size), lv.orders] for lv in books[k].bids]
        assert got["asks"] == [[plain(lv.price), plain(lv.size), lv.orders] for lv in books[k].asks]
        res = await invoke(["history", "book", f"digitex.DIGITEX.{sym}", "--at", at, "--depth", "3",
                            "--nats-url", nats_url])
        assert res.exit_code == 0, res.output
        assert f"{plain(books[k].bids[0].price)} │ {plain(books[k].asks[0].price)}" in res.output
        assert (
            f"│ {plain(books[k].bids[2].price)} │" in res.output
            and f"│ {plain(books[k].bids[3].price)} │" not in res.output
        )
        res = await invoke(["history", "book", f"digitex.DIGITEX.{sym}", "--at", str(T0 - 1), "--nats-url", nats_url])
        assert res.exit_code == 1 and res.stderr.startswith(f"error: no book of digitex.DIGITEX.{sym} at ")
        res = await invoke(["history", "book", "digitex.*", "--nats-url", nats_url])
        assert res.exit_code == 2 and "write the book as source.venue.symbol" in res.stderr
    finally:
        await _drop_pg(writer)
        await writer.stop()
        await dlq.unsubscribe()


