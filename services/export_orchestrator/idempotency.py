"""``Idempotency-Key`` on the TickSupply API's mutating calls other than exports (subscriptions,
export schemas): the first reply to (account, key) is kept in the export jobs' KV bucket
(``idem.<owner>.<hash of the key>``, 24 h) and replayed to a retry of the same request; the same
key with another request is 409 ``already_exists``. Exports have their own (the job id derives
from the key). Client errors are replayed too; 5xx and 429 are not kept (they are retried).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError, NotFoundError
from starlette.requests import Request

from marketbus.runtime.tsapi import IdempotentReplies, SavedReply

PREFIX = "idem."
TTL_S = 24 * 3600.0


class Idempotency(IdempotentReplies):
    """Replies kept in the export jobs' KV bucket, under the caller's account."""

    def __init__(self, kv: Any, ttl_s: float = TTL_S) -> None:
        super().__init__(ttl_s)
        self.kv = kv

    @staticmethod
    def slot(request: Request, key: str) -> str:
        return f"{PREFIX}{request.state.owner}.{hashlib.sha256(key.encode()).hexdigest()[:32]}"

    async def load(self, request: Request, key: str) -> SavedReply | None:
        try:
            entry = await self.kv.get(self.slot(request, key))
        except (KeyNotFoundError, NotFoundError):
            return None
        if not entry.value:
            return None
        try:
            return msgspec.json.decode(entry.value, type=SavedReply)
        except msgspec.DecodeError:
            return None

    async def save(self, request: Request, key: str, reply: SavedReply) -> None:
        await self.kv.put(self.slot(request, key), msgspec.json.encode(reply))
