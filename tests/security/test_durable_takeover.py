"""A user identity cannot change a service's durable consumer through the one JetStream API subject
whose consumer name is in the body, not the subject: ``$JS.API.CONSUMER.CREATE.<stream>`` (nats-py's
unnamed ephemeral create). Sent with ``config.name`` set to a service's durable, nats-server updates
that consumer in place: as ``reader``, ``headers_only`` made the history writer dead-letter every
event as empty, a filter starved it, ``max_deliver -1`` unbounded its redeliveries. Users' own
consumers (named, durable, ordered) still work."""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from marketbus.contracts import consumers
from tests.security.conftest import SecureBus

USERS = ("reader", "consumer", "operator")


@pytest.mark.parametrize("who", USERS)
@pytest.mark.parametrize("spec", [s for s in consumers.CONSUMERS if s.stream != "ORDERS_CMD"], ids=lambda s: s.durable)
async def test_a_user_cannot_rewrite_a_service_durable_by_name_in_the_body(bus: SecureBus, who: str, spec) -> None:
    admin = (await bus.connect("admin")).nc.jetstream()
    before = (await admin.consumer_info(spec.stream, spec.durable)).config
    probe = await bus.connect(who)
    hostile = {"stream_name": spec.stream, "config": {
        "name": spec.durable, "durable_name": None, "ack_policy": "explicit", "deliver_policy": "all",
        "headers_only": True, "max_deliver": -1, "filter_subject": "nothing.here", "inactive_threshold": 1_000_000_000}}
    api = "$JS.API.CONSUMER"
    for subject in (f"{api}.CREATE.{spec.stream}", f"{api}.CREATE.{spec.stream}.mine",
                    f"{api}.CREATE.{spec.stream}.mine.nothing.here", f"{api}.DURABLE.CREATE.{spec.stream}.mine"):
        try:
            await probe.nc.request(subject, json.dumps(hostile).encode(), timeout=2)
        except Exception:
            pass
    await asyncio.sleep(0.2)
    after = (await admin.consumer_info(spec.stream, spec.durable)).config
    assert after == before, f"{who} changed {spec.durable}: {before} -> {after}"


@pytest.mark.parametrize("who", USERS)
async def test_a_user_still_reads_a_stream_from_an_ephemeral_consumer(bus: SecureBus, who: str) -> None:
    """What `marketbus tail --last` and `marketbus status` do: an ordered consumer on STATUS / MD."""
    from marketbus.runtime.ordered import named_ephemeral

    nc = (await bus.connect(who)).nc
    admin = (await bus.connect("admin")).nc.jetstream()
    await admin.publish(f"md.trade.finx.CB.EPH{who}", b"{}")
    sub = await nc.jetstream().subscribe(f"md.trade.finx.CB.EPH{who}", ordered_consumer=True,
                                         config=named_ephemeral(ConsumerConfig(deliver_policy=DeliverPolicy.ALL)))
    msg = await sub.next_msg(timeout=5)
    assert msg.subject == f"md.trade.finx.CB.EPH{who}"
    await sub.unsubscribe()
