"""Runtime against real nats-servers: embedded launcher, streams, publisher, service plumbing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from decimal import Decimal

import httpx
import nats
import pytest

from marketbus.contracts import codec, subjects
from marketbus.contracts.ids import event_id
from marketbus.contracts.invariants import MAX_TEXT
from marketbus.contracts.market import News, Trade
from marketbus.contracts.status import DeadLetter, FeedStatus, ServiceHeartbeat
from marketbus.contracts.streams import BUCKETS, STREAMS, ensure_all
from marketbus.runtime.http import port_is_free
from marketbus.runtime.natsserver import NatsServer
from marketbus.runtime.publisher import JetStreamPublisher, TransientPublishError
from marketbus.runtime.service import Service
from tests.helpers import wait_for


def trade(i: int, symbol: str = "BTC-USD", venue: str = "RUNTIME") -> Trade:
    return Trade(
        id=event_id("test", "trade", venue, symbol, i), source="test", venue=venue, symbol=symbol,
        ts_event=1_700_000_000_000_000_000 + i, ts_recv=1_700_000_000_000_000_000 + i,
        price=Decimal("100.25") + i, size=Decimal("1.5"),
    )


def test_embedded_server_takes_4222_or_a_free_port_when_it_is_taken(tmp_path) -> None:
    blocker = None
    if port_is_free(4222):  # make 4222 busy, so the fallback is what we test
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 4222))
        blocker.listen()
    try:
        with NatsServer(data_dir=tmp_path / "nats") as server:
            assert server.port != 4222
            assert server.proc is not None and server.proc.poll() is None
            with socket.create_connection(("127.0.0.1", server.port), timeout=2) as conn:
                assert conn.recv(4096).startswith(b"INFO ")
            proc = server.proc
        assert proc.poll() is not None  # stopped cleanly on exit
    finally:
        if blocker:
            blocker.close()


async def test_streams_and_buckets_are_created_idempotently_by_concurrent_services(nats_server: NatsServer) -> None:
    clients = [await nats.connect(nats_server.url) for _ in range(3)]
    try:
        await asyncio.gather(*(ensure_all(c.jetstream()) for c in clients))
        await ensure_all(clients[0].jetstream())  # and again: no error, nothing changes
        js = clients[0].jetstream()
        names = {info.config.name for info in await js.streams_info()}
        assert {s.name for s in STREAMS} | {f"KV_{b.name}" for b in BUCKETS} <= names
        md = await js.stream_info("MD")
        assert md.config.subjects == ["md.>"] and md.config.duplicate_window == 120.0
        ref = await js.stream_info("REF")
        assert ref.config.max_msgs_per_subject == 1
    finally:
        for c in clients:
            await c.close()


@pytest.mark.cluster
async def test_streams_are_replicated_on_a_cluster(nats_cluster) -> None:
    nc = await nats.connect(nats_cluster.urls)
    try:
        js = nc.jetstream()

        async def ready() -> bool:
            try:
                await ensure_all(js, replicas=3)
                return True
            except Exception:
                return False

        await wait_for(ready, timeout=30, interval=0.5, what="JetStream cluster ready")
        info = await js.stream_info("MD")
        assert info.config.num_replicas == 3
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2
        ack = await js.publish(subjects.for_event(trade(1, venue="CLUSTER")), codec.encode(trade(1, venue="CLUSTER")))
        assert ack.stream == "MD"
    finally:
        await nc.close()


async def test_pipelined_publisher_deduplicates_by_event_id(nats_url: str, js) -> None:
    nc = await nats.connect(nats_url)
    publisher = await JetStreamPublisher(nc).start()
    try:
        events = [trade(i, symbol="DEDUPE") for i in range(2000)]
        for e in events:
            await publisher.publish_event(e)
        for e in events[:500]:  # a replay of the first quarter: same ids
            await publisher.publish_event(e)
        await publisher.publish_batch(events[:100], replay=True)
        await publisher.publish_batch(events[:100], replay=True)
        await publisher.flush()
        assert publisher.duplicates == 501
        info = await js.stream_info("MD", subjects_filter="md.trade.test.RUNTIME.DEDUPE")
        assert info.state.subjects == {"md.trade.test.RUNTIME.DEDUPE": 2001}
    finally:
        await publisher.close()
        await nc.close()


async def test_a_burst_without_event_loop_turns_reaches_subscribers_before_it_ends(nats_url: str, js) -> None:
    """A caller publishing a long burst back to back (frames that were late, handled one after
    the other, each costing CPU): its first messages reach a subscriber while the burst still
    runs, instead of waiting on the client for the whole burst (the publisher gives the event
    loop a turn when its flush has waited for more than MAX_WRITE_DELAY_S)."""
    nc, sub_nc = await nats.connect(nats_url), await nats.connect(nats_url)
    publisher = await JetStreamPublisher(nc).start()
    received: list[int] = []
    distinct: set[bytes] = set()  # a publish retried after a late ack reaches a core subscriber twice
    sent = 0

    async def on_msg(msg: nats.aio.msg.Msg) -> None:
        received.append(sent)  # how many had been published when this one arrived
        distinct.add(msg.data)

    await sub_nc.subscribe("md.trade.test.RUNTIME.BURST", cb=on_msg)
    await sub_nc.flush()
    try:
        loop = asyncio.get_running_loop()
        for i in range(400):
            end = loop.time() + 0.0002  # the normalizer's work for one frame, without a loop turn
            while loop.time() < end:
                pass
            await publisher.publish_event(trade(i, symbol="BURST"))
            sent += 1
        await publisher.flush()
        await wait_for(lambda: len(distinct) == 400, what="the burst at the subscriber")
        assert received[0] < 400, "the first message arrived only after the whole burst was published"
    finally:
        await publisher.close()
        await sub_nc.close()
        await nc.close()


async def test_publisher_reports_subjects_no_stream_captures(nats_url: str, js) -> None:
    nc = await nats.connect(nats_url)
    # "no responders" is also what a cluster answers while a stream has no leader: retried for
    # retry_for_s, then reported
    publisher = await JetStreamPublisher(nc, ack_timeout=1, retry_for_s=2).start()
    try:
        future = await publisher.publish("nostream.here", b"{}")
        await asyncio.sleep(0.5)
        assert publisher.blocked and "no stream for subject nostream.here" in publisher.blocked
        with pytest.raises(TransientPublishError, match="no stream for subject nostream.here"):
            await asyncio.wait_for(future, 10)
        assert publisher.retries >= 2
        with pytest.raises(TransientPublishError):  # a later flush reports the loss too
            await publisher.flush()
        await publisher.flush()  # ...once
    finally:
        await publisher.close()
        await nc.close()


async def test_service_health_metrics_heartbeat_status_and_dead_letters(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    heartbeats: list[ServiceHeartbeat] = []

    async def on_hb(msg) -> None:
        heartbeats.append(codec.decode(msg.data))

    await nc.subscribe(subjects.heartbeat("probe"), cb=on_hb)

    class Probe(Service):
        name = "probe"

    service = Probe(nats_url=nats_url, heartbeat_interval_s=0.2)
    await service.start()
    try:
        async with httpx.AsyncClient(base_url=service.http_url) as http:
            health = (await http.get("/healthz")).json()
            assert health["state"] == "running" and health["nats_connected"] is True
            await service.publish_feed_status("test", "connected", venue="V", symbol="S")
            await service.publish_feed_status("test", "gap", venue="V", symbol="S", gap=(10, 20), kind="trade")
            await service.dead_letter("test", "not json: unexpected character", b"\x00{garbage")
            await service.publisher.flush()
            metrics = (await http.get("/metrics")).text
            assert 'marketbus_dead_letters_total{reason="not json",service="probe",source="test"} 1.0' in metrics
            assert "marketbus_publish_latency_seconds_bucket" in metrics
        await wait_for(lambda: heartbeats, what="a heartbeat")
        assert heartbeats[0].service == "probe" and heartbeats[0].http_url == service.http_url
        js = nc.jetstream()
        dlq = await js.get_last_msg("DLQ", subjects.dead_letter("probe", "test"))
        letter = codec.decode(dlq.data)
        assert (
            isinstance(letter, DeadLetter)
            and letter.payload == b"\x00{garbage"
            and letter.reason.startswith("not json")
        )
        gap = codec.decode((await js.get_last_msg("STATUS", subjects.feed_status("probe", "test", "V", "S"))).data)
        assert isinstance(gap, FeedStatus) and (gap.state, gap.gap_start, gap.gap_end) == ("gap", 10, 20)
    finally:
        await service.stop()
        await nc.close()


async def test_service_refuses_bad_configuration_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from marketbus.runtime.settings import SettingsError

    class Probe(Service):
        name = "probe"

    monkeypatch.setenv("MARKETBUS_HTTP_PORT", "eighty")
    with pytest.raises(SettingsError, match="MARKETBUS_HTTP_PORT='eighty' is invalid"):
        Probe()


async def test_batches_larger_than_the_max_payload_are_split(nats_url: str, js) -> None:
    nc = await nats.connect(nats_url)
    publisher = await JetStreamPublisher(nc).start()
    try:
        events = [trade(i, symbol="BIGBATCH") for i in range(8000)]  # ~2.5 MB as one envelope
        assert len(codec.encode(codec.make_batch(events))) > nc.max_payload
        ack = await asyncio.wait_for(await publisher.publish_batch(events), 30)
        assert ack.stream == "MD"
        stored = []
        sub = await js.subscribe("md.trade.test.RUNTIME.BIGBATCH", ordered_consumer=True)
        while len(stored) < len(events):
            msg = await sub.next_msg(timeout=5)
            stored.extend(codec.decode_events(msg.data))
        await sub.unsubscribe()
        assert [e.id for e in stored] == [e.id for e in events]
    finally:
        await publisher.close()
        await nc.close()


async def test_publish_group_acks_every_event_once(nats_url: str, js) -> None:
    nc = await nats.connect(nats_url)
    publisher = await JetStreamPublisher(nc, max_inflight=500).start()  # more events than slots
    try:
        events = [trade(i, symbol="GROUP") for i in range(3000)]
        ack = await asyncio.wait_for(await publisher.publish_group(events), 30)
        assert ack.stream == "MD"
        again = await asyncio.wait_for(await publisher.publish_group(events[:10]), 30)
        assert again.duplicate  # same ids: de-duplicated by JetStream
        info = await js.stream_info("MD", subjects_filter="md.trade.test.RUNTIME.GROUP")
        assert info.state.subjects == {"md.trade.test.RUNTIME.GROUP": 3000}
        # the longest text a contract holds makes a message above the server's 1 MB max_payload
        too_big = News(id="big", source="test", venue="RUNTIME", symbol="EN", ts_event=1, ts_recv=1, article_id="1",
                       title="big", lang="EN", content="x" * MAX_TEXT)
        failing = await publisher.publish_group([too_big])
        with pytest.raises(Exception, match="max payload"):
            await asyncio.wait_for(failing, 5)
    finally:
        await publisher.close()
        await nc.close()


async def test_a_publish_to_a_stream_that_appears_later_is_retried_not_lost(nats_server: NatsServer) -> None:
    """The cluster case in small: no stream answers for a while (no leader), then one does."""
    nc = await nats.connect(nats_server.url)
    publisher = await JetStreamPublisher(nc, ack_timeout=1).start()
    try:
        futures = [await publisher.publish(f"late.{i}", b"{}", {"Nats-Msg-Id": f"late-{i}"}) for i in range(20)]
        await asyncio.sleep(1.0)
        assert publisher.blocked and not any(f.done() for f in futures)
        await nc.jetstream().add_stream(name="LATE", subjects=["late.>"])
        await asyncio.wait_for(asyncio.gather(*futures), 10)
        await publisher.flush()
        assert (await nc.jetstream().stream_info("LATE")).state.messages == 20
        assert publisher.blocked is None
    finally:
        await publisher.close()
        await nc.close()


class _Probe(Service):
    name = "probe"


async def test_a_connection_the_server_closes_stops_the_service_with_exit_code_1(nats_server: NatsServer) -> None:
    """A 10 KB subject makes nats-server close the connection ("maximum control line exceeded"):
    nats-py does not reconnect. The service must not linger as a zombie: it stops with code 1."""
    service = _Probe(nats_url=nats_server.url, heartbeat_interval_s=0.2)
    run = asyncio.create_task(service.run())
    await wait_for(lambda: service.state == "running", what="the probe running")
    async with httpx.AsyncClient(base_url=service.http_url) as http:
        assert (await http.get("/healthz")).status_code == 200
        await service.nc.publish("x" * 10_000, b"")
    assert await asyncio.wait_for(run, 10) == 1
    assert "maximum control line exceeded" in service.health_problems()[-1]


async def test_a_crashed_loop_stops_the_service_with_exit_code_1(nats_server: NatsServer) -> None:
    class Crashing(_Probe):
        async def on_start(self) -> None:
            async def broken() -> None:
                await asyncio.sleep(0.2)
                raise RuntimeError("a bug")

            self.spawn(broken(), "broken")

    service = Crashing(nats_url=nats_server.url)
    assert await asyncio.wait_for(service.run(), 10) == 1


async def test_health_problems_make_healthz_503_and_the_heartbeat_degraded(nats_server: NatsServer) -> None:
    service = await _Probe(nats_url=nats_server.url, heartbeat_interval_s=0.2).start()
    try:
        async with httpx.AsyncClient(base_url=service.http_url) as http:
            service.unhealthy("store", "PostgreSQL unreachable")
            reply = await http.get("/healthz")
            assert reply.status_code == 503 and reply.json()["problems"] == ["store: PostgreSQL unreachable"]
            assert service.heartbeat().state == "degraded"
            service.healthy("store")
            assert (await http.get("/healthz")).status_code == 200
            assert service.heartbeat().state == "running"
            nats_server.kill()
            await wait_for(lambda: not service.nats_connected, what="the disconnect seen")
            reply = await http.get("/healthz")
            assert reply.status_code == 503 and reply.json()["problems"] == ["NATS disconnected"]
            nats_server.start()
            await wait_for(lambda: service.nats_connected, timeout=15, what="reconnected")
            assert (await http.get("/healthz")).status_code == 200
    finally:
        await service.stop()


async def test_a_nats_outage_is_logged_once_not_a_traceback_a_second(nats_server: NatsServer,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    service = await _Probe(nats_url=nats_server.url).start()
    try:
        caplog.clear()
        nats_server.kill()
        await asyncio.sleep(4)  # ~4 reconnect attempts
        nats_server.start()
        await wait_for(lambda: service.nats_connected, timeout=15, what="reconnected")
    finally:
        await service.stop()
    # this service's lines and its connection's (FastStream, nats-py): the session's event loop
    # may run other tests' leftovers, whose lines are none of this test's business
    own = (service.log.name, "faststream", "nats.aio.client")
    records = [r for r in caplog.records if r.levelno >= logging.WARNING
               and (r.name in own or r.name.startswith("faststream."))]
    assert not [r for r in records if r.exc_info], [r.getMessage() for r in records if r.exc_info]
    assert len(records) <= 4, [r.getMessage() for r in records]


async def test_session_keeper_survives_a_vendor_that_refuses_logins_for_a_while() -> None:
    from marketbus.runtime.session import SessionKeeper

    attempts = 0

    async def login() -> tuple[str, float | None]:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionRefusedError("vendor down")
        return f"token-{attempts}", 0.3

    pinged: list[str] = []

    async def ping(token: str) -> None:
        pinged.append(token)

    keeper = SessionKeeper(login, ping, timeout_s=0.3, margin_s=0.1)
    keeper.last_use -= 10  # a keep-alive is due at once
    task = asyncio.create_task(keeper.run())
    try:
        await wait_for(lambda: pinged, timeout=5, what="a keep-alive after the vendor came back")
        assert not task.done() and attempts == 3 and pinged[0] == "token-3"
    finally:
        task.cancel()


async def test_an_ingestor_reports_blocked_publishing_and_the_gap_of_what_it_gave_up_on(
    nats_server: NatsServer,
) -> None:
    from marketbus.runtime.ingest import Ingestor

    class ProbeIngestor(Ingestor):
        name = "probe_ingest"
        source = "probe"

    ing = await ProbeIngestor(nats_url=nats_server.url, publish_retry_s=1.0, heartbeat_interval_s=60).start()
    try:
        nats_server.kill()
        for i in range(5):  # published while NATS is down: given up on after 1 s
            await ing.emit(trade(i, symbol="BLOCKED"))
        await wait_for(lambda: ing.publishing_blocked, timeout=10, what="publishing reported blocked")
        assert any(p.startswith("publishing: ") for p in ing.health_problems())
        await asyncio.sleep(1.5)
        nats_server.start()
        await wait_for(lambda: ing.nats_connected, timeout=15, what="reconnected")
        await ing.emit(trade(99, symbol="BLOCKED"))
        await wait_for(lambda: not ing.publishing_blocked, timeout=15, what="publishing again")
        nc = await nats.connect(nats_server.url)
        try:
            statuses: list[FeedStatus] = []

            async def read() -> bool:
                sub = await nc.jetstream().subscribe(subjects.feed_status("probe_ingest", "probe", "_", "_"),
                                                     ordered_consumer=True)
                statuses.clear()
                with contextlib.suppress(Exception):
                    while True:
                        statuses.append(codec.decode((await sub.next_msg(timeout=0.5)).data))
                await sub.unsubscribe()
                return bool(statuses) and statuses[-1].state == "connected"

            # ("blocked" itself was published while the bus was down: it may be among the lost)
            await wait_for(read, timeout=15, interval=0.5, what="the status after the outage")
            gap = next((s for s in statuses if s.state == "gap"), None)
            assert gap is not None, [s.state for s in statuses]
            assert gap.gap_start < gap.gap_end and "could not be published" in gap.detail
        finally:
            await nc.close()
    finally:
        await ing.stop()
