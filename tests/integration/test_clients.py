"""marketbus.clients against real servers on a real nats-server (the history, order and export
clients are also covered through the CLI tests of those services)."""

from __future__ import annotations

from typing import Any, ClassVar

import nats
import pytest

from marketbus.clients import ReplayClient, RequestError
from marketbus.contracts.jobs import ReplayRequest
from marketbus.runtime.ingest import Ingestor
from marketbus.runtime.natsserver import NatsServer


class CountingIngestor(Ingestor):
    """A real ingestor whose vendor "replays" one event per second of the range."""

    name: ClassVar[str] = "ingest_clienttest"
    source: ClassVar[str] = "clienttest"

    async def replay(self, request: ReplayRequest) -> int:
        if request.kind != "trade":
            return await super().replay(request)  # refuses: ReplayUnsupported
        return (request.end_ns - request.start_ns) // 1_000_000_000


async def test_replay_client(nats_server: NatsServer) -> None:
    ingestor = CountingIngestor(nats_url=nats_server.url, http_port=0)
    await ingestor.start()
    nc: Any = await nats.connect(nats_server.url)
    try:
        replay = ReplayClient(nc, timeout=5)
        reply = await replay.replay("clienttest", "V", "S", "trade", 0, 5_000_000_000, request_id="r1")
        assert (reply.request_id, reply.accepted, reply.events) == ("r1", True, 5)
        refused = await replay.replay("clienttest", "V", "S", "book", 0, 1)
        assert not refused.accepted and "cannot replay book" in (refused.reason or "")
        with pytest.raises(RequestError) as raised:
            await replay.replay("nobody", "V", "S", "trade", 0, 1)
        assert raised.value.code == "no_responders"
        assert raised.value.message == "no nobody ingestor is running (no responders on replay.nobody)"
        with pytest.raises(ValueError, match="must be after the start"):
            await replay.replay("clienttest", "V", "S", "trade", 5, 5)
    finally:
        await nc.close()
        await ingestor.stop()
