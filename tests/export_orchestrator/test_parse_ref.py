"""export.get / export.cancel bodies (a job id, or {"job_id": ...}): one nested too deep to decode
(msgspec raises RecursionError while skipping an unknown field) gets an error reply; it used to
escape the handler (no reply, a traceback). Anyone with the reader identity may send export.get."""

from __future__ import annotations

import nats
import pytest

from marketbus.contracts import codec
from marketbus.contracts.errors import ErrorReply
from marketbus.runtime.settings import Secret
from services.export_orchestrator.app import ExportOrchestrator

DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000


@pytest.mark.timeout(120)
async def test_a_deeply_nested_job_reference_gets_an_error_reply(nats_server, tmp_path) -> None:
    orch = ExportOrchestrator(nats_url=nats_server.url, data_dir=str(tmp_path), history_dir=str(tmp_path / "h"),
                              http_port=0, api_port=0, api_keys=Secret("k"), heartbeat_interval_s=60.0)
    await orch.start()
    nc = await nats.connect(nats_server.url)
    try:
        for subject in ("export.get", "export.cancel"):
            reply = await nc.request(subject, DEEP_OBJECT, timeout=10)
            error = codec.decode_as(reply.data, ErrorReply)
            assert error.code == "bad_request" and error.message, (subject, error)
        ok = await nc.request("export.get", b'"nope"', timeout=10)  # still answers
        assert codec.decode_as(ok.data, ErrorReply).code == "not_found"
    finally:
        await nc.close()
        await orch.stop()
