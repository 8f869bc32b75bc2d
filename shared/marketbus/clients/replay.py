"""The client half of replay: ask an ingestor to re-publish a time range from its vendor.

``replay.<source>`` (request/reply, queue group of that source's ingestors):
:class:`ReplayRequest` -> :class:`ReplayReply`. The replayed events travel on their usual ``md.``
subjects with ``replay=True`` (and the same ids, so JetStream and the history writer de-duplicate
them); ``events`` in the reply counts them, and they are acknowledged by the stream before the
reply is sent. A source that cannot replay that kind answers ``accepted=False`` with a ``reason``.

    reply = await ReplayClient(nc).replay("digitex", "DIGITEX", "FS-BTCUSD", "trade", start_ns, end_ns)
"""

from __future__ import annotations

import uuid
from typing import Any

from marketbus.contracts import codec, subjects
from marketbus.contracts.jobs import ReplayReply, ReplayRequest

from .errors import decode_reply, request


class ReplayClient:
    """Replay requests over one NATS connection. ``timeout`` covers the whole replay (the reply
    comes once every event is published), so it is longer than other requests'."""

    def __init__(self, nc: Any, *, timeout: float = 60.0) -> None:
        self.nc = nc
        self.timeout = timeout

    async def replay(self, source: str, venue: str, symbol: str, kind: str, start_ns: int, end_ns: int, *,
                     request_id: str | None = None) -> ReplayReply:
        """Replay ``kind`` events of one instrument in [start_ns, end_ns); RequestError
        ``no_responders`` when no ingestor of ``source`` runs, ``timeout`` when it takes longer."""
        if end_ns <= start_ns:
            raise ValueError(f"the end ({end_ns}) must be after the start ({start_ns})")
        req = ReplayRequest(request_id=request_id or str(uuid.uuid4()), source=source, venue=venue, symbol=symbol,
                            kind=kind, start_ns=start_ns, end_ns=end_ns)
        data = await request(self.nc, subjects.replay(source), codec.encode(req), timeout=self.timeout,
                             what=f"{source} ingestor", headers=codec.headers_for(req, msg_id=req.request_id))
        return decode_reply(data, ReplayReply)
