"""Live pushes the bus does not take, while the Sitagri sandbox keeps pushing: a nats-server
kill -9 longer than ``publish_retry_s``, then a stream that stores nothing for a while (what a
cluster without a stream leader answers: no responders). The publisher gives up on those pushes;
the ingestor reports a ``gap`` of its ``sitagri/publishing`` feed, back-fills the range from the
vendor's history once the bus takes messages again, and reports it ``resynced``: the stream then
holds every tick the sandbox emitted, once, and no gap is left open.

(Across a kill -9 the client library buffers what is published while it reconnects and sends it
on reconnect, so some given-up pushes do reach the stream: the back-fill re-sends them with the
same Nats-Msg-Id and the stream drops the duplicates. With no stream capturing the subject the
pushes are really lost: only the back-fill brings them.)"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import nats
import pytest

from marketbus.contracts.market import MarketPrice
from marketbus.contracts.status import FeedStatus
from marketbus.contracts.streams import INGEST_STATE, MARKET_DATA
from marketbus.history.coverage import open_gaps
from marketbus.runtime import kv as kv_snapshot
from marketbus.runtime.natsserver import NatsServer
from tests.helpers import wait_for
from tests.ingest_finx.bus import duplicates, events_of, read_stream

from .conftest import ingestor, sandbox
from .test_recovery import C01, expected_ids


async def test_pushes_given_up_during_a_nats_outage_are_back_filled(nats_server: NatsServer) -> None:
    async with sandbox(rate=20.0, news_interval=600.0) as sb:
        ing = ingestor(nats_server.url, sb, quotes=[C01], transport="websocket", publish_retry_s=1.0)
        async with ing:
            live = ing.live
            await wait_for(lambda: live.pushes >= 10, 20, what="live prices")
            nats_server.kill()
            pushes_at_kill = live.pushes
            # the sandbox keeps pushing; the publisher gives those up after publish_retry_s
            await wait_for(lambda: live.unpublished_count >= 10 and live.pushes > pushes_at_kill + 40, 20,
                           what="live pushes given up")
            assert live.publish_gaps_filled == 0
            nats_server.start()
            await wait_for(lambda: live.publish_gaps_filled >= 1, 30, interval=0.2, what="the gap back-filled")
            # the stream stops capturing md.> (no responders) for longer than publish_retry_s
            nc = await nats.connect(nats_server.url)
            try:
                js = nc.jetstream()
                config = (await js.stream_info(MARKET_DATA.name)).config
                await js.update_stream(replace(config, subjects=["md.nowhere.>"]))
                given_up = live.unpublished_count
                await wait_for(lambda: live.unpublished_count >= given_up + 10, 20, what="pushes lost (no stream)")
                await js.update_stream(replace(config, subjects=list(MARKET_DATA.subjects)))
            finally:
                await nc.close()
            await wait_for(lambda: live.publish_gaps_filled >= 2, 30, interval=0.2, what="the second gap back-filled")
            resumed = live.pushes
            await wait_for(lambda: live.pushes > resumed + 20, 20, what="live prices after the outage")
            await ing.flush()
            assert ing.exit_code == 0
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            stored = [e for e in events_of(await read_stream(js, "md.market_price.sitagri.>"))
                      if isinstance(e, MarketPrice) and e.symbol == "EMAC01"]
            statuses = [s for s in events_of(await read_stream(js, "status.ingest_sitagri.feed.>"))
                        if isinstance(s, FeedStatus)]
        finally:
            await nc.close()
        lo, hi = min(e.ts_event for e in stored), max(e.ts_event for e in stored)
        want = await asyncio.wait_for(expected_ids(sb, C01, lo, hi), 10)  # the sandbox's own record
    assert not duplicates(stored)
    assert any(e.replay for e in stored)  # the lost pushes came from history
    got = {e.id for e in stored}
    assert want - got == set(), f"{len(want - got)} ticks the sandbox emitted are not on the bus"
    assert got <= want
    gaps = [s for s in statuses if s.state in ("gap", "resynced")]
    assert [s.state for s in gaps] == ["gap", "resynced"] * 2, gaps
    assert all("live pushes could not be published" in (s.detail or "") for s in gaps if s.state == "gap")
    for gap in (s for s in gaps if s.state == "gap"):
        assert gap.gap_start is not None and gap.gap_end is not None and gap.gap_end - gap.gap_start >= 400_000_000
    assert open_gaps(statuses) == []



@pytest.mark.cluster
async def test_losing_the_md_stream_leader_loses_no_live_push(nats_cluster: Any) -> None:
    """A 3-node R3 cluster: the MD stream's leader is killed -9 while the sandbox pushes. Pushes
    published while no leader answers are retried, and (``publish_retry_s`` shorter than the
    election here) the ones given up on are back-filled: the stream holds every tick once."""
    from marketbus.contracts.streams import ensure_all

    nc = await nats.connect(nats_cluster.urls)
    js = nc.jetstream()

    async def ready() -> bool:
        try:
            await ensure_all(js, replicas=3)
            return True
        except Exception:
            return False

    await wait_for(ready, timeout=30, interval=0.5, what="JetStream cluster ready")
    killed = None
    try:
        async with sandbox(rate=20.0, news_interval=600.0) as sb:
            # this test's resume points only (the bucket is shared by the cluster's tests)
            kv = await js.key_value(INGEST_STATE.name)
            for key in await kv_snapshot.keys(js, INGEST_STATE.name, "sitagri.live.>"):
                await kv.delete(key)  # not purge: the shared bucket refuses rollup headers
            ing = ingestor(nats_cluster.url, sb, quotes=[C01], transport="websocket", publish_retry_s=1.0,
                           stream_replicas=3)
            async with ing:
                live = ing.live
                await wait_for(lambda: live.pushes >= 20, 20, what="live prices")
                started = ing.started_ts
                leader = (await js.stream_info("MD")).cluster.leader
                killed = next(n for n in nats_cluster.nodes if n.name == leader)
                killed.kill()
                at_kill = live.pushes
                await wait_for(lambda: live.pushes > at_kill + 60, 30, what="pushes during the election")
                killed.start()
                killed = None
                if live.unpublished_count:
                    await wait_for(lambda: live.publish_gaps_filled >= 1 and not live.unpublished, 40, interval=0.2,
                                   what="the given-up pushes back-filled")
                resumed = live.pushes
                await wait_for(lambda: live.pushes > resumed + 20, 20, what="live prices after")
                await wait_for(lambda: not ing.health_problems(), 20, what="healthy again")
                await ing.flush()
                assert ing.exit_code == 0
            stored = [e for e in events_of(await read_stream(js, "md.market_price.sitagri.EURONEX.EMAC01"))
                      if isinstance(e, MarketPrice) and e.ts_recv >= started]
            lo, hi = min(e.ts_event for e in stored), max(e.ts_event for e in stored)
            want = await expected_ids(sb, C01, lo, hi)
    finally:
        if killed is not None:
            killed.start()
        await nc.close()
    assert not duplicates(stored)
    got = {e.id for e in stored}
    assert want - got == set(), f"{len(want - got)} ticks the sandbox emitted are not in the stream"
    assert got <= want
