"""Export schemas of the TickSupply-compatible API: the built-in ones (``raw``, ``normalized`` per
category, ids the same in every process) and each account's custom ones, kept in the export jobs'
KV bucket under ``schema.<owner>.<id>`` so every orchestrator sees them and they survive restarts.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError, NotFoundError

from marketbus.contracts.streams import EXPORT_JOBS
from marketbus.runtime import kv as kv_snapshot
from marketbus.runtime.tsapi_schemas import SchemaRecord, built_in_records

PREFIX = "schema."
_ID = re.compile(r"sch_[0-9a-f]{32}")
_DECODER = msgspec.json.Decoder(SchemaRecord)

BUILT_INS: dict[str, SchemaRecord] = {r.id: r for r in built_in_records()}


def new_schema_id() -> str:
    return "sch_" + uuid.uuid4().hex


class SchemaStore:
    def __init__(self, kv: Any, js: Any = None) -> None:
        self.kv = kv  # the export_jobs bucket
        self.js = js  # its JetStream context: :meth:`own` reads the bucket through it

    @staticmethod
    def _key(owner: str, schema_id: str) -> str:
        return f"{PREFIX}{owner}.{schema_id}"

    async def get(self, owner: str, schema_id: str) -> SchemaRecord | None:
        if schema_id in BUILT_INS:
            return BUILT_INS[schema_id]
        if not _ID.fullmatch(schema_id):
            return None
        try:
            entry = await self.kv.get(self._key(owner, schema_id))
        except (KeyNotFoundError, NotFoundError):
            return None
        return None if entry.value is None else _DECODER.decode(entry.value)

    async def own(self, owner: str) -> list[SchemaRecord]:
        """The owner's schemas (a complete read: not nats-py's ``kv.keys()``, see marketbus.runtime.kv)."""
        if self.js is None:
            raise TypeError("SchemaStore.own needs the JetStream context: SchemaStore(kv, js)")
        # every schema key, then the owner's by prefix: an owner is never put into a subject filter
        entries = await kv_snapshot.latest(self.js, EXPORT_JOBS.name, PREFIX + ">")
        out = [_DECODER.decode(e.value) for e in entries if e.value and e.key.startswith(f"{PREFIX}{owner}.")]
        return sorted(out, key=lambda r: (r.created_ns, r.id))

    async def all(self, owner: str) -> list[SchemaRecord]:
        return [*BUILT_INS.values(), *await self.own(owner)]

    async def put(self, owner: str, record: SchemaRecord) -> None:
        await self.kv.put(self._key(owner, record.id), msgspec.json.encode(record))

    async def delete(self, owner: str, schema_id: str) -> None:
        with contextlib.suppress(KeyNotFoundError, NotFoundError):
            await self.kv.delete(self._key(owner, schema_id))
