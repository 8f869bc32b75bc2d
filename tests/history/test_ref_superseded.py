"""REF keeps the last value per subject (``max_msgs_per_subject=1``): a value superseded before
the history writer pulled it, or while the writer held it unacked, is gone from the stream. The
writer must store the newest value, leave nothing pending on its consumer, stay healthy and
dead-letter nothing (an ack of a message the stream dropped is not an error)."""

from __future__ import annotations

import uuid
from decimal import Decimal

from marketbus.contracts import Instrument, codec, event_id, subjects
from marketbus.contracts.status import DeadLetter
from services.history_writer.app import HistoryWriter
from services.history_writer.store.base import Selector
from tests.helpers import wait_for

from .common import SEC, T0, unique_symbol, writer_overrides


def version(sym: str, n: int) -> Instrument:
    tick = Decimal("0.01") * n
    return Instrument(id=event_id("finx", "instrument", sym, str(tick)), source="finx", venue="CB", symbol=sym,
                      ts_event=T0 + n * SEC, ts_recv=T0 + n * SEC, instrument_type="spot", vendor_symbol=sym,
                      tick_size=tick)


async def publish(js, inst: Instrument) -> int:
    """Publish; returns its stream sequence."""
    ack = await js.publish(subjects.ref("instrument", "finx", "CB", inst.symbol), codec.encode(inst),
                     headers=codec.headers_for(inst))
    return int(ack.seq)


async def test_a_reference_value_superseded_before_or_while_pulled_leaves_the_newest_stored(
        nc, js, nats_url, tmp_path) -> None:
    before, during = unique_symbol("R"), unique_symbol("R")
    for n in (1, 2, 3):  # superseded before any writer pulls: only v3 is left in the stream
        await publish(js, version(before, n))
    durable = f"r{uuid.uuid4().hex[:8]}"
    dlq = await nc.subscribe("dlq.history_writer.>")
    # a long batch wait and held acks: v1 of `during` is pulled and held while v2 replaces it
    writer = HistoryWriter(**writer_overrides(nats_url, "iceberg", str(tmp_path / "h"), None, durable,
                                              batch_max_wait_s=1.0, debug_ack_delay_s=0.5))
    await writer.start()
    try:
        async def newest(sym: str) -> list[Decimal]:
            tables = await writer.store.read_table(Selector(kind="instrument", symbol=sym), 0, 2**63 - 1)
            table = tables.get("instrument")
            return [] if table is None else [Decimal(str(t)) for t in table.column("tick_size").to_pylist()]

        seq = await publish(js, version(during, 1))
        await wait_for(lambda: _held(js, durable, seq), 10, interval=0.02, what="v1 pulled and held by the writer")
        await publish(js, version(during, 2))  # v1 leaves the stream while the writer holds it

        async def stored() -> bool:
            return Decimal("0.03") in await newest(before) and Decimal("0.02") in await newest(during)

        await wait_for(stored, 20, interval=0.2, what="the newest values stored")
        assert await newest(before) == [Decimal("0.03")]  # the superseded ones never reached it

        async def settled() -> bool:
            info = await js.consumer_info("REF", f"{durable}_ref")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_for(settled, 15, interval=0.2, what="nothing left pending on the REF consumer")
        assert not writer.health_problems()
        letters = []
        while True:
            try:
                msg = await dlq.next_msg(timeout=0.3)
            except Exception:
                break
            letter = codec.decode(msg.data)
            if isinstance(letter, DeadLetter) and (
                before.encode() in letter.payload or during.encode() in letter.payload
            ):
                letters.append(letter)
        assert letters == []
    finally:
        await writer.stop()
        await dlq.unsubscribe()


async def _held(js, durable: str, seq: int) -> bool:
    """The writer was delivered message ``seq`` and has not acked it yet."""
    try:
        info = await js.consumer_info("REF", f"{durable}_ref")
    except Exception:
        return False
    return info.delivered.stream_seq >= seq and info.num_ack_pending > 0
