"""A service identity publishes on status.<its name>.> only, but a heartbeat names its service in
the payload: an ingestor could post the order router's heartbeat ("running") on its own subject,
and `marketbus status`, `marketbus up` and the bus exporter showed it as the router's. Each now
takes a heartbeat or feed status only from its service's own subject."""

from __future__ import annotations

import time
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from marketbus.cli.status import fetch_heartbeats
from marketbus.contracts import codec, subjects
from marketbus.contracts.status import ServiceHeartbeat
from marketbus.contracts.streams import ensure_all
from marketbus.runtime.consumer_lag import BusWatch


def _hb(service: str, instance: str) -> ServiceHeartbeat:
    now = time.time_ns()
    return ServiceHeartbeat(service=service, instance=instance, state="running", ts=now, started_ts=now, feeds=[])


async def test_status_ignores_a_heartbeat_naming_another_service(nats_server) -> None:
    import nats

    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_all(js)
        await js.publish(subjects.heartbeat("ingest_finx"), codec.encode(_hb("ingest_finx", "real")))
        await js.publish(subjects.heartbeat("ingest_finx") + ".x", codec.encode(_hb("order_router", "forged")))
        await js.publish(subjects.heartbeat("ingest_digitex"), codec.encode(_hb("order_router", "forged2")))
    finally:
        await nc.close()
    seen = await fetch_heartbeats(nats_server.url)
    assert set(seen) == {"ingest_finx/real"}, seen


async def test_the_bus_exporter_ignores_a_heartbeat_naming_another_service() -> None:
    watch = BusWatch(nc=None, registry=CollectorRegistry())  # type: ignore[arg-type]
    for subject, hb in ((subjects.heartbeat("ingest_finx"), _hb("order_router", "forged")),
                        (subjects.heartbeat("order_router"), _hb("order_router", "real"))):
        await watch._on_message(SimpleNamespace(subject=subject, data=codec.encode(hb), headers=None))  # type: ignore[arg-type]
    assert set(watch._heartbeat_states) == {("order_router", "real")}
