"""Account state: subscriptions with their spans, export jobs and custom export schemas.

Each API key is one account. Span boundaries are kept on whole microseconds so the ISO 8601
``started_at``/``ended_at`` the API shows are exactly the boundaries used for exports.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from marketbus.runtime.tsapi_schemas import SchemaRecord, built_in_records

from .api import ApiError, iso, now_ns
from .catalog import Catalog, Datastream


def now_us_ns() -> int:
    """Now, truncated to the microsecond (the resolution of the bookkeeping timestamps)."""
    return now_ns() // 1000 * 1000


@dataclass
class Span:
    id: str
    start_ns: int
    end_ns: int | None = None

    def wire(self) -> dict[str, Any]:
        return {"id": self.id, "started_at": iso(self.start_ns),
                "ended_at": None if self.end_ns is None else iso(self.end_ns)}


@dataclass
class Subscription:
    id: str
    seq: int
    datastream: Datastream
    status: str  # active | paused | deleted
    created_ns: int
    spans: list[Span] = field(default_factory=list)

    def wire(self) -> dict[str, Any]:
        # The superset: GET validates the datastream_id form, create the datastream + spans form.
        return {"id": self.id, "datastream_id": self.datastream.datastream_id, "status": self.status,
                "created_at": iso(self.created_ns), "datastream": self.datastream.wire(),
                "spans": [s.wire() for s in self.spans]}

    def ranges(self, until_ns: int) -> list[tuple[int, int]]:
        """Collected [from, to) ranges: the spans, an open one clipped at ``until_ns``."""
        out = []
        for span in self.spans:
            end = until_ns if span.end_ns is None else min(span.end_ns, until_ns)
            if end > span.start_ns:
                out.append((span.start_ns, end))
        return out


@dataclass
class Account:
    key: str
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    exports: dict[str, Any] = field(default_factory=dict)  # id -> exports.ExportJob
    schemas: dict[str, SchemaRecord] = field(default_factory=dict)
    access_status: str = "ACTIVE"

    def live_subscription(self, datastream_id: int) -> Subscription | None:
        for sub in self.subscriptions.values():
            if sub.datastream.datastream_id == datastream_id and sub.status != "deleted":
                return sub
        return None

    def ever_subscribed(self, datastream_id: int) -> bool:
        return any(s.datastream.datastream_id == datastream_id for s in self.subscriptions.values())


class Store:
    def __init__(self, catalog: Catalog, api_keys: list[str], seed: int) -> None:
        self.catalog = catalog
        self.accounts = {key: Account(key) for key in api_keys}
        self._rng = random.Random(seed)
        self._seq = itertools.count(1)
        self.built_in_schemas = {r.id: r for r in built_in_records(lambda _category, _name: self.new_id("sch"))}

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{self._rng.getrandbits(128):032x}"

    def next_seq(self) -> int:
        return next(self._seq)

    # --- lookups ---------------------------------------------------------------------------
    def datastream(self, datastream_id: Any) -> Datastream:
        try:
            return self.catalog.datastreams[int(datastream_id)]
        except (KeyError, TypeError, ValueError):
            raise ApiError(404, f"Datastream {datastream_id} not found") from None

    def subscription(self, account: Account, sub_id: str) -> Subscription:
        sub = account.subscriptions.get(sub_id)
        if sub is None:
            raise ApiError(404, "Subscription not found", {"id": sub_id})
        return sub

    def schema(self, account: Account, schema_id: str) -> SchemaRecord:
        rec = account.schemas.get(schema_id) or self.built_in_schemas.get(schema_id)
        if rec is None:
            raise ApiError(404, "Export schema not found", {"id": schema_id})
        return rec

    def schemas(self, account: Account) -> list[SchemaRecord]:
        return [*self.built_in_schemas.values(), *account.schemas.values()]

    # --- subscription lifecycle ------------------------------------------------------------
    def subscribe(self, account: Account, ds: Datastream, start_ns: int | None = None) -> Subscription:
        if account.live_subscription(ds.datastream_id) is not None:
            raise ApiError(409, "A subscription to this datastream already exists",
                           {"datastream_id": ds.datastream_id})
        now = now_us_ns()
        start = now if start_ns is None else start_ns // 1000 * 1000
        sub = Subscription(self.new_id("sub"), self.next_seq(), ds, "active", now)
        sub.spans.append(Span(self.new_id("spn"), start))
        account.subscriptions[sub.id] = sub
        return sub

    def pause(self, sub: Subscription) -> None:
        if sub.status == "deleted":
            raise ApiError(409, "Subscription is deleted", {"id": sub.id, "status": sub.status})
        if sub.status == "active":
            sub.spans[-1].end_ns = now_us_ns()
            sub.status = "paused"

    def resume(self, sub: Subscription) -> None:
        if sub.status == "deleted":
            raise ApiError(409, "A deleted subscription cannot be resumed; create a new one",
                           {"id": sub.id, "status": sub.status})
        if sub.status == "paused":
            start = max(now_us_ns(), sub.spans[-1].end_ns or 0)
            sub.spans.append(Span(self.new_id("spn"), start))
            sub.status = "active"

    def delete(self, sub: Subscription) -> None:
        if sub.status == "active":
            sub.spans[-1].end_ns = now_us_ns()
        sub.status = "deleted"
