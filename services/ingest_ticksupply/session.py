"""The TickSupply session: every datastream of a feed has a subscription in the feed's state
(created with an Idempotency-Key, paused/resumed per config); its spans become feed status events
(active -> connected, paused -> disconnected, a hole between spans -> gap, reported once: the
mark is kept next to the progress)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import msgspec

from marketbus.vendor.timeparse import iso_ns

from .client import Conflict
from .normalize import DatastreamRef
from .parts import TickSupplyHost


class TickSupplySubscriptions:
    def __init__(self, ingestor: TickSupplyHost) -> None:
        self.ing = ingestor
        self.subscriptions: dict[int, dict[str, Any]] = {}
        self._holes_reported_until: dict[int, int] = {}  # datastream id -> end of the last reported hole

    async def reconcile(self) -> None:
        """Bring every configured subscription to its desired state; report spans as feed status."""
        ing = self.ing
        subs = await ing.api.subscriptions()
        live: dict[int, dict[str, Any]] = {}
        for sub in subs:  # newest first
            if isinstance(sub, dict) and sub.get("status") != "deleted" and sub.get("datastream_id") not in live:
                live[sub["datastream_id"]] = sub
        for ds_id, (ds, want) in ing.subscription_targets().items():  # feed control's feeds
            found = live.get(ds_id)
            if found is not None:
                sub = found
            else:
                try:
                    sub = await ing.api.create_subscription(ds_id, idempotency_key=str(uuid.uuid4()))
                except Conflict:  # created meanwhile (another instance): take it from the list
                    sub = next(s for s in await ing.api.subscriptions()
                               if s.get("datastream_id") == ds_id and s.get("status") != "deleted")
                ing.log.info("subscribed to datastream %s (%s)", ds_id, sub.get("id"))
            if sub.get("status") != want:
                if want == "paused":
                    await ing.api.pause_subscription(sub["id"], idempotency_key=str(uuid.uuid4()))
                else:
                    await ing.api.resume_subscription(sub["id"], idempotency_key=str(uuid.uuid4()))
                sub = dict(sub, status=want)
                ing.log.info("subscription %s of datastream %s is now %s", sub["id"], ds_id, want)
            self.subscriptions[ds_id] = sub
            spans = await ing.api.spans(sub["id"])
            await self.report_spans(ds, want, spans if isinstance(spans, list) else [])

    async def report_spans(self, ds: DatastreamRef, status: str, spans: list[dict[str, Any]]) -> None:
        ing = self.ing
        bounds = []
        for span in spans:
            try:
                start = iso_ns(span["started_at"])
                end = iso_ns(span["ended_at"]) if span.get("ended_at") else None
            except (KeyError, TypeError, ValueError, AttributeError):
                await ing.frames.reject("spans", msgspec.json.encode(span), "bad span")
                continue
            bounds.append((start, end))
        bounds.sort()
        reported = self._holes_reported_until.get(ds.datastream_id)
        if reported is None:  # persisted, so a restart does not report the same holes again
            reported = self._holes_reported_until[ds.datastream_id] = await ing.store.get_mark(
                ds.datastream_id, "holes"
            )
        for (_, end), (next_start, _) in itertools.pairwise(bounds):
            if end is not None and next_start > end and next_start > reported:
                await ing.feed_status("gap", ds, detail="the subscription was paused: TickSupply collected nothing",
                                      gap=(end, next_start))
                reported = self._holes_reported_until[ds.datastream_id] = next_start
                await ing.store.put_mark(ds.datastream_id, "holes", next_start)
        if status == "active":
            await ing.feed_status("connected", ds, detail="subscription active")
        else:
            await ing.feed_status("disconnected", ds, detail=f"subscription {status}")
