"""Which subscription (generation) each collection period of a feed belongs to.

A feed's periods are opened and closed by the commands (``transition``) and by the data flow
(``set_period``: the vendor session down/up, an ingestor restart). A re-subscribe through the
TickSupply API starts a new generation at the moment of its ``add``; each period, or the part of
one, belongs to the generation current at that time. The generations are stored in a real
JetStream KV bucket, as in the service.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from marketbus.contracts.feeds import Feed, Period
from marketbus.vendor.feeds import Resolved, set_period, transition
from services.export_orchestrator.history_source import StreamKey
from services.export_orchestrator.subscriptions import Subscriptions, new_generation

STREAM = StreamKey("trade", "ticksupply", "binance", "ETHUSDT")
RESOLVED = Resolved("binance", "ETHUSDT", "trade")


def cmd(feed: Feed | None, op: str, t: int) -> Feed:
    out, changed = transition(feed, op, "102", "ticksupply", RESOLVED, t, "api")
    assert changed
    return out


def flow(feed: Feed, flowing: bool, t: int, *, close_at: int | None = None) -> Feed:
    """The data flow opens (``flowing``) or closes the period; the feed unchanged when it has
    nothing to do (a removed feed gets no flow periods)."""
    return set_period(feed, flowing, t, close_at=close_at) or feed


@pytest.fixture
async def subs(js: Any) -> Any:
    kv = await js.create_key_value(bucket=f"t_subgen_{uuid.uuid4().hex[:12]}")
    yield Subscriptions(feeds=None, history=None, kv=kv)  # type: ignore[arg-type]
    await js.delete_key_value(kv._name)


async def resubscribe(subs: Subscriptions, feed: Feed, t: int) -> Feed:
    feed = cmd(feed, "add", t)
    await subs._add_generation(feed, new_generation(feed))
    return feed


def periods(sub: Any) -> list[tuple[int, int | None]]:
    return [(p.start_ns, p.end_ns) for p in sub.periods]


async def test_periods_opened_and_closed_by_the_flow_go_to_the_generation_of_their_time(subs: Subscriptions) -> None:
    feed = cmd(None, "add", 100)
    feed = flow(feed, False, 150)  # the vendor session goes down ...
    feed = flow(feed, True, 200)  # ... and comes back
    feed = cmd(feed, "remove", 300)  # subscription deleted
    assert flow(feed, True, 350) == feed  # no flow period for a removed feed
    feed = await resubscribe(subs, feed, 400)
    feed = flow(feed, False, 400)  # the session was down at the add: an empty period ...
    feed = flow(feed, True, 600)  # ... the flow opens the next one later: still the new generation's
    feed = flow(feed, False, 650)
    feed = flow(feed, True, 700)

    old, new = await subs.of_feed(feed, STREAM)
    assert periods(old) == [(100, 150), (200, 300)]
    assert old.status == "deleted" and old.created_ns == 100
    assert periods(new) == [(400, 400), (600, 650), (700, None)]
    assert new.status == "active" and new.created_ns == 400 and new.id != old.id
    assert {s["id"] for s in old.spans()}.isdisjoint(s["id"] for s in new.spans())


async def test_a_period_reconciled_after_a_crash_never_reaches_back_before_the_resubscribe(subs: Subscriptions) -> None:
    feed = cmd(None, "add", 100)
    feed = cmd(feed, "remove", 300)
    feed = await resubscribe(subs, feed, 400)
    # the instance that took the add crashed with its last flow refresh at 380 (before the add);
    # the next one starts at 700 and closes the dangling period there (never before its start)
    feed = flow(feed, False, 700, close_at=380)
    feed = flow(feed, True, 700)
    old, new = await subs.of_feed(feed, STREAM)
    assert periods(old) == [(100, 300)]
    assert periods(new) == [(400, 400), (700, None)]


async def test_a_period_straddling_a_resubscribe_is_split_between_the_generations(subs: Subscriptions) -> None:
    """Not made by the commands (a delete closes the period), but an operator's edit of the
    record can: each generation gets its own part, nothing is counted twice."""
    feed = cmd(None, "add", 100)
    feed = cmd(feed, "remove", 300)
    feed = await resubscribe(subs, feed, 400)
    feed = cmd(feed, "remove", 500)
    feed = await resubscribe(subs, feed, 600)
    edited = Feed(**{**{f: getattr(feed, f) for f in feed.__struct_fields__},
                     "periods": [Period(100, 450), Period(550, None)]})
    first, second, third = await subs.of_feed(edited, STREAM)
    assert periods(first) == [(100, 400)]
    assert periods(second) == [(400, 450), (550, 600)]
    assert periods(third) == [(600, None)]
    assert [s.status for s in (first, second, third)] == ["deleted", "deleted", "active"]
    assert second.ranges(10_000) == [(400, 450), (550, 600)]
