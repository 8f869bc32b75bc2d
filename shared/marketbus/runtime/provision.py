"""Provisioning: create what the services bind to, once, as an admin identity.

Streams (retention from ``MARKETBUS_STREAM_<NAME>_MAX_AGE`` / ``_MAX_BYTES``), KV buckets, the
export object store and the services' durable consumers, all from the declarations in
:mod:`marketbus.contracts.streams` and :mod:`marketbus.contracts.consumers`. Idempotent: what
exists is left as it is (an operator's changes to a stream are kept, the difference logged),
except a service's durable consumer: one whose filter, headers-only, ack or redelivery settings
were altered is put back to its declaration (and logged), since the service would otherwise miss
or mishandle its messages; a deliver or ack policy nats-server cannot change in place is reported
in one warning line with the fix, never by deleting the durable (see ``ensure_consumer``).
Run by ``marketbus provision``, by ``marketbus up`` before the services, and by compose's
``provision`` one-shot service.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.js import JetStreamContext

from marketbus.contracts import consumers, streams

from .broker import BusSettings

log = logging.getLogger(__name__)


@dataclass
class ProvisionReport:
    streams: list[str] = field(default_factory=list)
    buckets: list[str] = field(default_factory=list)
    object_stores: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def count(n: int, what: str) -> str:
            return f"{n} {what}" if n == 1 else f"{n} {what}s"

        return (f"{count(len(self.streams), 'stream')}, {count(len(self.buckets), 'KV bucket')}, "
                f"{count(len(self.object_stores), 'object store')}, "
                f"{count(len(self.consumers), 'durable consumer')} provisioned")


async def provision(js: JetStreamContext, replicas: int = 1) -> ProvisionReport:
    """Create every declared stream, bucket, object store and durable consumer that is missing."""
    report = ProvisionReport()
    for spec in streams.STREAMS:
        await streams.ensure_stream(js, spec, replicas)
        report.streams.append(spec.name)
    for bucket in streams.BUCKETS:
        await streams.create_bucket(js, bucket, replicas)
        report.buckets.append(bucket.name)
    for store in streams.OBJECT_STORES:
        await streams.create_object_store(js, store, replicas)
        report.object_stores.append(store.name)
    for consumer in consumers.CONSUMERS:
        await consumers.ensure_consumer(js, consumer)
        report.consumers.append(f"{consumer.stream}/{consumer.durable}")
    log.info("%s", report.summary())
    return report


async def provision_server(settings: BusSettings, **connect: Any) -> ProvisionReport:
    """Connect with ``settings`` (an admin identity) and provision."""
    nc = await nats.connect(**{**settings.connect_options("marketbus-provision"), "max_reconnect_attempts": 2,
                               "allow_reconnect": False, **connect})
    try:
        return await provision(nc.jetstream(), settings.stream_replicas)
    finally:
        await nc.drain()


async def provision_url(url: str, replicas: int = 1, **connect: Any) -> ProvisionReport:
    """Provision the server at ``url`` (benchmarks and tools on their own unauthenticated servers)."""
    nc = await nats.connect(url.split(","), **connect)
    try:
        return await provision(nc.jetstream(), replicas)
    finally:
        await nc.close()
