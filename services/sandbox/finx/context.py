"""State shared by the FinX websocket and REST handlers, and the replies both transports send."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from services.sandbox.common.faults import FaultInjector

from .data import FinxMarket, wire_date_time
from .settings import FinxSettings


class RequestError(ValueError):
    """A request the vendor would refuse; ``status`` is used by REST, the WS sends an error frame."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class FinxContext:
    settings: FinxSettings
    market: FinxMarket
    faults: FaultInjector
    # Mutable at run time through POST /_sandbox/finx/keys (a key revoked mid-session).
    api_keys: set[str] = field(default_factory=set)

    def key_ok(self, key: Any) -> bool:
        return isinstance(key, str) and key in self.api_keys

    @staticmethod
    def now_ns() -> int:
        return time.time_ns()

    def pair(self, raw: Any) -> str:
        if not raw:
            raise RequestError('missing "pair" parameter')
        pair = self.market.normalize_pair(str(raw))
        if pair is None:
            raise RequestError(f"unknown pair: {raw}", 404)
        return pair

    def secdb(self, security_id: Any) -> dict[str, Any]:
        """The seed's reference-data reply (``function-call: secdb``)."""
        if not security_id:
            raise RequestError('missing "securityId" parameter')
        date, clock = wire_date_time(self.now_ns())
        reply: dict[str, Any] = {
            "function-call": "secdb",
            "request-datestamp": f"{date}T{clock}",
            "request-security-id": security_id,
        }
        ref = self.market.reference(str(security_id))
        if ref is None:
            raise RequestError(f"unknown securityId: {security_id}", 404)
        reply["ref-data"] = ref
        return reply
