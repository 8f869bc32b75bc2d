"""Pipelined flushes (``flush_concurrency`` 2: one flush decodes and writes its data files while
the previous one commits) keep the exactly-once order: no message is acked before the commit that
holds its rows, whichever flush finishes its files first."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from marketbus.runtime.publisher import JetStreamPublisher
from services.history_writer import consumer
from services.history_writer.app import HistoryWriter
from services.history_writer.store.base import Selector
from tests.helpers import wait_for

from .common import trade, unique_symbol, writer_overrides


async def test_a_pipelined_flush_never_acks_before_its_commit(nc, js, nats_url, tmp_path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    sym = unique_symbol("P")
    durable = f"t{uuid.uuid4().hex[:8]}"
    settings = writer_overrides(nats_url, "iceberg", str(tmp_path / "h"), None, durable)
    # the stream holds the other tests' messages of this worker: a writer on the same durable stores
    # them first, so that only this test's envelopes reach the writer under test
    drain = HistoryWriter(**settings)
    await drain.start()
    try:
        async def caught_up() -> bool:
            info = await js.consumer_info("MD", f"{durable}_md")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_for(caught_up, timeout=60, what="the writer through the messages already in the stream")
    finally:
        await drain.stop()

    writer = HistoryWriter(**{**settings, "batch_max_wait_s": 60.0, "batch_max_msgs": 10_000,
                              "batch_max_events": 1_000, "flush_concurrency": 2})
    await writer.start()
    committed: set[int] = set()  # stream sequences whose rows a finished commit holds
    guard = threading.Lock()
    early: list[int] = []  # acked before their commit
    acked: set[int] = set()
    overlap = [0]  # most flushes in flight at once
    table_writer = writer.store.writer  # type: ignore[attr-defined]
    real_commit = table_writer.commit

    def slow_commit(prepared, recheck=None):  # type: ignore[no-untyped-def]
        # a slow commit: the next flush decodes and writes its files meanwhile, and would be done first
        time.sleep(0.2)
        result = real_commit(prepared, recheck)
        with guard:
            committed.update(prepared.rows.column("_seq").to_pylist())
        return result

    real_ack_all = consumer.ack_all

    async def checked_ack_all(nc_, replies, body=b"+ACK"):  # type: ignore[no-untyped-def]
        intake = writer.intakes[0] if writer.intakes else None
        if intake is not None:
            overlap[0] = max(overlap[0], len(intake._held))
        if body == b"+ACK":
            seqs = [consumer.parse_ack_subject(r)[0] for r in replies]
            with guard:
                early.extend(s for s in seqs if s not in committed)
            acked.update(seqs)
        await real_ack_all(nc_, replies, body)

    monkeypatch.setattr(table_writer, "commit", slow_commit)
    monkeypatch.setattr(consumer, "ack_all", checked_ack_all)
    try:
        pub = await JetStreamPublisher(nc).start()
        events = [trade(sym, i) for i in range(8_000)]
        for i in range(0, len(events), 500):
            await pub.publish_batch(events[i:i + 500])
        await pub.flush()
        await pub.close()

        async def all_acked() -> bool:
            return len(acked) >= 16

        await wait_for(all_acked, timeout=60, what="every envelope acked")
        tables = await writer.store.read_table(Selector(kind="trade", symbol=sym), 0, 2**63 - 1)
        assert sorted(tables["trade"].column("id").to_pylist()) == sorted(e.id for e in events)
        assert early == [], f"acked before their commit: {early[:10]}"
        assert overlap[0] >= 2, "the flushes never overlapped: nothing pipelined was tested"
        assert acked <= committed
    finally:
        await writer.stop()
