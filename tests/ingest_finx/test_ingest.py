"""The FinX ingestor end to end: the FinX sandbox (websocket), a real nats-server, and what ends up
in the MD / REF / STATUS / DLQ streams, checked by id against the sandbox's ground truth."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import nats
import pytest

from marketbus.contracts import codec, subjects
from marketbus.contracts.invariants import canonical_decimal
from marketbus.contracts.jobs import ReplayReply, ReplayRequest
from marketbus.contracts.market import Tick
from marketbus.contracts.reference import Currency, Instrument
from marketbus.contracts.status import DeadLetter, FeedStatus
from marketbus.runtime.logging import TextFormatter, scrub
from marketbus.runtime.natsserver import NatsServer
from marketbus.runtime.settings import SettingsError
from services.ingest_finx import normalize
from services.ingest_finx.app import FinxIngestor
from services.sandbox.common.base import SandboxRunner
from services.sandbox.registry import load_spec
from tests.helpers import wait_for

from .bus import duplicates, events_of, read_stream

PAIR = "BTC:USD"
KEY = "finx-test-key-7f3a"


@pytest.fixture
async def sb() -> AsyncIterator[SandboxRunner]:
    # 20 ticks/s per exchange (3 exchanges): a 100-row page is ~1.7 s of market time.
    async with SandboxRunner(load_spec("finx"), port=0, rate=20, api_keys=[KEY]) as runner:
        yield runner


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_server.url)
    try:
        yield nc
    finally:
        await nc.drain()


def make(nats_server: NatsServer, sb: SandboxRunner, **overrides: Any) -> FinxIngestor:
    options: dict[str, Any] = dict(
        nats_url=nats_server.url, ws_url=sb.ws_url, api_key=KEY, pairs=[PAIR], tickers=["BTC", "USD"],
        history_start="-3", snap_interval_s=0.2, history_interval_s=0.2, reconnect_initial_s=0.05,
        reconnect_max_s=0.3, heartbeat_interval_s=60,
    )
    options.update(overrides)
    return FinxIngestor(**options)


async def truth(sb: SandboxRunner, start_ns: int, end_ns: int) -> dict[str, dict[str, Any]]:
    """What the sandbox generated in [start_ns, end_ns], by the id the ingestor must give it."""
    async with httpx.AsyncClient(base_url=sb.url) as http:
        rows = (
            await http.get("/_sandbox/finx/ticks", params={"pair": PAIR, "start_ns": start_ns, "end_ns": end_ns + 1})
        ).json()["ticks"]
    return {normalize.tick_id(PAIR, r["exchange"], r["ts_ns"], r["price"]): r for r in rows}


async def check_complete(js: Any, sb: SandboxRunner, start_ns: int, end_ns: int) -> list[Tick]:
    """The MD stream holds every generated tick of [start_ns, end_ns] exactly once, with its values."""
    events = events_of(await read_stream(js, subjects.md_filter("tick", "finx")))
    assert duplicates(events) == []
    expected = await truth(sb, start_ns, end_ns)
    got = {e.id: e for e in events if start_ns <= e.ts_event <= end_ns}
    missing = sorted(set(expected) - set(got), key=lambda i: expected[i]["ts_ns"])
    assert not missing, f"{len(missing)} of {len(expected)} ticks missing, first at {expected[missing[0]]['ts_ns']}"
    assert set(got) == set(expected)
    for event_id, row in expected.items():
        e = got[event_id]
        assert (e.ts_event, e.venue, str(e.price), e.symbol) == (
            row["ts_ns"],
            row["exchange"],
            str(canonical_decimal(Decimal(row["price"]))),
            "BTC-USD",
        )
    assert len(expected) > 50
    return events


async def test_ticks_and_reference_carry_the_sandbox_values(
    nats_server: NatsServer, sb: SandboxRunner, bus: Any
) -> None:
    js = bus.jetstream()
    async with make(nats_server, sb) as ing:
        state = ing.pairs[PAIR]
        target = state.origin + 4_000_000_000
        await wait_for(lambda: state.cursor >= target and state.committed and state.committed[0] >= target, 20,
                       what="the history cursor to pass origin + 4 s")
        events = await check_complete(js, sb, state.origin, state.committed[0])
        snaps = [e for e in events if not e.replay]
        assert snaps, "live snaps are published too"
        assert all(isinstance(e, Tick) for e in events)
        # reference data: what the sandbox says its securities are
        async with httpx.AsyncClient(base_url=sb.url) as http:
            info = (await http.get("/_sandbox/finx/info")).json()
        refs = events_of(await read_stream(js, "ref.*.finx.>"))
        currencies = {e.code: e for e in refs if isinstance(e, Currency)}
        assert {c: currencies[c].vendor_id for c in ("BTC", "USD")} == {c: info["tickers"][c] for c in ("BTC", "USD")}
        assert currencies["BTC"].name == "Bitcoin"
        (inst,) = [e for e in refs if isinstance(e, Instrument)]
        assert inst.vendor_symbol == PAIR and inst.attributes["base_finx_sec_id"] == info["tickers"]["BTC"]
        statuses = events_of(await read_stream(js, "status.ingest_finx.feed.>"))
        assert any(isinstance(s, FeedStatus) and s.state == "connected" for s in statuses)
        # metrics
        assert ing.metrics.frames_in.labels("finx", "tickHistory")._value.get() >= 2
        assert ing.metrics.events_out.labels("finx", "tick")._value.get() >= len(events)


async def test_connection_drops_end_with_no_duplicate_and_no_hole(
    nats_server: NatsServer, sb: SandboxRunner, bus: Any
) -> None:
    js = bus.jetstream()
    async with make(nats_server, sb) as ing, httpx.AsyncClient(base_url=sb.url) as http:
        state = ing.pairs[PAIR]
        await wait_for(lambda: state.cursor > state.origin + 1_000_000_000, 15, what="first pages")
        for n in (2, 3):
            await http.post("/_sandbox/drop")
            await wait_for(lambda n=n: ing.sessions >= n, 15, what=f"session {n}")
        # and one drop in the middle of a reply stream
        await http.post("/_sandbox/faults", json={"drop_after_frames": 3})
        await wait_for(lambda: ing.sessions >= 4, 15, what="session 4")
        await http.post("/_sandbox/faults/reset")
        after = ing.now_ns()
        await wait_for(lambda: state.committed and state.committed[0] > after + 500_000_000 and state.gap is None, 20,
                       what="back-fill past the last reconnect")
        await check_complete(js, sb, state.origin, state.committed[0])
        statuses = [
            s for s in events_of(await read_stream(js, "status.ingest_finx.feed.>")) if isinstance(s, FeedStatus)
        ]
        states = [s.state for s in statuses]
        assert states.count("disconnected") >= 3 and states.count("connected") >= 4
        gaps = [s for s in statuses if s.state == "gap"]
        resynced = [s for s in statuses if s.state == "resynced"]
        assert len(gaps) >= 3 and len(resynced) >= 3
        assert all(g.gap_start is not None and g.gap_end is not None and g.gap_start < g.gap_end for g in gaps)
        # each "resynced" closes a reported gap (same range)
        assert {(r.gap_start, r.gap_end) for r in resynced} <= {(g.gap_start, g.gap_end) for g in gaps}
        assert ing.metrics.reconnects.labels("finx")._value.get() >= 3


async def test_malformed_frames_are_dead_lettered_and_nothing_is_lost(
    nats_server: NatsServer, sb: SandboxRunner, bus: Any
) -> None:
    js = bus.jetstream()
    async with make(nats_server, sb) as ing, httpx.AsyncClient(base_url=sb.url) as http:
        state = ing.pairs[PAIR]
        await wait_for(lambda: state.cursor > state.origin + 1_000_000_000, 15, what="first pages")
        await http.post("/_sandbox/faults", json={"malformed_next": 2, "truncated_next": 1})
        await wait_for(
            lambda: (
                ing.metrics.malformed.labels("finx", "tickHistory")._value.get()
                + ing.metrics.malformed.labels("finx", "tickSnap")._value.get()
                >= 3
            ),
            15,
            what="3 malformed frames",
        )
        after = ing.now_ns()
        await wait_for(lambda: state.committed and state.committed[0] > after, 15, what="progress after the bad frames")

        async def three_letters() -> list[Any] | None:  # published without awaiting the ack: may be in flight
            found = events_of(await read_stream(js, subjects.dead_letter("ingest_finx", "finx")))
            return found if len(found) >= 3 else None

        letters = await wait_for(three_letters, 15, what="3 dead letters in the stream")
        assert len(letters) >= 3 and all(isinstance(d, DeadLetter) for d in letters)
        assert any(b"not json" in d.payload for d in letters)  # the raw frame, as received
        assert all(d.reason and d.source == "finx" and d.subject in ("tickHistory", "tickSnap") for d in letters)
        await check_complete(js, sb, state.origin, state.committed[0])
        assert ing.state == "running"


async def test_restart_resumes_from_the_persisted_cursor(nats_server: NatsServer, sb: SandboxRunner, bus: Any) -> None:
    js = bus.jetstream()
    async with make(nats_server, sb) as first:
        state = first.pairs[PAIR]
        await wait_for(
            lambda: state.committed and state.committed[0] > state.origin + 1_500_000_000, 15, what="progress"
        )
        origin = state.origin
    saved = state.committed[0]
    kv = await js.key_value("ingest_state")
    assert msgspec_cursor(await kv.get("finx.history.BTC-USD")) == saved
    # the second process is told to start "now": it must resume from the cursor instead
    async with make(nats_server, sb, history_start="") as second:
        s2 = second.pairs[PAIR]
        assert s2.origin == saved
        target = second.now_ns() + 500_000_000
        await wait_for(lambda: s2.committed and s2.committed[0] > target and s2.gap is None, 20, what="catch-up")
        await check_complete(js, sb, origin, s2.committed[0])
        statuses = [
            s for s in events_of(await read_stream(js, "status.ingest_finx.feed.>")) if isinstance(s, FeedStatus)
        ]
        assert any(s.state == "gap" and s.gap_start == saved for s in statuses)
        assert any(s.state == "resynced" and s.gap_start == saved for s in statuses)


def msgspec_cursor(entry: Any) -> int:
    import msgspec

    return msgspec.json.decode(entry.value)["ts_ns"]


async def test_replay_publishes_the_range_as_replay_batches(
    nats_server: NatsServer, sb: SandboxRunner, bus: Any
) -> None:
    js = bus.jetstream()
    start = normalize.wire_ts("2022-06-15", "00:00")
    end = start + 12_000_000_000  # 12 s: 720 ticks, 8 pages
    async with make(nats_server, sb, history_start="") as ing:
        await wait_for(lambda: ing.client.connected, 10, what="session")
        request = ReplayRequest(request_id=str(uuid.uuid4()), source="finx", venue="_", symbol="BTC-USD", kind="tick",
                                start_ns=start, end_ns=end)
        reply = codec.decode_as(
            (await bus.request(subjects.replay("finx"), codec.encode(request), timeout=20)).data, ReplayReply
        )
        expected = await truth(sb, start, end - 1)
        assert reply.accepted and reply.events == len(expected) == 720
        messages = await read_stream(js, "md.tick.finx.>")
        batches = [m for m in messages if isinstance(m, codec.Batch) and m.replay]
        replayed = {e.id: e for b in batches for e in b.events if start <= e.ts_event < end}
        assert set(replayed) == set(expected) and all(e.replay for e in replayed.values())
        # one exchange only
        request = ReplayRequest(request_id="r2", source="finx", venue="GEMINI", symbol="BTC-USD", kind="tick",
                                start_ns=start, end_ns=start + 2_000_000_000)
        reply = codec.decode_as(
            (await bus.request(subjects.replay("finx"), codec.encode(request), timeout=20)).data, ReplayReply
        )
        assert reply.accepted and reply.events == sum(
            1 for r in (await truth(sb, start, start + 2_000_000_000 - 1)).values() if r["exchange"] == "GEMINI"
        )
        # unsupported kinds are refused with a reason
        bad = ReplayRequest(
            request_id="r3", source="finx", venue="_", symbol="BTC-USD", kind="trade", start_ns=start, end_ns=end
        )
        reply = codec.decode_as(
            (await bus.request(subjects.replay("finx"), codec.encode(bad), timeout=5)).data, ReplayReply
        )
        assert not reply.accepted and "ticks only" in (reply.reason or "")


async def test_the_api_key_is_never_logged(
    nats_server: NatsServer, sb: SandboxRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with make(nats_server, sb) as ing:
        await wait_for(lambda: ing.pairs[PAIR].cursor > ing.pairs[PAIR].origin, 10, what="progress")
        async with httpx.AsyncClient() as http:
            health = (await http.get(f"{ing.http_url}/healthz")).json()
    assert KEY not in str(health) and "/streamer/**********" in health["vendor_url"]
    assert KEY not in repr(ing.settings)
    formatter = TextFormatter()

    def fmt(record: logging.LogRecord) -> str:
        try:
            return formatter.format(record)
        except ReferenceError:  # a record holding a dead weakref (not ours)
            return scrub(record.getMessage())

    text = "\n".join(fmt(r) for r in caplog.records)
    assert "connecting to" in text and KEY not in text
    # our own records and the websocket library's never hold the key, whatever the log format
    assert all(KEY not in r.getMessage() for r in caplog.records if r.name.startswith(("marketbus", "websockets")))


async def test_bad_key_keeps_retrying_with_backoff(nats_server: NatsServer, sb: SandboxRunner) -> None:
    async with make(nats_server, sb, api_key="wrong-key-123") as ing:
        await wait_for(lambda: ing.metrics.reconnects.labels("finx")._value.get() >= 2, 10, what="retries")
        assert not ing.client.connected and ing.state == "running"


@pytest.mark.parametrize("overrides, var", [
    ({"ws_url": "http://x"}, "WS_URL"), ({"pairs": ["BTCUSD"]}, "PAIRS"), ({"pairs": []}, "PAIRS"),
    ({"history_start": "yesterday"}, "HISTORY_START"), ({"snap_interval_s": 0}, "SNAP_INTERVAL_S"),
])
def test_configuration_is_validated_at_start_up(overrides: dict[str, Any], var: str) -> None:
    with pytest.raises(SettingsError, match=f"MARKETBUS_INGEST_FINX_{var}"):
        FinxIngestor(nats_url="nats://127.0.0.1:1", **overrides)


@pytest.mark.cluster
async def test_losing_the_md_stream_leader_blocks_the_session_then_back_fills_with_nothing_lost(
        nats_cluster: Any, sb: SandboxRunner) -> None:
    """The issue's reproduction: a 3-node R3 cluster, kill -9 of the MD stream's leader while
    ingest_finx runs. Publishing stalls (no leader: empty acks, no responders, timeouts); the
    session must not die: it reports "blocked", back-fills, and nothing is lost or duplicated."""
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
        ing = FinxIngestor(
            nats_url=nats_cluster.url, stream_replicas=3, ws_url=sb.ws_url, api_key=KEY, pairs=[PAIR],
            tickers=["BTC", "USD"], history_start="-3", snap_interval_s=0.2, history_interval_s=0.2,
            reconnect_initial_s=0.05, reconnect_max_s=0.3, heartbeat_interval_s=60,
            state_namespace=f"t{uuid.uuid4().hex[:8]}",
        )
        async with ing:
            state = ing.pairs[PAIR]
            await wait_for(lambda: state.committed and state.committed[0] > state.origin + 1_000_000_000, 20,
                           what="first committed pages")
            leader = (await js.stream_info("MD")).cluster.leader
            killed = next(n for n in nats_cluster.nodes if n.name == leader)
            killed.kill()
            lost_at = ing.now_ns()
            await asyncio.sleep(6)  # a new leader is elected meanwhile; publishing stalls, then resumes
            killed.start()
            killed = None
            await wait_for(lambda: state.committed and state.committed[0] > lost_at + 3_000_000_000
                           and state.gap is None, 60, interval=0.2, what="back-fill past the outage")
            assert ing.exit_code == 0 and ing.state == "running"
            await wait_for(lambda: not ing.health_problems(), 15, what="healthy again")
            await check_complete(js, sb, state.origin, state.committed[0])
        statuses = [
            s for s in events_of(await read_stream(js, "status.ingest_finx.feed.>")) if isinstance(s, FeedStatus)
        ]
        assert any(s.state == "blocked" for s in statuses), [s.state for s in statuses]
    finally:
        if killed is not None:
            killed.start()
        await nc.close()


async def test_a_nats_outage_longer_than_the_retry_period_blocks_the_session_then_back_fills(
        nats_server: NatsServer, sb: SandboxRunner) -> None:
    """kill -9 of the (single) nats-server for longer than the publisher retries: the session ends
    as "blocked", rewinds to its committed cursor, and back-fills once NATS is back."""
    async with make(nats_server, sb, publish_retry_s=1.0) as ing:
        state = ing.pairs[PAIR]
        await wait_for(lambda: state.committed and state.committed[0] > state.origin + 1_000_000_000, 20,
                       what="first committed pages")
        nats_server.kill()
        lost_at = ing.now_ns()
        await wait_for(lambda: ing.feeds.state("finx/session") == "blocked", 15, what="the session blocked")
        nats_server.start()
        await wait_for(lambda: state.committed and state.committed[0] > lost_at + 2_000_000_000
                       and state.gap is None, 40, interval=0.2, what="back-fill past the outage")
        assert ing.exit_code == 0
        await wait_for(lambda: not ing.health_problems(), 15, what="healthy again")
        nc = await nats.connect(nats_server.url)
        try:
            await check_complete(nc.jetstream(), sb, state.origin, state.committed[0])
            statuses = [s for s in events_of(await read_stream(nc.jetstream(), "status.ingest_finx.feed.>"))
                        if isinstance(s, FeedStatus)]
            assert any(s.state == "blocked" and s.symbol == "_" for s in statuses)
        finally:
            await nc.close()
