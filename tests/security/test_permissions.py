"""The negative matrix: every identity is denied what it must not do, against a real nats-server
running the generated authorization; and each identity can do its job (positive checks).

One assertion per case. Widening any right in marketbus.security.identities makes a case fail.
"""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from marketbus.contracts import codec, subjects
from marketbus.contracts.status import ServiceHeartbeat
from marketbus.security.identities import IDENTITIES, SERVICE_IDENTITIES

from .conftest import SecureBus

pytestmark = pytest.mark.timeout(120)

NON_ADMIN = [i.name for i in IDENTITIES if not i.admin]
SERVICES = [i.name for i in SERVICE_IDENTITIES]


def _cases() -> list[tuple[str, str, str]]:
    """(identity, "pub" | "sub", subject) that must be denied."""
    cases: list[tuple[str, str, str]] = []
    for who in NON_ADMIN:
        for stream in ("MD", "ORDERS_CMD", "KV_orders_state", "KV_export_jobs"):
            cases.append((who, "pub", f"$JS.API.STREAM.PURGE.{stream}"))
            cases.append((who, "pub", f"$JS.API.STREAM.DELETE.{stream}"))
        cases.append((who, "pub", "$JS.API.STREAM.CREATE.EVIL"))
        cases.append((who, "pub", "$JS.API.STREAM.UPDATE.MD"))
        for stream, durable in (("MD", "history_writer_md"), ("ORDERS_CMD", "order_router")):
            cases.append((who, "pub", f"$JS.API.CONSUMER.DELETE.{stream}.{durable}"))
        if who != "operator":
            cases.append((who, "pub", "orders.cmd.digitex.FS-BTCUSD"))
            cases.append((who, "pub", "orders.ctl.digitex"))
            cases.append((who, "sub", "orders.evt.>"))
            cases.append((who, "sub", "orders.fill.>"))
        if who not in ("operator", "order_router"):
            cases.append((who, "pub", "$JS.API.STREAM.INFO.KV_orders_state"))
            cases.append((who, "pub", "$JS.API.DIRECT.GET.KV_orders_state.$KV.orders_state.x"))
            cases.append((who, "pub", "$KV.orders_state.x"))
        if who != "order_router":
            cases.append((who, "pub", "status.order_router.heartbeat"))
            cases.append((who, "pub", "orders.evt.digitex.FS-BTCUSD.x"))
        else:
            cases.append((who, "pub", "status.ingest_finx.heartbeat"))
            cases.append((who, "pub", "orders.cmd.digitex.FS-BTCUSD"))
        if who != "ingest_finx":
            cases.append((who, "pub", "md.trade.finx.deribit.BTC-USD"))
            cases.append((who, "pub", "dlq.ingest_finx.finx"))
        cases.append((who, "sub", "_INBOX.>"))
        other = "operator" if who != "operator" else "reader"
        cases.append((who, "sub", f"_INBOX.{other}.>"))
        if who != "export_orchestrator":  # the export job bucket (where the signing key used to be)
            cases.append((who, "pub", "$JS.API.DIRECT.GET.KV_export_jobs.$KV.export_jobs.config.signing_secret"))
            cases.append((who, "pub", "$JS.API.STREAM.MSG.GET.KV_export_jobs"))
            cases.append((who, "sub", "$KV.export_jobs.>"))
        if who in ("reader", "operator"):
            cases.append((who, "pub", "$JS.API.CONSUMER.MSG.NEXT.MD.history_writer_md"))
            cases.append((who, "pub", "$JS.API.CONSUMER.CREATE.MD.history_writer_md"))
            cases.append((who, "pub", "$JS.API.CONSUMER.MSG.NEXT.ORDERS_CMD.order_router"))
    return cases


@pytest.mark.parametrize(("who", "action", "subject"), _cases(), ids=lambda v: str(v))
async def test_identity_is_denied(bus: SecureBus, who: str, action: str, subject: str) -> None:
    probe = await bus.connect(who)
    denied = await (probe.publish_denied(subject) if action == "pub" else probe.subscribe_denied(subject))
    assert denied, f"{who} may {action} {subject}"


async def test_a_wrong_key_is_not_let_in(bus: SecureBus, tmp_path) -> None:  # noqa: ANN001
    from marketbus.security.credentials import new_seed, write_private

    seed = tmp_path / "intruder.nk"
    write_private(seed, new_seed())
    with pytest.raises(Exception, match="(?i)authorization"):
        await nats.connect(bus.url, nkeys_seed=str(seed), max_reconnect_attempts=0, allow_reconnect=False)


async def test_anonymous_clients_are_not_let_in(bus: SecureBus) -> None:
    with pytest.raises(Exception, match="(?i)authorization"):
        await nats.connect(bus.url, max_reconnect_attempts=0, allow_reconnect=False)


# --- positive: each identity can do its job ----------------------------------------------------
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
    assert (ack.stream, (await sub.next_msg(5)).data, evt.stream, state.value) == ("ORDERS_CMD", b"ack", "ORDERS_EVT", b"{}")


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


async def test_services_answer_requests_only_on_the_reply_subject(tmp_path) -> None:  # noqa: ANN001
    from .conftest import provision_as_admin, start_secure

    bus = start_secure(tmp_path)  # a server of its own: reply permissions are tracked per connection
    await provision_as_admin(bus)
    writer = (await bus.connect("history_writer")).nc
    reader = await bus.connect("reader")

    async def answer(msg) -> None:  # noqa: ANN001
        for i in range(3):  # a history query streams several chunks to one reply subject
            await writer.publish(msg.reply, str(i).encode())

    await writer.subscribe("history.query", cb=answer)
    await writer.flush()
    inbox = reader.nc.new_inbox()
    sub = await reader.nc.subscribe(inbox)
    await reader.nc.publish("history.query", b"{}", reply=inbox)
    try:
        got = [(await sub.next_msg(5)).data for _ in range(3)]
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
    await admin.publish(subjects.heartbeat("ingest_finx"), codec.encode(hb))
    await admin.jetstream().publish("md.trade.finx.deribit.READER", b"{}")
    pull = await js.pull_subscribe_bind("my_dashboard", stream="MD")
    msgs = await pull.fetch(1, timeout=5)
    assert (msgs[0].subject.startswith("md."), (await asyncio.wait_for(seen.get(), 5)).subject) == (
        True, "status.ingest_finx.heartbeat")
