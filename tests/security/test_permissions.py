"""The negative matrix: every identity is denied what it must not do, against a real nats-server
running the generated authorization; and each identity can do its job (positive checks).

One assertion per case. Widening any right in marketbus.security.identities makes a case fail.
"""

from __future__ import annotations

import nats
import pytest

from marketbus.contracts.consumers import CONSUMERS
from marketbus.security.identities import IDENTITIES, SERVICE_IDENTITIES

from .conftest import SecureBus

pytestmark = pytest.mark.timeout(120)

NON_ADMIN = [i.name for i in IDENTITIES if not i.admin]
SERVICES = [i.name for i in SERVICE_IDENTITIES] + ["bus_exporter"]


def _cases() -> list[tuple[str, str, str]]:
    """(identity, "pub" | "sub", subject) that must be denied."""
    cases: list[tuple[str, str, str]] = []
    for who in NON_ADMIN:
        for stream in ("MD", "ORDERS_CMD", "KV_orders_state", "KV_export_jobs"):
            cases.append((who, "pub", f"$JS.API.STREAM.PURGE.{stream}"))
            cases.append((who, "pub", f"$JS.API.STREAM.DELETE.{stream}"))
        cases.append((who, "pub", "$JS.API.STREAM.CREATE.EVIL"))
        cases.append((who, "pub", "$JS.API.STREAM.UPDATE.MD"))
        for spec in CONSUMERS:  # every service's durable consumer: nobody deletes or redefines one
            cases.append((who, "pub", f"$JS.API.CONSUMER.DELETE.{spec.stream}.{spec.durable}"))
            cases.append((who, "pub", f"$JS.API.CONSUMER.DURABLE.CREATE.{spec.stream}.{spec.durable}"))
            if not spec.durable.startswith(who):  # acking its message: the service would never get it again
                cases.append((who, "pub", f"$JS.ACK.{spec.stream}.{spec.durable}.1.5.7.1700000000000000000.0"))
        # order commands are read by the router's durable only (a work queue nobody else reads)
        cases += [(who, "pub", s) for s in ("$JS.API.CONSUMER.CREATE.ORDERS_CMD", "$JS.API.DIRECT.GET.ORDERS_CMD")]
        cases.append((who, "sub", "orders.cmd.>"))
        if who != "order_router":  # the router reads back a command it gave up on, to dead-letter it
            cases.append((who, "pub", "$JS.API.CONSUMER.MSG.NEXT.ORDERS_CMD.order_router"))
            cases.append((who, "pub", "$JS.API.STREAM.MSG.GET.ORDERS_CMD"))
        if who != "operator":
            cases.append((who, "pub", "orders.cmd.digitex.FS-BTCUSD"))
            cases.append((who, "pub", "orders.ctl.digitex"))
            cases.append((who, "sub", "orders.evt.>"))
            cases.append((who, "sub", "orders.fill.>"))
            cases.append((who, "sub", "orders.position.>"))
            cases.append((who, "sub", "orders.balance.>"))
            # nor from the ORDERS_EVT stream (a consumer of one's own, a message read)
            cases += [(who, "pub", s) for s in ("$JS.API.CONSUMER.CREATE.ORDERS_EVT",
                                                "$JS.API.CONSUMER.CREATE.ORDERS_EVT.mine.orders.evt.>",
                                                "$JS.API.CONSUMER.DURABLE.CREATE.ORDERS_EVT.mine",
                                                "$JS.API.DIRECT.GET.ORDERS_EVT", "$JS.API.STREAM.MSG.GET.ORDERS_EVT")]
        if who not in ("operator", "order_router"):
            cases.append((who, "pub", "$JS.API.STREAM.INFO.KV_orders_state"))
            cases.append((who, "pub", "$JS.API.DIRECT.GET.KV_orders_state.$KV.orders_state.x"))
            cases.append((who, "pub", "$KV.orders_state.x"))
            for bucket in ("orders_idempotency", "orders_control"):  # the router's other state
                cases.append((who, "pub", f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.x"))
                cases.append((who, "pub", f"$JS.API.CONSUMER.CREATE.KV_{bucket}"))
                cases.append((who, "sub", f"$KV.{bucket}.>"))
        if who != "order_router":
            cases.append((who, "pub", "orders.evt.digitex.FS-BTCUSD.x"))
        else:
            cases.append((who, "pub", "orders.cmd.digitex.FS-BTCUSD"))
        own = "bus_exporter" if who == "monitor" else who  # the monitor identity is the bus exporter service
        for service in SERVICES:  # another service's status: its heartbeat, its feed status, its dead letters
            if service != own:
                cases.append((who, "pub", f"status.{service}.heartbeat"))
                cases.append((who, "pub", f"status.{service}.feed.x"))
                cases.append((who, "pub", f"dlq.{service}.x"))
        if who != "ingest_finx":
            cases.append((who, "pub", "md.trade.finx.deribit.BTC-USD"))
            cases.append((who, "pub", "$KV.ingest_state.finx.history.BTC-USD"))  # another's cursor
            cases.append((who, "pub", "dlq.ingest_finx.finx"))
        cases.append((who, "sub", "_INBOX.>"))
        for other in IDENTITIES:  # every other identity's replies, admin's included
            if other.name != who:
                cases.append((who, "sub", f"{other.inbox_prefix}.>"))
                cases.append((who, "sub", f"{other.inbox_prefix}.x"))
        if who != "export_orchestrator":  # the export job bucket (where the signing key used to be)
            cases.append((who, "pub", "$JS.API.DIRECT.GET.KV_export_jobs.$KV.export_jobs.config.signing_secret"))
            cases.append((who, "pub", "$JS.API.STREAM.MSG.GET.KV_export_jobs"))
            cases.append((who, "sub", "$KV.export_jobs.>"))
        if who in ("reader", "consumer", "operator"):
            cases.append((who, "pub", "$JS.API.CONSUMER.MSG.NEXT.MD.history_writer_md"))
            cases.append((who, "pub", "$JS.API.CONSUMER.CREATE.MD.history_writer_md"))
            cases.append((who, "pub", "$JS.API.CONSUMER.MSG.NEXT.ORDERS_CMD.order_router"))
        if who == "consumer":  # derived events only: never a marketbus namespace, never a command
            cases += [
                (who, "pub", s)
                for s in (
                    "md.bar.mine.x.y",
                    "ref.instrument.mine.x.y",
                    "status.consumer.heartbeat",
                    "export.create",
                    "orders.cmd.digitex.FS-BTCUSD",
                    "analyticsx",
                )
            ]
        cases += _playback_cases(who)
        cases += _feed_cases(who)
    cases += _monitor_cases()
    return cases


def _monitor_cases() -> list[tuple[str, str, str]]:
    """The bus exporter's identity reads JetStream information only: no message of a stream, no
    consumer of its own or anyone's, no payload subscription beyond status and export progress."""
    who = "monitor"
    pubs = ("$JS.API.STREAM.MSG.GET.MD", "$JS.API.DIRECT.GET.MD", "$JS.API.DIRECT.GET.MD.md.trade.finx.deribit.X",
            "$JS.API.CONSUMER.CREATE.MD", "$JS.API.CONSUMER.CREATE.MD.mine", "$JS.API.CONSUMER.DURABLE.CREATE.MD.mine",
            "$JS.API.CONSUMER.DELETE.MD.mine", "$JS.API.CONSUMER.MSG.NEXT.MD.history_writer_md",
            "$JS.ACK.MD.history_writer_md.1.1.1.1.1", "$JS.API.STREAM.PURGE.KV_export_jobs",
            "$JS.API.STREAM.DELETE.OBJ_export_artifacts", "$JS.API.STREAM.INFO.KV_export_jobs",
            "history.query", "export.create", "export.cancel", "status.history_writer.heartbeat",
            "dlq.bus_exporter.x", "$KV.export_jobs.job.x")
    subs = ("md.>", "ref.>", "dlq.>", "history.query", "export.create", "$KV.>", "_INBOX.reader.>")
    return [(who, "pub", s) for s in pubs] + [(who, "sub", s) for s in subs]


def _feed_cases(who: str) -> list[tuple[str, str, str]]:
    """Feed control: an ingestor touches its own vendor's feed keys only and answers its own
    vendor's requests; only the ingestors write the bucket; reader and monitor change nothing."""
    cases: list[tuple[str, str, str]] = []
    if who != "ingest_digitex":
        cases += [(who, "pub", "$KV.feeds.digitex.FS=3ABTCUSD"), (who, "pub", "$KV.feeds.digitex._seeded"),
                  (who, "sub", "feeds.ctl.digitex")]
    if who.startswith("ingest_") and who != "ingest_digitex":  # another vendor's feeds, even reading
        cases += [(who, "pub", "$JS.API.DIRECT.GET.KV_feeds.$KV.feeds.digitex.FS=3ABTCUSD"),
                  (who, "pub", "$JS.API.CONSUMER.CREATE.KV_feeds.c1.$KV.feeds.digitex.>"),
                  (who, "pub", "$JS.API.CONSUMER.CREATE.KV_feeds.c1.$KV.feeds.>"),
                  (who, "pub", "$JS.API.CONSUMER.CREATE.KV_feeds"),  # unfiltered
                  (who, "pub", "$JS.API.STREAM.MSG.GET.KV_feeds"),
                  (who, "pub", "feeds.ctl.digitex")]
    if who.startswith("ingest_"):  # its watch is a push consumer: nothing names another consumer of the bucket
        cases += [(who, "pub", f"$JS.API.CONSUMER.{op}.KV_feeds.c1") for op in ("MSG.NEXT", "DELETE", "INFO")]
        cases += [(who, "pub", "$JS.API.CONSUMER.DURABLE.CREATE.KV_feeds.c1"),
                  (who, "pub", "$JS.API.CONSUMER.CREATE.KV_feeds.c1"),  # named, unfiltered
                  (who, "pub", "$JS.API.CONSUMER.LIST.KV_feeds"), (who, "pub", "$JS.API.CONSUMER.NAMES.KV_feeds")]
        # the progress bucket: its own keys put, nothing else (no consumer, no other source's key)
        cases += [(who, "pub", f"$JS.API.CONSUMER.{op}.KV_ingest_state.c1")
                  for op in ("MSG.NEXT", "DELETE", "INFO", "DURABLE.CREATE")]
        cases += [(who, "pub", "$JS.API.CONSUMER.CREATE.KV_ingest_state"),
                  (who, "pub", "$JS.API.CONSUMER.CREATE.KV_ingest_state.c1.$KV.ingest_state.>"),
                  (who, "pub", "$JS.API.STREAM.PURGE.KV_ingest_state")]
    if who in ("reader", "consumer", "operator", "export_orchestrator"):  # they read the bucket, delete nothing
        cases.append((who, "pub", "$JS.API.CONSUMER.DELETE.KV_feeds.c1"))
    if who in ("reader", "consumer", "monitor", "history_writer", "replay", "order_router"):
        cases += [(who, "pub", f"feeds.ctl.{source}") for source in SOURCES]
    if who in ("monitor", "history_writer", "replay", "order_router"):
        cases += [(who, "pub", "$JS.API.DIRECT.GET.KV_feeds.$KV.feeds.digitex.FS=3ABTCUSD"),
                  (who, "pub", "$JS.API.STREAM.INFO.KV_feeds")]
    return cases


PLAYBACK_EVENT = "replay.s0123456789ab.md.trade.finx.deribit.BTC-USD"
SOURCES = ("finx", "ticksupply", "digitex", "sitagri")


def _playback_cases(who: str) -> list[tuple[str, str, str]]:
    """History playback: only the replay service answers playback requests and publishes
    playback outputs; nobody but the export orchestrator sends an ingestor's replay.<source>."""
    cases: list[tuple[str, str, str]] = []
    if who != "replay":
        cases += [(who, "pub", PLAYBACK_EVENT), (who, "pub", "replay.s0123456789ab.end"),
                  (who, "pub", "replay.s0123456789ab.status"), (who, "sub", "history.replay.start"),
                  (who, "sub", "history.replay.*.control"), (who, "pub", "status.replay.heartbeat")]
    if who != "export_orchestrator":
        cases += [(who, "pub", f"replay.{source}") for source in SOURCES]
    if who == "replay":
        cases += [(who, "sub", "replay.finx"), (who, "sub", "history.query"), (who, "pub", "history.replay.start"),
                  (who, "pub", "replay.finx.x"), (who, "pub", "status.history_writer.heartbeat"),
                  (who, "pub", "dlq.history_writer.x"), (who, "sub", "md.>")]
    if who in ("reader", "consumer", "operator"):  # users watch playbacks, never an ingestor's requests
        cases += [(who, "sub", f"replay.{source}") for source in SOURCES]
    return cases


@pytest.mark.parametrize(("who", "action", "subject"), _cases(), ids=str)
async def test_identity_is_denied(bus: SecureBus, who: str, action: str, subject: str) -> None:
    probe = await bus.connect(who)
    denied = await (probe.publish_denied(subject) if action == "pub" else probe.subscribe_denied(subject))
    assert denied, f"{who} may {action} {subject}"


async def test_a_wrong_key_is_not_let_in(bus: SecureBus, tmp_path) -> None:
    from marketbus.security.credentials import new_seed, write_private

    seed = tmp_path / "intruder.nk"
    write_private(seed, new_seed())
    with pytest.raises(Exception, match="(?i)authorization"):
        await nats.connect(bus.url, nkeys_seed=str(seed), max_reconnect_attempts=0, allow_reconnect=False)


async def test_anonymous_clients_are_not_let_in(bus: SecureBus) -> None:
    with pytest.raises(Exception, match="(?i)authorization"):
        await nats.connect(bus.url, max_reconnect_attempts=0, allow_reconnect=False)


@pytest.mark.parametrize(("bucket", "own_key", "other_key"), [
    ("ingest_state", "finx.rollup", "digitex.cursor.rollup"),
    ("feeds", "finx.ROLLUP", "digitex.ROLLUP"),
])
async def test_an_ingestor_cannot_wipe_a_shared_bucket_with_a_rollup(bus: SecureBus, bucket: str, own_key: str,
                                                                     other_key: str) -> None:
    """A write to its own key with ``Nats-Rollup: all`` would purge every other identity's keys
    of the bucket: the shared buckets refuse rollup headers."""
    from nats.js.errors import APIError

    admin = (await bus.connect("admin")).nc
    await (await admin.jetstream().key_value(bucket)).put(other_key, b"theirs")
    finx = (await bus.connect("ingest_finx")).nc
    with pytest.raises(APIError):
        await finx.jetstream().publish(f"$KV.{bucket}.{own_key}", b"", headers={"Nats-Rollup": "all"}, timeout=5)
    assert (await (await admin.jetstream().key_value(bucket)).get(other_key)).value == b"theirs"
