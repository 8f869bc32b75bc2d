"""The writer's flush bound counted in events: batch envelopes arriving fast are committed in
flushes of about ``batch_max_events`` events (their events estimated from their bytes), not only
when ``batch_max_wait_s`` runs out or by the number of messages."""

from __future__ import annotations

import time
import uuid

from marketbus.runtime.publisher import JetStreamPublisher
from services.history_writer.app import HistoryWriter
from services.history_writer.store.base import Selector
from tests.helpers import wait_for

from .common import trade, unique_symbol, writer_overrides


async def test_batch_envelopes_are_flushed_by_their_events(nc, js, nats_url, tmp_path) -> None:
    sym = unique_symbol("F")
    durable = f"t{uuid.uuid4().hex[:8]}"
    settings = writer_overrides(nats_url, "iceberg", str(tmp_path / "h"), None, durable)
    # the stream holds the other tests' messages of this worker: a writer on the same durable stores
    # them first, so that only this test's envelopes reach the writer under test
    drain = HistoryWriter(**settings)
    await drain.start()
    try:
        async def caught_up() -> bool:
            info = await js.consumer_info("MD", f"{durable}_md")  # the writers' MD consumer
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_for(caught_up, timeout=60, what="the writer through the messages already in the stream")
    finally:
        await drain.stop()
    # time and message bounds out of reach: only the events bound can start a flush
    writer = HistoryWriter(**{**settings, "batch_max_wait_s": 60.0, "batch_max_msgs": 10_000,
                              "batch_max_events": 2_000})
    await writer.start()
    try:
        before = {s.snapshot_id for s in _md_snapshots(writer)}
        pub = await JetStreamPublisher(nc).start()
        events = [trade(sym, i) for i in range(6_000)]
        started = time.monotonic()
        for i in range(0, len(events), 500):
            await pub.publish_batch(events[i:i + 500])
        await pub.flush()
        await pub.close()

        async def stored() -> int:
            tables = await writer.store.read_table(Selector(kind="trade", symbol=sym), 0, 2**63 - 1)
            return tables["trade"].num_rows if "trade" in tables else 0

        async def most_stored() -> bool:
            return await stored() >= 4_000

        await wait_for(most_stored, timeout=30, what="flushes started by the events bound")
        assert time.monotonic() - started < 30  # long before batch_max_wait_s
        added = [int(s.summary.additional_properties.get("added-records", 0)) for s in _md_snapshots(writer)
                 if s.snapshot_id not in before and s.summary is not None]
        assert added and all(1_000 <= n <= 4_000 for n in added), added  # about 2,000 each, whole envelopes
    finally:
        await writer.stop()


def _md_snapshots(writer: HistoryWriter) -> list:
    """The trade table's snapshots of commits from the MD stream (none before the table exists)."""
    table = writer.store.writer.tables.get("trade", refresh=True)  # type: ignore[attr-defined]
    if table is None:
        return []
    return [s for s in table.snapshots()
            if s.summary is not None and s.summary.additional_properties.get("marketbus.stream") == "MD"]
