"""Provisioning: what it creates (retention from the environment), that it never reverts an
operator's change, and that a service waits for it instead of creating anything."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from marketbus.contracts.consumers import CONSUMERS
from marketbus.contracts.streams import BUCKETS, DAY, OBJECT_STORES, STREAMS
from marketbus.runtime.http import free_port
from marketbus.runtime.natsserver import NatsServer
from marketbus.runtime.provision import provision
from marketbus.runtime.service import Service


@pytest.fixture
def bare_server(tmp_path: Path):
    """A nats-server nobody has provisioned."""
    server = NatsServer(data_dir=tmp_path / "nats", port=free_port()).start()
    try:
        yield server
    finally:
        server.cleanup()


async def test_provision_creates_everything_with_retention_from_the_environment(
        bare_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKETBUS_STREAM_MD_MAX_BYTES", "123456789")
    monkeypatch.setenv("MARKETBUS_STREAM_MD_MAX_AGE", str(2 * DAY))
    monkeypatch.setenv("MARKETBUS_STREAM_OBJ_EXPORT_ARTIFACTS_MAX_BYTES", "987654321")
    nc = await nats.connect(bare_server.url)
    try:
        js = nc.jetstream()
        await provision(js)
        await provision(js)  # idempotent
        names = {info.config.name for info in await js.streams_info()}
        md = (await js.stream_info("MD")).config
        dlq = (await js.stream_info("DLQ")).config
        artifacts = (await js.stream_info("OBJ_export_artifacts")).config
        consumers = [await js.consumer_info(c.stream, c.durable) for c in CONSUMERS]
    finally:
        await nc.close()
    expected = {s.name for s in STREAMS} | {f"KV_{b.name}" for b in BUCKETS} | {f"OBJ_{o.name}" for o in OBJECT_STORES}
    assert (names >= expected, md.max_bytes, md.max_age, dlq.max_bytes > 0, artifacts.max_bytes, len(consumers)) == (
        True, 123456789, 2 * DAY, True, 987654321, len(CONSUMERS))


def test_every_stream_and_object_store_is_size_capped_by_default() -> None:
    """The defaults bound disk use: no declared stream or object store grows without limit."""
    uncapped = [s.name for s in STREAMS if s.with_env({}).max_bytes <= 0]
    uncapped += [f"OBJ_{o.name}" for o in OBJECT_STORES if o.with_env({}).max_bytes <= 0]
    assert uncapped == []


async def test_an_operators_change_to_a_stream_is_kept_and_logged(nats_server: NatsServer,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        config: StreamConfig = (await js.stream_info("MD")).config
        config.max_age = 30 * DAY  # nats stream edit MD --max-age 30d
        await js.update_stream(config)
        with caplog.at_level(logging.WARNING, logger="marketbus.contracts.streams"):
            await provision(js)
        kept = (await js.stream_info("MD")).config.max_age
    finally:
        await nc.close()
    said = [r.getMessage() for r in caplog.records if r.name == "marketbus.contracts.streams"]
    assert (kept, any("MD differs" in m and "max_age" in m for m in said)) == (30 * DAY, True)


async def test_a_service_waits_for_provisioning_and_creates_nothing(bare_server: NatsServer,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    class Probe(Service):
        name = "ingest_probe"

    service = Probe(nats_url=bare_server.url, http_port=0, heartbeat_interval_s=60.0)
    with caplog.at_level(logging.WARNING, logger="marketbus.contracts.streams"):
        start = asyncio.create_task(service.start())
        await asyncio.sleep(2.5)
        waiting = not start.done()
        nc = await nats.connect(bare_server.url)
        try:
            created_by_service = [s.config.name for s in await nc.jetstream().streams_info()]
            await provision(nc.jetstream())
        finally:
            await nc.close()
        await asyncio.wait_for(start, 15)
    started_state = service.state
    await service.stop()
    logged = any("stream MD not provisioned: run `marketbus provision`" in r.getMessage() for r in caplog.records
                 if r.name == "marketbus.contracts.streams")
    assert (waiting, created_by_service, logged, started_state) == (True, [], True, "running")


def test_the_summary_counts_in_words() -> None:
    """What `marketbus up` and `marketbus provision` print: '1 object store', not '1 object stores'."""
    from marketbus.runtime.provision import ProvisionReport

    report = ProvisionReport(streams=["MD", "REF"], buckets=["feeds"], object_stores=["export_artifacts"],
                             consumers=["a", "b", "c"])
    assert report.summary() == "2 streams, 1 KV bucket, 1 object store, 3 durable consumers provisioned"


async def test_an_altered_service_durable_is_put_back_to_its_declaration(nats_server: NatsServer) -> None:
    """An admin edits a service's durable (another filter, headers only: the service would store
    nothing it expects); provisioning puts the declared config back."""
    from marketbus.contracts.consumers import HISTORY_STATUS

    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await provision(js)
        config = (await js.consumer_info(HISTORY_STATUS.stream, HISTORY_STATUS.durable)).config
        config.filter_subject = "status.feed.nobody.>"  # nats consumer edit STATUS history_writer_status ...
        config.headers_only = True
        await js.add_consumer(HISTORY_STATUS.stream, config)
        altered = (await js.consumer_info(HISTORY_STATUS.stream, HISTORY_STATUS.durable)).config
        assert (altered.filter_subject, altered.headers_only) == ("status.feed.nobody.>", True)
        await provision(js)
        back = (await js.consumer_info(HISTORY_STATUS.stream, HISTORY_STATUS.durable)).config
    finally:
        await nc.close()
    declared = HISTORY_STATUS.config()
    assert (back.filter_subject, bool(back.headers_only)) == (declared.filter_subject, False)


async def test_a_durable_with_another_deliver_policy_is_kept_and_the_fix_is_said(
        bare_server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    """nats-server cannot change a durable's deliver policy in place: provisioning neither deletes
    it (its unacked messages) nor stays silent, and an unaltered durable is not reported."""
    from nats.js.api import DeliverPolicy

    from marketbus.contracts.consumers import HISTORY_STATUS

    nc = await nats.connect(bare_server.url)
    try:
        js = nc.jetstream()
        await provision(js)
        caplog.clear()  # (the first provisioning's INFO lines, when another test set the level lower)
        with caplog.at_level(logging.WARNING, logger="marketbus.contracts.consumers"):
            await provision(js)
        assert not [r.getMessage() for r in caplog.records if r.name == "marketbus.contracts.consumers"
                    and r.levelno >= logging.WARNING and "consumer" in r.getMessage()]
        await js.delete_consumer(HISTORY_STATUS.stream, HISTORY_STATUS.durable)
        await js.add_consumer(HISTORY_STATUS.stream, HISTORY_STATUS.with_(deliver_policy=DeliverPolicy.NEW).config())
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="marketbus.contracts.consumers"):
            await provision(js)
        kept = (await js.consumer_info(HISTORY_STATUS.stream, HISTORY_STATUS.durable)).config.deliver_policy
    finally:
        await nc.close()
    said = [r.getMessage() for r in caplog.records if r.name == "marketbus.contracts.consumers"
            and r.levelno >= logging.WARNING and HISTORY_STATUS.durable in r.getMessage()]
    assert kept == DeliverPolicy.NEW and len(said) == 1
    assert "deliver_policy" in said[0] and "nats consumer rm STATUS history_writer_status" in said[0]
