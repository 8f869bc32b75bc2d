"""Each identity can do its job (positive checks), against a real nats-server running the
generated authorization (a server of this module's own, apart from the negative matrix)."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from marketbus.contracts import codec, subjects
from marketbus.contracts.status import ServiceHeartbeat

from .conftest import SecureBus

pytestmark = pytest.mark.timeout(120)


async def test_an_ingestor_publishes_its_data_and_keeps_its_cursor(bus: SecureBus) -> None:
    nc = (await bus.connect("ingest_digitex")).nc
    js = nc.jetstream()
    ack = await js.publish("md.trade.digitex.digitex.FS-BTCUSD", b"{}", timeout=5)
    kv = await js.key_value("ingest_state")
    await kv.put("digitex.cursor", b"42")
    assert (ack.stream, (await kv.get("digitex.cursor")).value) == ("MD", b"42")


async def test_the_history_writer_pulls_and_acks_its_consumer(bus: SecureBus) -> None:
    admin = (await bus.connect("admin")).nc
    await admin.jetstream().publish("md.trade.finx.deribit.WRITER", b"{}")
    nc = (await bus.connect("history_writer")).nc
    sub = await nc.jetstream().pull_subscribe_bind("history_writer_md", stream="MD")
    msgs = await sub.fetch(1, timeout=5)
    await msgs[0].ack_sync()
    assert msgs[0].subject.startswith("md.")


async def test_the_operator_places_a_command_the_router_consumes_and_acks_to_the_operator(bus: SecureBus) -> None:
    operator = (await bus.connect("operator")).nc
    router = (await bus.connect("order_router")).nc
    inbox = operator.new_inbox()
    sub = await operator.subscribe(inbox)
    ack = await operator.jetstream().publish(subjects.order_command("FS-BTCUSD"), b"{}",
                                             headers={"Marketbus-Reply-To": inbox})
    pull = await router.jetstream().pull_subscribe_bind("order_router", stream="ORDERS_CMD")
    msg = (await pull.fetch(1, timeout=5))[0]
    await router.publish(msg.headers["Marketbus-Reply-To"], b"ack")
    await msg.ack_sync()
    kv = await router.jetstream().key_value("orders_state")
    await kv.put("m.FS-BTCUSD", b"{}")
    evt = await router.jetstream().publish(subjects.order_event("FS-BTCUSD", "c1"), b"{}")
    state = await (await operator.jetstream().key_value("orders_state")).get("m.FS-BTCUSD")
    assert (ack.stream, (await sub.next_msg(5)).data, evt.stream, state.value) == (
        "ORDERS_CMD",
        b"ack",
        "ORDERS_EVT",
        b"{}",
    )


async def test_the_export_orchestrator_uses_its_bucket_and_object_store(bus: SecureBus) -> None:
    js = (await bus.connect("export_orchestrator")).nc.jetstream()
    kv = await js.key_value("export_jobs")
    await kv.put("job.x", b"{}")
    obs = await js.object_store("export_artifacts")
    await obs.put("x/a.csv", b"a,b\n")
    data = (await obs.get("x/a.csv")).data
    await obs.delete("x/a.csv")
    ack = await js.publish("export.status.x", b"{}")
    assert (data, ack.stream, (await kv.get("job.x")).value) == (b"a,b\n", "EXPORTS", b"{}")


async def test_an_ingestor_controls_its_own_feeds_and_the_operator_changes_them(bus: SecureBus) -> None:
    """The ingestor (its own identity) seeds, watches and answers for its vendor's feeds; the
    operator (the CLI) lists and changes them; the reader lists them."""
    from marketbus.clients import FeedClient
    from marketbus.vendor.feeds import Seed
    from tests.vendor.test_feeds import Probe, until

    async with Probe(heartbeat_interval_s=60, **bus.service_settings("ingest_digitex")) as probe:
        await probe.feed_control.start([Seed("FS:BTCUSD")])
        operator = FeedClient((await bus.connect("operator")).nc, timeout=5, by="cli")
        await operator.add("digitex", "FS:ETHUSD")
        await until(lambda: "FS:ETHUSD" in probe.collecting)
        await operator.pause("digitex", "FS:BTCUSD")
        await until(lambda: probe.collecting == ["FS:ETHUSD"])
        reader = FeedClient((await bus.connect("reader")).nc, timeout=5)
        listed = {f.instrument: f.state for f in await reader.list("digitex")}
        orchestrator = FeedClient((await bus.connect("export_orchestrator")).nc, timeout=5)
        await orchestrator.resume("digitex", "FS:BTCUSD")
        await until(lambda: sorted(probe.collecting) == ["FS:BTCUSD", "FS:ETHUSD"])
    assert listed == {"FS:BTCUSD": "paused", "FS:ETHUSD": "active"}


async def test_services_answer_requests_only_on_the_reply_subject(tmp_path) -> None:
    from .conftest import provision_as_admin, start_secure

    bus = start_secure(tmp_path)  # a server of its own: reply permissions are tracked per connection
    await provision_as_admin(bus)
    writer = (await bus.connect("history_writer")).nc
    reader = await bus.connect("reader")

    async def answer(msg) -> None:
        for i in range(3):  # a history query streams several chunks to one reply subject
            await writer.publish(msg.reply, str(i).encode())

    await writer.subscribe("history.query", cb=answer)
    await writer.flush()
    inbox = reader.nc.new_inbox()
    sub = await reader.nc.subscribe(inbox)
    await reader.nc.publish("history.query", b"{}", reply=inbox)
    try:
        got = [(await sub.next_msg(15)).data for _ in range(3)]  # a loaded host: bounds, not timings
        denied = await (await bus.connect("history_writer")).publish_denied(inbox)  # not a reply it was asked for
    finally:
        for nc in bus.clients:
            await nc.close()
        bus.server.cleanup()
    assert (got, denied) == ([b"0", b"1", b"2"], True)


async def test_the_reader_consumes_durably_and_sees_heartbeats(bus: SecureBus) -> None:
    admin = (await bus.connect("admin")).nc
    reader = (await bus.connect("reader")).nc
    js = reader.jetstream()
    await js.add_consumer("MD", ConsumerConfig(durable_name="my_dashboard", deliver_policy=DeliverPolicy.ALL))
    seen: asyncio.Queue = asyncio.Queue()
    await reader.subscribe(subjects.ALL_HEARTBEATS, cb=seen.put)
    await reader.flush()
    hb = ServiceHeartbeat(service="ingest_finx", instance="i", state="running", ts=1, started_ts=1, feeds=[])
    await admin.jetstream().publish("md.trade.finx.deribit.READER", b"{}")
    pull = await js.pull_subscribe_bind("my_dashboard", stream="MD")
    msgs = await pull.fetch(1, timeout=5)
    # heartbeats are core NATS and come every few seconds: the next one counts if one is missed
    heartbeat = None
    for _ in range(10):
        await admin.publish(subjects.heartbeat("ingest_finx"), codec.encode(hb))
        try:
            heartbeat = await asyncio.wait_for(seen.get(), 1)
            break
        except TimeoutError:
            continue
    assert heartbeat is not None, "the reader saw no heartbeat"
    assert (msgs[0].subject.startswith("md."), heartbeat.subject) == (True, "status.ingest_finx.heartbeat")


async def test_the_replay_service_answers_playback_requests_and_publishes_outputs_a_reader_sees(tmp_path) -> None:
    from .conftest import provision_as_admin, start_secure

    bus = start_secure(tmp_path)  # a server of its own: reply permissions are tracked per connection
    await provision_as_admin(bus)
    replay = (await bus.connect("replay")).nc
    writer = (await bus.connect("history_writer")).nc
    reader = (await bus.connect("reader")).nc
    operator = (await bus.connect("operator")).nc
    session = "s0123456789ab"

    async def history(msg) -> None:
        await writer.publish(msg.reply, b"rows")

    async def start(msg) -> None:
        rows = (await replay.request("history.query", b"{}", timeout=5)).data
        await msg.respond(rows + b":" + session.encode())
        for subject in (
            f"replay.{session}.md.trade.finx.deribit.BTC-USD",
            f"replay.{session}.ref.instrument.finx.deribit.BTC-USD",
            f"replay.{session}.status",
            f"replay.{session}.end",
        ):
            await replay.publish(subject, b"{}")

    async def control(msg) -> None:
        await msg.respond(b"paused")

    await writer.subscribe("history.query", cb=history)
    await replay.subscribe("history.replay.start", queue="replay", cb=start)
    await replay.subscribe("history.replay.*.control", cb=control)
    await replay.publish("status.replay.heartbeat", b"{}")
    await replay.flush()
    await writer.flush()
    outputs = await reader.subscribe("replay.*.>")
    await reader.flush()
    try:
        reply = (await reader.request("history.replay.start", b"{}", timeout=5)).data
        seen = [(await outputs.next_msg(5)).subject.split(".", 2)[2] for _ in range(4)]
        paused = (await operator.request(f"history.replay.{session}.control", b"{}", timeout=5)).data
    finally:
        for nc in bus.clients:
            await nc.close()
        bus.server.cleanup()
    assert (reply, seen, paused) == (b"rows:" + session.encode(), [
        "md.trade.finx.deribit.BTC-USD", "ref.instrument.finx.deribit.BTC-USD", "status", "end"], b"paused")


async def test_the_bus_exporter_reports_consumer_lag_as_the_monitor_identity(bus: SecureBus) -> None:
    """The exporter (python -m marketbus.runtime.consumer_lag) under the read-only ``monitor``
    identity: it starts (waits for the streams), polls every stream and consumer, sees heartbeats
    (its own among them) and reports a durable's lag, with no failed poll."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from marketbus.runtime.consumer_lag import BusExporter

    admin = (await bus.connect("admin")).nc
    await admin.jetstream().add_consumer("MD", ConsumerConfig(
        durable_name="monitor_lag", filter_subject="md.trade.finx.monitor.>", deliver_policy=DeliverPolicy.ALL))
    for i in range(2):
        await admin.jetstream().publish("md.trade.finx.monitor.X", b"{}", headers={"Nats-Msg-Id": f"monitor-{i}"})
    exporter = BusExporter(
        **bus.service_settings("monitor"), http_port=0, poll_interval_s=0.2, heartbeat_interval_s=0.2
    )
    await exporter.start()
    samples: dict = {}
    lag = ("marketbus_jetstream_consumer_pending", frozenset({("stream", "MD"), ("consumer", "monitor_lag")}))
    own = "marketbus_service_last_heartbeat_timestamp_seconds"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(50):
                text = (await client.get(f"{exporter.http_url}/metrics")).text
                samples = {(s.name, frozenset(s.labels.items())): s.value
                           for family in text_string_to_metric_families(text) for s in family.samples}
                if samples.get(lag) == 2 and any(n == own and ("service", "bus_exporter") in ls for n, ls in samples):
                    break
                await asyncio.sleep(0.1)
    finally:
        await exporter.stop()
    assert (samples.get(lag), samples.get(("marketbus_jetstream_poll_errors_total", frozenset())),
            any(n == own and ("service", "bus_exporter") in ls for n, ls in samples)) == (2, 0, True)
