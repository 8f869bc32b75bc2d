"""No secret in logs, events, heartbeats, dead letters or metrics: the history writer and the
export orchestrator run under their own identities with secrets in every secret setting, do their
work (events, a dead letter, an export, HTTP API calls), and nothing they emit contains a secret."""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from marketbus.contracts import codec
from marketbus.contracts.jobs import ExportRequest, StreamSelector
from marketbus.runtime.logging import JsonFormatter
from services.export_orchestrator.app import ExportOrchestrator
from services.history_writer.app import HistoryWriter

from .conftest import SecureBus

pytestmark = pytest.mark.timeout(90)

SECRETS = {
    "pg password": "pg-pass-SECRET-1",
    "export api key": "api-key-SECRET-2",
    "signing key": "sign-key-SECRET-3",
    "s3 secret key": "s3-secret-SECRET-4",
    "s3 access key": "s3-access-SECRET-5",
}


async def _wait(predicate: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_no_secret_in_logs_events_heartbeats_dead_letters_or_metrics(bus: SecureBus, tmp_path: Path) -> None:
    secrets = dict(SECRETS)
    for identity in ("history_writer", "export_orchestrator"):
        secrets[f"{identity} nkey seed"] = bus.store.seed_file(identity).read_text().strip()
    log_text = io.StringIO()
    handler = logging.StreamHandler(log_text)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)

    seen: list[tuple[str, bytes, dict[str, str]]] = []
    admin = (await bus.connect("admin")).nc

    async def record(msg: Any) -> None:
        seen.append((msg.subject, msg.data, dict(msg.headers or {})))

    await admin.subscribe(">", cb=record)
    writer = HistoryWriter(**bus.service_settings("history_writer"), data_dir=str(tmp_path / "history"),
                           pg_dsn=f"postgresql://marketbus:{SECRETS['pg password']}@db/marketbus",
                           http_port=0, heartbeat_interval_s=0.2, batch_max_wait_s=0.05, fsync=False)
    orch = ExportOrchestrator(**bus.service_settings("export_orchestrator"), data_dir=str(tmp_path),
                              history_dir=str(tmp_path / "history"), api_port=0, http_port=0,
                              api_keys=SECRETS["export api key"], signing_secret=SECRETS["signing key"],
                              s3_access_key=SECRETS["s3 access key"], s3_secret_key=SECRETS["s3 secret key"],
                              heartbeat_interval_s=0.2, scan_interval_s=0.2)
    try:
        await writer.start()
        await orch.start()
        # a dead letter: an undecodable market-data message, consumed by the writer
        await admin.jetstream().publish("md.trade.finx.deribit.SECRETTEST", b"not json at all")
        # events: an export job, requested by the operator over the bus
        operator = (await bus.connect("operator")).nc
        request = ExportRequest(idempotency_key=str(uuid.uuid4()), selector=StreamSelector(kind="trade", source="finx"),
                                start_ns=1, end_ns=2, format="csv.gz", fill_gaps=False)
        reply = await operator.request("export.create", codec.encode(request), timeout=10)
        job_id = msgspec.json.decode(reply.data)["job_id"]
        # the HTTP API with its key, and a signed URL
        async with httpx.AsyncClient(timeout=10) as client:
            api = await client.get(f"{orch.api_url}/v1/exports/{job_id}",
                                   headers={"X-Api-Key": SECRETS["export api key"]})
            metrics = (await client.get(f"{writer.http_url}/metrics")).text + (
                await client.get(f"{orch.http_url}/metrics")).text
        await _wait(lambda: any(s.startswith("dlq.history_writer.") for s, _, _ in seen))
        await _wait(lambda: {s for s, _, _ in seen} >= {"status.history_writer.heartbeat",
                                                        "status.export_orchestrator.heartbeat"})
        await _wait(lambda: any(s == f"export.status.{job_id}" for s, _, _ in seen))
    finally:
        await orch.stop()
        await writer.stop()
        root.removeHandler(handler)
        root.setLevel(old_level)

    def text(messages: list[tuple[str, bytes, dict[str, str]]]) -> str:
        return "\n".join(f"{s} {d.decode('utf-8', 'replace')} {h}" for s, d, h in messages)

    places = {
        "logs": log_text.getvalue(),
        "events": text([m for m in seen if m[0].startswith(("export.status.", "md.", "status.history_writer.feed",
                                                             "$KV.export_jobs."))]),
        "heartbeats": text([m for m in seen if m[0].endswith(".heartbeat")]),
        "dead letters": text([m for m in seen if m[0].startswith("dlq.")]),
        "metrics": metrics,
        # and nothing anywhere on the bus (every subject, KV puts included): the signing key never travels
        "the bus": text(seen),
    }
    leaks = {place: [name for name, value in secrets.items() if value in body] for place, body in places.items()}
    assert api.status_code == 200 and all(places.values()), {k: len(v) for k, v in places.items()}
    assert leaks == {place: [] for place in places}, leaks


async def test_an_ingestors_vendor_key_stays_out_when_its_vendor_is_unreachable(bus: SecureBus) -> None:
    """The FinX key travels in the websocket URL and a REST query: what its connection failures
    leave (logs, anything on the bus: heartbeats, feed status, dead letters; metrics) must still
    not carry it."""
    from marketbus.runtime.http import free_port
    from services.ingest_finx.app import FinxIngestor

    key = "finx-key-SECRET-6"
    log_text = io.StringIO()
    handler = logging.StreamHandler(log_text)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    seen: list[tuple[str, bytes]] = []
    admin = (await bus.connect("admin")).nc

    async def record(msg: Any) -> None:
        seen.append((msg.subject, msg.data))

    await admin.subscribe(">", cb=record)
    closed = f"127.0.0.1:{free_port()}"  # nobody listens: every connection fails
    ing = FinxIngestor(**bus.service_settings("ingest_finx"), api_key=key, ws_url=f"ws://{closed}",
                       rest_url=f"http://{closed}", http_port=0, heartbeat_interval_s=0.2,
                       reconnect_initial_s=0.05, reconnect_max_s=0.2, request_timeout_s=1.0)
    try:
        await ing.start()
        # failed connections (logged; a feed status once the feed is known), heartbeats after them
        await _wait(lambda: log_text.getvalue().count("cannot connect") >= 3)
        count = len(seen)
        await _wait(lambda: any(s == "status.ingest_finx.heartbeat" for s, _ in seen[count:]))
        async with httpx.AsyncClient(timeout=10) as client:
            metrics = (await client.get(f"{ing.http_url}/metrics")).text
    finally:
        await ing.stop()
        root.removeHandler(handler)
        root.setLevel(old_level)
    bus_text = "\n".join(f"{s} {d.decode('utf-8', 'replace')}" for s, d in seen)
    places = {"logs": log_text.getvalue(), "the bus": bus_text, "metrics": metrics}
    assert all(places.values()) and "cannot connect" in log_text.getvalue() + bus_text, {
        k: v[-500:] for k, v in places.items()}
    assert {place: key in body for place, body in places.items()} == dict.fromkeys(places, False)
