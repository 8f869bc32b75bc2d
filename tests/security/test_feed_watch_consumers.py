"""An ingestor's rights on the feeds bucket reach its own vendor's keys, never a consumer of the
bucket by its name: another ingestor's watch cannot be pulled from (its changes stolen), deleted
or inspected, whatever the name; readers delete none. Real consumers on a real nats-server
running the generated authorization; every ingestor identity in turn."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from marketbus.security.identities import SERVICE_IDENTITIES
from marketbus.vendor.feeds import VendorKeys

from .conftest import SecureBus

pytestmark = pytest.mark.timeout(120)

INGESTORS = [i.name for i in SERVICE_IDENTITIES if i.name.startswith("ingest_")]
API = "$JS.API.CONSUMER"


async def _victim(admin_js: Any, name: str) -> None:
    """A pull consumer on another vendor's keys (what a watch looked like), changes pending."""
    await admin_js.add_consumer("KV_feeds", ConsumerConfig(
        name=name, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, filter_subject="$KV.feeds.victimvendor.>",
        inactive_threshold=60.0))
    await admin_js.publish("$KV.feeds.victimvendor.X", b"{}")


@pytest.mark.parametrize("who", INGESTORS)
async def test_an_ingestor_cannot_pull_delete_or_inspect_another_consumer_of_the_feeds(bus: SecureBus,
                                                                                        who: str) -> None:
    admin = (await bus.connect("admin")).nc.jetstream()
    victim = f"victim_{who}"
    await _victim(admin, victim)
    pending = (await admin.consumer_info("KV_feeds", victim)).num_pending
    assert pending >= 1
    probe = await bus.connect(who)
    for subject, body in ((f"{API}.MSG.NEXT.KV_feeds.{victim}", json.dumps({"batch": 10, "no_wait": True})),
                          (f"{API}.DELETE.KV_feeds.{victim}", ""), (f"{API}.INFO.KV_feeds.{victim}", "")):
        assert await probe.publish_denied(subject, body.encode()), f"{who} may {subject}"
    await asyncio.sleep(0.2)
    info = await admin.consumer_info("KV_feeds", victim)  # still there, its change not taken
    assert (info.num_pending, info.delivered.consumer_seq) == (pending, 0)
    await admin.delete_consumer("KV_feeds", victim)


@pytest.mark.parametrize("who", ["reader", "consumer", "operator", "export_orchestrator"])
async def test_a_reader_of_the_feeds_deletes_no_consumer_of_the_bucket(bus: SecureBus, who: str) -> None:
    admin = (await bus.connect("admin")).nc.jetstream()
    victim = f"victim_{who}"
    await _victim(admin, victim)
    probe = await bus.connect(who)
    assert await probe.publish_denied(f"{API}.DELETE.KV_feeds.{victim}")
    assert (await admin.consumer_info("KV_feeds", victim)).name == victim
    await admin.delete_consumer("KV_feeds", victim)


@pytest.mark.parametrize("who", INGESTORS)
async def test_an_ingestor_watches_its_own_keys_with_its_own_rights(bus: SecureBus, who: str) -> None:
    """The watch (marketbus.vendor.feeds.VendorKeys) works with exactly these rights: the current
    values first, then a change; no permission violation on the way."""
    vendor = who.removeprefix("ingest_")
    admin = (await bus.connect("admin")).nc.jetstream()
    await admin.publish(f"$KV.feeds.{vendor}.WATCHED1", b"one")
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(bus.url, error_cb=on_error, **bus.options(who))
    bus.clients.append(nc)
    watch = VendorKeys(nc.jetstream(), vendor, poll_s=0.2)
    await watch.open()
    try:
        current = {e.key: e.value for e in await watch.drain()}
        assert current.get(f"{vendor}.WATCHED1") == b"one"
        await admin.publish(f"$KV.feeds.{vendor}.WATCHED2", b"two")
        await admin.publish("$KV.feeds.victimvendor.NOTMINE", b"x")  # not its keys: never seen
        changes: list[Any] = []
        for _ in range(20):
            changes += await watch.next_changes()
            if changes:
                break
        assert [(e.key, e.value) for e in changes] == [(f"{vendor}.WATCHED2", b"two")]
    finally:
        await watch.close()
    assert not errors, errors


async def test_the_bus_exporter_names_durables_but_no_ephemeral_consumer(bus: SecureBus) -> None:
    """/metrics is read by whoever reaches the exporter: an ingestor's watch (an ephemeral with a
    random name) is counted under ``(ephemeral)``, never by its name, which would let a creator of
    consumers on the bucket update it; durables keep their names (the lag alert needs them)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from marketbus.runtime.consumer_lag import EPHEMERAL_LABEL, ConsumerLagCollector

    admin = (await bus.connect("admin")).nc.jetstream()
    await admin.publish("$KV.feeds.digitex.LAGGED", b"x")
    watcher = (await bus.connect("ingest_digitex")).nc
    watch = VendorKeys(watcher.jetstream(), "digitex")
    await watch.open()
    try:
        names = [c.name for c in await admin.consumers_info("KV_feeds") if c.config.durable_name is None]
        assert names
        registry = CollectorRegistry()
        await ConsumerLagCollector((await bus.connect("monitor")).nc.jetstream(), registry).poll()
        text = generate_latest(registry).decode()
    finally:
        await watch.close()
    assert not [n for n in names if n in text]
    assert f'marketbus_jetstream_consumer_pending{{consumer="{EPHEMERAL_LABEL}",stream="KV_feeds"}}' in text
    assert 'consumer="history_writer_md"' in text


async def test_a_watch_whose_filter_was_rewritten_by_name_stops_on_the_first_foreign_key(bus: SecureBus) -> None:
    """Whoever learns the watch consumer's name and may create consumers on the bucket (readers:
    nats-py's KV watch) can update it, e.g. to another vendor's keys. The watch refuses the first
    key that is not its vendor's (FeedControl then starts again on a fresh consumer)."""
    from marketbus.vendor.feeds import ForeignKey

    admin = (await bus.connect("admin")).nc.jetstream()
    await admin.publish("$KV.feeds.sitagri.MINE", b"x")
    watch = VendorKeys((await bus.connect("ingest_sitagri")).nc.jetstream(), "sitagri", poll_s=0.2)
    await watch.open()
    try:
        await watch.drain()
        name = watch.sub._sub._jsi._psub._consumer  # as if leaked
        reader = (await bus.connect("reader")).nc
        config = json.loads((await reader.request(f"{API}.INFO.KV_feeds.{name}", b"", timeout=2)).data)["config"]
        config["filter_subject"] = "$KV.feeds.finx.>"
        reply = json.loads((await reader.request(f"{API}.CREATE.KV_feeds", json.dumps(
            {"stream_name": "KV_feeds", "config": config}).encode(), timeout=2)).data)
        assert "error" not in reply, reply  # the server took it as an update
        await admin.publish("$KV.feeds.finx.NOTYOURS", b"x")
        with pytest.raises(ForeignKey):
            for _ in range(20):
                await watch.next_changes()
    finally:
        await watch.close()
