"""Publish rights are per source (the FinX ingestor may publish md.*.finx.> only), and the history
writer stores an event under the source its payload names: an event of another source published
on an ingestor's own subject would be stored as the other source's data (a forged DigiteX trade
from the FinX identity). The writer refuses such a message (dead letter with the reason)."""

from __future__ import annotations

from marketbus.contracts import codec, subjects
from marketbus.contracts.status import FeedStatus
from marketbus.history.schema import Message, decode_messages

from .common import T0, trade


def test_an_event_of_another_source_than_its_subject_is_refused_the_others_stored() -> None:
    good, forged = trade("S", 1), trade("S", 2, source="digitex")
    batch = codec.encode(codec.make_batch([trade("S", 3), trade("S", 4)])).replace(b'"source":"finx"',
                                                                                 b'"source":"digitex"')
    msgs = [Message("MD", 1, "md.trade.finx.CB.S", codec.encode(good), "trade"),
            Message("MD", 2, "md.trade.finx.CB.S", codec.encode(forged), "trade"),
            Message("MD", 3, "md.trade.finx.CB.S.batch", batch, "batch"),
            Message("MD", 4, "md.trade.digitex.CB.S", codec.encode(forged), "trade"),
            # md.*.finx.> allows a subject of four tokens too
            Message("MD", 5, "md.trade.finx.X", codec.encode(trade("S", 5, source="digitex")), "trade")]
    decoded = decode_messages(msgs, "MD")
    assert sorted(m.seq for m, _ in decoded.bad) == [2, 3, 5]
    assert all("source 'digitex'" in reason and "'finx'" in reason for _, reason in decoded.bad)
    stored = [(r["id"], r["_seq"]) for t in decoded.tables["trade"] for r in t.select(["id", "_seq"]).to_pylist()]
    assert sorted(stored, key=lambda x: x[1]) == [(good.id, 1), (forged.id, 4)] and decoded.events == 2


def test_a_feed_status_of_another_service_than_its_subject_is_refused() -> None:
    def status(service: str, i: int) -> FeedStatus:
        return FeedStatus(id=f"st{i}", service=service, source="finx", venue="CB", symbol="S", kind="trade",
                          state="gap", gap_start=T0, gap_end=T0 + 10, ts=T0 + 20)

    subject = subjects.feed_status("ingest_finx", "finx", "CB", "S")
    msgs = [Message("STATUS", 1, subject, codec.encode(status("ingest_finx", 1)), "feed_status"),
            Message("STATUS", 2, subject, codec.encode(status("ingest_digitex", 2)), "feed_status"),
            # status.ingest_finx.> allows other subjects: they vouch for no feed's source
            Message("STATUS", 3, "status.ingest_finx.x", codec.encode(status("ingest_finx", 3)), "feed_status"),
            Message("STATUS", 4, "status.ingest_digitex", codec.encode(status("ingest_finx", 4)), "feed_status")]
    decoded = decode_messages(msgs, "STATUS")
    reasons = dict((m.seq, reason) for m, reason in decoded.bad)
    assert sorted(reasons) == [2, 3, 4] and "service 'ingest_digitex'" in reasons[2]
    assert "source 'finx'" in reasons[3]
    assert decoded.events == 1
