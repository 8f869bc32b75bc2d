"""Each ingestor reads and writes its own keys of the ``ingest_state`` bucket only: another
ingestor's cursors can be neither read (direct get by key, message get, a consumer of any kind)
nor written, while its own job (its cursors, its events) works. A real nats-server running the
generated authorization; every ingestor identity in turn."""

from __future__ import annotations

from typing import Any

import nats
import pytest
from nats.js.errors import KeyNotFoundError

from marketbus.contracts import streams
from marketbus.runtime.natsserver import NatsServer
from marketbus.runtime.provision import provision
from marketbus.security.identities import SERVICE_IDENTITIES

from .conftest import SecureBus

pytestmark = pytest.mark.timeout(120)

INGESTORS = [i.name for i in SERVICE_IDENTITIES if i.name.startswith("ingest_")]
BUCKET = streams.INGEST_STATE.name
STREAM = f"KV_{BUCKET}"
API = "$JS.API"


def source(identity: str) -> str:
    return identity.removeprefix("ingest_")


@pytest.mark.parametrize("who", INGESTORS)
async def test_an_ingestor_keeps_its_own_state_and_cannot_touch_another_ingestors(bus: SecureBus, who: str) -> None:
    own = source(who)
    others = [source(i) for i in INGESTORS if i != who]
    admin = await (await bus.connect("admin")).nc.jetstream().key_value(BUCKET)
    for other in others:
        await admin.put(f"{other}.cursor.secret", f"{other}-state".encode())

    probe = await bus.connect(who)
    kv = await probe.nc.jetstream().key_value(BUCKET)
    # its own job: put, get back, update, a missing key reads as missing; its events publish
    revision = await kv.put(f"{own}.cursor.iso", b"41")
    await kv.update(f"{own}.cursor.iso", b"42", last=revision)
    assert (await kv.get(f"{own}.cursor.iso")).value == b"42"
    with pytest.raises(KeyNotFoundError):
        await kv.get(f"{own}.cursor.never-written")
    ack = await probe.nc.jetstream().publish(f"md.trade.{own}.V.ISOLATION", b"{}", timeout=5)
    assert ack.stream == "MD"
    assert not probe.violations

    # another ingestor's state: a read through nats-py fails, and each way in is a violation
    for other in others:
        with pytest.raises(Exception):  # noqa: B017 - the server does not answer (a timeout), nats-py's choice
            await kv.get(f"{other}.cursor.secret")
        key = f"$KV.{BUCKET}.{other}.cursor.secret"
        denied: list[tuple[str, bytes]] = [
            (f"{API}.DIRECT.GET.{STREAM}.{key}", b""),  # by key in the subject (nats-py's kv.get)
            (f"{API}.DIRECT.GET.{STREAM}", f'{{"last_by_subj":"{key}"}}'.encode()),  # by key in the body
            (f"{API}.STREAM.MSG.GET.{STREAM}", f'{{"last_by_subj":"{key}"}}'.encode()),
            (key, b"overwritten"),  # a write
            # a consumer reading its keys: unnamed, named with its filter, durable
            (f"{API}.CONSUMER.CREATE.{STREAM}", b"{}"),
            (f"{API}.CONSUMER.CREATE.{STREAM}.c1.$KV.{BUCKET}.{other}.>", b"{}"),
            (f"{API}.CONSUMER.CREATE.{STREAM}.c1.$KV.{BUCKET}.>", b"{}"),
            (f"{API}.CONSUMER.DURABLE.CREATE.{STREAM}.c1", b"{}"),
        ]
        for subject, body in denied:
            assert await probe.publish_denied(subject, body), f"{who} may {subject}"
        assert (await admin.get(f"{other}.cursor.secret")).value == f"{other}-state".encode()  # untouched


async def test_provisioning_turns_direct_gets_on_for_a_bucket_an_older_release_made(
        unprovisioned_nats_server: NatsServer) -> None:
    nc: Any = await nats.connect(unprovisioned_nats_server.url)
    try:
        js = nc.jetstream()
        old = streams.INGEST_STATE.config()
        old.direct = None  # what an older release declared
        await js.create_key_value(old)
        await (await js.key_value(BUCKET)).put("finx.cursor", b"1")
        assert not (await js.stream_info(STREAM)).config.allow_direct
        await provision(js)
        assert (await js.stream_info(STREAM)).config.allow_direct
        assert (await (await js.key_value(BUCKET)).get("finx.cursor")).value == b"1"
    finally:
        await nc.close()
