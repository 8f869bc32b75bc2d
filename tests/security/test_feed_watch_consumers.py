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
