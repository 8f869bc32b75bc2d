"""marketbus.faststream: which stream a subscription reads, and the durable's configuration."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.js.api import DeliverPolicy

from marketbus.faststream import consumer_settings, durable_config, stream_for, stream_spec_for


@pytest.mark.parametrize(("subject", "stream"), [
    ("md.trade.>", "MD"), ("md.*.digitex.*.*", "MD"), ("md.>", "MD"), ("ref.instrument.finx.>", "REF"),
    ("status.*.heartbeat", "STATUS"), ("orders.fill.digitex.*", "ORDERS_EVT"), ("export.status.>", "EXPORTS"),
])
def test_the_stream_holding_a_subject(subject: str, stream: str) -> None:
    assert stream_spec_for(subject).name == stream
    js_stream = stream_for(subject)
    assert js_stream.name == stream and js_stream.declare is False  # provisioned by the services


@pytest.mark.parametrize("subject", [">", "alerts.>", "md", "orders.>", "history.query"])
def test_a_subject_no_single_stream_holds_is_refused(subject: str) -> None:
    with pytest.raises(ValueError, match="no marketbus stream holds"):
        stream_spec_for(subject)


def test_durable_config_replays_from_a_point_in_time() -> None:
    start = datetime(2026, 1, 1, 12, 0)
    config = durable_config("mine", start_time=start)
    assert config.deliver_policy is DeliverPolicy.BY_START_TIME
    assert config.opt_start_time == start.replace(tzinfo=UTC)
    assert durable_config("mine", deliver="new").deliver_policy is DeliverPolicy.NEW
    assert config.max_deliver == 20 and config.ack_wait == 30.0


def test_the_nats_url_comes_from_the_env_else_from_what_make_run_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MARKETBUS_DATA_DIR", str(tmp_path))
    assert consumer_settings({}).nats_url == "nats://127.0.0.1:4222"
    (tmp_path / "nats.url").write_text("nats://127.0.0.1:45678\n")  # `make run` found 4222 busy
    assert consumer_settings({}).nats_url == "nats://127.0.0.1:45678"
    assert consumer_settings({"NATS_URL": "nats://bus:4222"}).nats_url == "nats://bus:4222"
    assert consumer_settings({"MARKETBUS_CONSUMER_NATS_URL": "nats://a:1", "NATS_URL": "nats://b:2"}).nats_url == \
        "nats://a:1"


async def test_typed_single_messages_with_decode_event() -> None:
    """Subjects without batch envelopes (job status, order events) take one typed message."""
    from faststream.nats import TestNatsBroker

    from marketbus.contracts import codec
    from marketbus.contracts.jobs import ExportJob, ExportRequest, StreamSelector
    from marketbus.faststream import ConsumerSettings, Typed, consumer_broker, decode_event, durable_subscriber

    broker = consumer_broker("typed", ConsumerSettings(nats_url="nats://127.0.0.1:1"))
    got: list[ExportJob] = []

    @durable_subscriber(broker, "export.status.>", "job_watch", decoder=decode_event)
    async def on_job(job: Typed[ExportJob]) -> None:
        got.append(job)

    request = ExportRequest(idempotency_key="k", selector=StreamSelector(kind="trade"), start_ns=0, end_ns=1)
    job = ExportJob(job_id="j1", request=request, state="running", percent=50.0, created_ts=1, updated_ts=2)
    async with TestNatsBroker(broker) as br:
        await br.publish(codec.encode(job), "export.status.j1")
    assert got == [job]
    assert stream_for("export.status.>").name == "EXPORTS"
