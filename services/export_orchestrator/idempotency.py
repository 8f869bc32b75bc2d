"""``Idempotency-Key`` on the TickSupply API's mutating calls other than exports (subscriptions,
export schemas): the first reply to (account, key) is kept in the export jobs' KV bucket
(``idem.<owner>.<hash of the key>``, 24 h) and replayed to a retry of the same request; the same
key with another request is 409 ``already_exists``. Exports have their own (the job id derives
from the key). Client errors are replayed too; 5xx and 429 are not kept (they are retried).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError, NotFoundError
from starlette.requests import Request
from starlette.responses import Response

from marketbus.runtime.http import request_fingerprint
from marketbus.runtime.tsapi import ApiError, error_response

PREFIX = "idem."
TTL_S = 24 * 3600.0


class _Saved(msgspec.Struct):
    fingerprint: str
    status: int
    body: bytes
    media_type: str | None
    expires: float


Handler = Callable[[Request], Awaitable[Response]]


class Idempotency:
    def __init__(self, kv: Any, ttl_s: float = TTL_S) -> None:
        self.kv = kv
        self.ttl_s = ttl_s

    def wrap(self, handler: Handler) -> Handler:
        async def idempotent(request: Request) -> Response:
            idem_key = request.headers.get("idempotency-key")
            if not idem_key:
                return await handler(request)
            raw = await request.body()
            fingerprint = request_fingerprint(request.method, request.url.path, raw)
            slot = f"{PREFIX}{request.state.owner}.{hashlib.sha256(idem_key.encode()).hexdigest()[:32]}"
            saved = await self._get(slot)
            if saved is not None and saved.expires > time.time():
                if saved.fingerprint != fingerprint:
                    raise ApiError(409, "Idempotency-Key was already used with a different request",
                                   {"idempotency_key": idem_key})
                return Response(saved.body, saved.status, media_type=saved.media_type,
                                headers={"idempotent-replayed": "true"})
            try:
                response = await handler(request)
            except ApiError as exc:
                response = error_response(exc)
            if response.status_code < 500 and response.status_code != 429:
                await self.kv.put(slot, msgspec.json.encode(_Saved(
                    fingerprint, response.status_code, bytes(response.body), response.media_type,
                    time.time() + self.ttl_s)))
            return response

        return idempotent

    async def _get(self, slot: str) -> _Saved | None:
        try:
            entry = await self.kv.get(slot)
        except (KeyNotFoundError, NotFoundError):
            return None
        if not entry.value:
            return None
        try:
            return msgspec.json.decode(entry.value, type=_Saved)
        except msgspec.DecodeError:
            return None
