"""The TickSupply live feed: one rolling-export loop per datastream. Export the window since the
last ingested time, poll it with back-off, download the artifacts (presigned URLs, re-listed when
expired), parse them and publish trades as batch envelopes (or single events), waiting for the
JetStream acks of each artifact before recording it as done in the progress store (see
:mod:`.progress`). A failed window is a ``gap`` until exported again (``resynced``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import msgspec

from marketbus.contracts import codec, subjects
from marketbus.contracts.codec import Batch
from marketbus.contracts.ids import event_id
from marketbus.runtime.backoff import Backoff

from . import normalize
from .client import ArtifactUrlExpired, MalformedReply, NotFound
from .normalize import DatastreamRef
from .parts import TickSupplyHost
from .progress import DatastreamProgress, Inflight

MAX_DEAD_LETTERS_PER_ARTIFACT = 100
MAX_DEAD_LETTER_BYTES = 1_000_000


class ExportFailed(Exception):
    def __init__(self, export: dict[str, Any]) -> None:
        super().__init__(f"export {export.get('id')} {export.get('status')}: {export.get('reason')}")
        self.export = export


class TickSupplyExports:
    def __init__(self, ingestor: TickSupplyHost) -> None:
        self.ing = ingestor
        self.own_windows: set[str] = set()  # idempotency keys of the windows this instance started
        self.last_end: dict[int, int] = {}  # datastream id -> end of the last published window (ns)
        self.exports_created = 0

    async def loop(self, ds: DatastreamRef) -> None:
        backoff = Backoff(0.5, 30.0)
        while True:
            more = False

            async def step() -> None:
                nonlocal more
                more = await self.ingest_once(ds)

            ok = await self.ing.guarded(f"ingesting datastream {ds.datastream_id}", step, backoff)
            if ok and not more:
                await asyncio.sleep(self.ing.settings.export_interval_s)

    async def ingest_once(self, ds: DatastreamRef) -> bool:
        """Export and publish the next window; returns True when more backlog is waiting."""
        ing, s = self.ing, self.ing.settings
        progress = await ing.store.get(ds.datastream_id)
        end_limit = ing.now_ns() - int(s.export_lag_s * 1e9)
        if progress.inflight is None:
            start = progress.last_end_ns
            if start is None:
                start = end_limit - int(s.initial_lookback_s * 1e9)
            ranges = available_ranges(await ing.api.availability(ds.datastream_id))
            overlapping = [(lo, hi) for lo, hi in ranges if hi > start and lo < end_limit]
            if not overlapping:
                if progress.last_end_ns is None or end_limit > progress.last_end_ns:
                    # Nothing was collected in [start, end_limit) and never will be (spans only grow
                    # forward from now): move on.
                    progress.last_end_ns = end_limit
                    await ing.store.put(progress)
                return False
            start = max(start, overlapping[0][0])
            end = min(end_limit, start + int(s.max_window_s * 1e9))
            if end <= start:
                return False
            progress.inflight = Inflight(start_ns=start, end_ns=end, idempotency_key=str(uuid.uuid4()))
            self.own_windows.add(progress.inflight.idempotency_key)
            await ing.store.put(progress)  # before the create: a restart re-POSTs with this key
        elif progress.inflight.idempotency_key not in self.own_windows:
            self.own_windows.add(progress.inflight.idempotency_key)
            progress.inflight.resumed = True
            ing.log.info("resuming export window %s..%s of datastream %s (export %s, %d artifacts done)",
                         progress.inflight.start_ns, progress.inflight.end_ns, ds.datastream_id,
                         progress.inflight.export_id, len(progress.inflight.done_artifacts))
        window_end = progress.inflight.end_ns
        await self.run_window(ds, progress)
        return window_end < end_limit - int(s.export_interval_s * 1e9)

    async def run_window(self, ds: DatastreamRef, progress: DatastreamProgress) -> None:
        ing = self.ing
        inflight = progress.inflight
        assert inflight is not None
        resumed = inflight.resumed and (inflight.export_id is not None or inflight.done_artifacts)
        if inflight.export_id is None:
            job = await ing.api.create_export(ds.datastream_id, inflight.start_ns, inflight.end_ns,
                                              inflight.idempotency_key)
            if not isinstance(job, dict) or not isinstance(job.get("id"), str):
                raise MalformedReply(f"{ing.api.base_url}/exports", msgspec.json.encode(job), "no export id")
            self.exports_created += 1
            inflight.export_id = job["id"]
            await ing.store.put(progress)
        try:
            await self.wait_export(inflight.export_id)
        except ExportFailed as exc:
            await self.window_failed(ds, progress, exc.export)
            return
        except NotFound:
            ing.log.warning("export %s vanished: exporting the window again", inflight.export_id)
            progress.inflight = fresh_window(inflight)
            await ing.store.put(progress)
            return

        async def artifact_done(art_id: str, events: int) -> None:
            inflight.done_artifacts.append(art_id)
            inflight.events += events
            await ing.store.put(progress)

        await self.download_and_publish(ds, inflight.export_id, replay=False, skip=set(inflight.done_artifacts),
                                        on_artifact=artifact_done)
        progress.last_end_ns = inflight.end_ns
        self.last_end[ds.datastream_id] = inflight.end_ns
        progress.events_total += inflight.events
        progress.inflight = None
        had_gap = progress.failed_windows > 0
        progress.failed_windows = 0
        await ing.store.put(progress)
        ing.log.info("datastream %s: window up to %s published (%d events)", ds.datastream_id,
                     progress.last_end_ns, inflight.events)
        if had_gap:
            await ing.feed_status("resynced", ds, detail="a failed export window was exported again",
                                  gap=(inflight.start_ns, inflight.end_ns))
        elif resumed:
            await ing.feed_status("resynced", ds, detail=f"resumed export {inflight.export_id} after a restart",
                                  gap=(inflight.start_ns, inflight.end_ns))
        if ing.subscriptions.get(ds.datastream_id, {}).get("status", "active") == "active":
            await ing.feed_status("connected", ds)

    async def window_failed(self, ds: DatastreamRef, progress: DatastreamProgress, export: dict[str, Any]) -> None:
        ing = self.ing
        inflight = progress.inflight
        assert inflight is not None
        reason = str(export.get("reason") or export.get("status"))
        if export.get("status") == "failed" and await self.window_is_empty(ds, inflight, reason):
            progress.last_end_ns = inflight.end_ns
            progress.inflight = None
            await ing.store.put(progress)
            return
        ing.log.warning("export %s of datastream %s %s: %s; exporting the window again",
                        inflight.export_id, ds.datastream_id, export.get("status"), reason)
        # A window the vendor finds too large (or that keeps failing) is retried in halves.
        shrink = "too large" in reason.lower() or "split" in reason.lower() or inflight.attempts >= 2
        progress.inflight = fresh_window(inflight, shrink=shrink)
        progress.failed_windows += 1
        await ing.store.put(progress)
        await ing.feed_status("gap", ds, detail=f"export {export.get('status')}: {reason}",
                              gap=(inflight.start_ns, inflight.end_ns))
        raise RuntimeError(f"export {inflight.export_id} {export.get('status')}: {reason}")  # back off, then retry

    async def window_is_empty(self, ds: DatastreamRef, inflight: Inflight, reason: str) -> bool:
        if "no data" in reason.lower():
            return True
        ranges = available_ranges(await self.ing.api.availability(ds.datastream_id))
        return not any(hi > inflight.start_ns and lo < inflight.end_ns for lo, hi in ranges)

    async def wait_export(self, export_id: str) -> dict[str, Any]:
        ing, s = self.ing, self.ing.settings
        backoff = Backoff(s.export_poll_initial_s, s.export_poll_max_s, factor=1.6, min_s=s.export_poll_initial_s / 2)
        deadline = time.monotonic() + s.export_timeout_s
        while True:
            job = await ing.api.get_export(export_id)
            status = job.get("status") if isinstance(job, dict) else None
            if status == "succeeded":
                return job
            if status in ("failed", "canceled", "deleted"):
                raise ExportFailed(job)
            if status not in ("queued", "running"):
                raise MalformedReply(f"{ing.api.base_url}/exports/{export_id}", msgspec.json.encode(job),
                                     f"unknown export status {status!r}")
            if time.monotonic() > deadline:
                await ing.api.cancel_export(export_id)
                raise ExportFailed(dict(job, status="canceled", reason=f"not finished after {s.export_timeout_s}s"))
            await backoff.sleep()

    async def download_and_publish(self, ds: DatastreamRef, export_id: str, *, replay: bool, skip: set[str],
                                   on_artifact: Any = None, batch_salt: str | None = None) -> int:
        ing = self.ing
        listing = await self.listing(export_id)
        total = 0
        for art in listing:
            art_id = art["id"]
            if art_id in skip:
                continue
            data = None
            for _attempt in range(5):
                url = next((a["url"] for a in listing if a["id"] == art_id), None)
                if url is None:
                    raise RuntimeError(f"artifact {art_id} is no longer listed for export {export_id}")
                try:
                    data = await ing.api.fetch_artifact(url)
                    break
                except ArtifactUrlExpired as exc:
                    ing.log.info("artifact URL of %s refused (%s): listing the export again", art_id, exc)
                    listing = await self.listing(export_id)
            if data is None:
                raise RuntimeError(f"artifact {art_id}: every presigned URL was refused")
            ing.metrics.frames_in.labels(ing.source, "artifacts").inc()
            # through the ingestor: the one publishing entry point (tests and benchmarks call it)
            n = await ing.publish_artifact(ds, data, channel=f"artifact:{art.get('filename', art_id)}",
                                           replay=replay, batch_salt=batch_salt)
            total += n
            if on_artifact is not None:
                await on_artifact(art_id, n)
        return total

    async def listing(self, export_id: str) -> list[dict[str, Any]]:
        reply = await self.ing.api.download(export_id)
        arts = reply.get("artifacts") if isinstance(reply, dict) else None
        if not isinstance(arts, list) or not all(isinstance(a, dict) and "id" in a and "url" in a for a in arts):
            raise MalformedReply(f"{self.ing.api.base_url}/exports/{export_id}/download",
                                 msgspec.json.encode(reply), "bad download listing")
        return arts


class ArtifactPublisher:
    """Parse one artifact and publish its events (batch envelopes, or one message per event
    acked as a group), slice by slice: a slice is published while the previous one's acks come
    in, so memory stays bounded. Bad rows and unreadable artifacts are dead-lettered."""

    def __init__(self, ingestor: TickSupplyHost) -> None:
        self.ing = ingestor

    async def publish(self, ds: DatastreamRef, data: bytes, *, channel: str = "artifact",
                      replay: bool = False, batch_salt: str | None = None) -> int:
        ing = self.ing
        published = bad_rows = 0
        waiting: list[Any] = []
        try:
            for piece in normalize.iter_artifact(data, ds.stream_type, ing.settings.artifact_slice_bytes):
                for bad in piece.bad:
                    bad_rows += 1
                    if bad_rows <= MAX_DEAD_LETTERS_PER_ARTIFACT:
                        await ing.frames.reject(channel, bad.line, f"line {bad.line_no}: {bad.reason}")
                ing.metrics.frames_in.labels(ing.source, "rows").inc(piece.total_lines)
                sent = await self.publish_rows(ds, piece.rows, replay, batch_salt)
                published += len(piece.rows)
                await ing.acked(waiting)
                waiting = sent
        except normalize.ArtifactError as exc:
            await ing.acked(waiting)
            await ing.frames.reject(channel, data[:MAX_DEAD_LETTER_BYTES], str(exc))
            await ing.feed_status("gap", ds, detail=f"unreadable artifact {channel}: {exc}")
            return published
        await ing.acked(waiting)
        if bad_rows > MAX_DEAD_LETTERS_PER_ARTIFACT:
            await ing.frames.reject(channel, b"", f"{bad_rows - MAX_DEAD_LETTERS_PER_ARTIFACT} more bad rows")
        return published

    async def publish_rows(self, ds: DatastreamRef, rows: list[Any], replay: bool,
                           batch_salt: str | None) -> list[Any]:
        """Send every event; returns the ack futures to wait on."""
        ing = self.ing
        assert ing.publisher is not None
        publish = ing.publisher.publish
        ts_recv = ing.now_ns()
        futures: list[Any] = []
        if not rows:
            return futures
        single = ing.settings.publish_mode == "single" and batch_salt is None
        size = ing.settings.batch_max_events if single else self.batch_size(ds, rows, ts_recv)
        subject = None
        for i in range(0, len(rows), size):
            events = normalize.events_of(ds, rows[i:i + size], ts_recv, replay)
            if not events:
                continue
            if subject is None:
                subject = subjects.for_event(events[0])
            if single:
                futures.append(await ing.publisher.publish_group(events))
            else:
                for batch, payload in self.batches(events, replay, batch_salt):
                    futures.append(await publish(subject, payload, codec.headers_for(batch)))
            ing._account(events[-1], len(events))
        return futures

    def max_payload(self) -> int:
        return int(getattr(self.ing.nc, "max_payload", 0) or 1_048_576)

    def batch_size(self, ds: DatastreamRef, rows: list[Any], ts_recv: int) -> int:
        """Events per batch so a batch stays under the server's max_payload. Derived from the
        artifact's own first rows only, so the same artifact is always cut the same way (the same
        batch ids when it is published again after a restart)."""
        sample = normalize.events_of(ds, rows[:64], ts_recv)
        widest = max((len(codec.encode(e)) for e in sample), default=256) + 16
        fit = int(self.max_payload() * 0.85) // widest
        return max(1, min(self.ing.settings.batch_max_events, fit))

    def batches(self, events: list[Any], replay: bool, batch_salt: str | None) -> list[tuple[Batch, bytes]]:
        first = events[0]
        kind = subjects.kind_of(first)
        identity: tuple[Any, ...] = (kind, first.venue, first.symbol, first.id, events[-1].id, len(events))
        batch_id = event_id(first.source, "batch", *identity) if batch_salt is None else \
            event_id(first.source, "replay_batch", batch_salt, *identity)
        batch = Batch(id=batch_id, kind=kind, source=first.source, venue=first.venue, symbol=first.symbol,
                      replay=replay, events=events)
        payload = codec.encode(batch)
        if len(events) > 1 and len(payload) > self.max_payload() - 4096:
            half = len(events) // 2  # still too large (unusually wide rows): split, deterministically
            return self.batches(events[:half], replay, batch_salt) + self.batches(events[half:], replay, batch_salt)
        return [(batch, payload)]


def fresh_window(inflight: Inflight, shrink: bool = False) -> Inflight:
    """The window to export again (new idempotency key, nothing done); ``shrink`` halves it (down
    to one second): the rest is the next window's."""
    end = inflight.end_ns
    if shrink and end - inflight.start_ns >= 2_000_000_000:
        end = inflight.start_ns + (end - inflight.start_ns) // 2
    return Inflight(resumed=inflight.resumed, start_ns=inflight.start_ns, end_ns=end,
                    idempotency_key=str(uuid.uuid4()), attempts=0 if end != inflight.end_ns else inflight.attempts + 1)


def available_ranges(availability: Any) -> list[tuple[int, int]]:
    if not isinstance(availability, dict) or not isinstance(availability.get("ranges"), list):
        raise MalformedReply("/availability", msgspec.json.encode(availability), "bad availability reply")
    out = []
    for r in availability["ranges"]:
        try:
            out.append((int(r["from"]), int(r["to"])))
        except (KeyError, TypeError, ValueError):
            raise MalformedReply("/availability", msgspec.json.encode(availability), "bad range") from None
    return sorted(out)
