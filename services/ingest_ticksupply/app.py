"""TickSupply ingestor: wires the REST client and the pure normalizer to the bus.

Loops:
- catalog: exchanges -> ``Venue``, instruments -> ``Instrument`` (datastream ids in attributes),
  datastreams -> ``InstrumentClass(class_type="datastream")`` on ``ref.*``;
- subscriptions: every configured datastream has a subscription in the desired state (created
  with an Idempotency-Key, paused/resumed per config); its spans become feed status events
  (active -> connected, paused -> disconnected, a hole between spans -> gap);
- one rolling-export loop per datastream: export the window since the last ingested time, poll it
  with back-off, download the artifacts (presigned URLs, re-listed when expired), parse them and
  publish trades as batch envelopes (or single events), waiting for the JetStream acks of each
  artifact before recording it as done in the KV bucket (see :mod:`.progress`).
Replays (``replay.ticksupply``) export the requested range and publish it with ``replay=True``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from typing import Any, ClassVar

import msgspec

from marketbus.contracts import codec, subjects
from marketbus.contracts.codec import Batch
from marketbus.contracts.ids import event_id
from marketbus.contracts.jobs import ReplayRequest
from marketbus.contracts.streams import INGEST_STATE, ensure_bucket
from marketbus.runtime.backoff import Backoff
from marketbus.runtime.ingest import BUS_ERRORS, Ingestor, ReplayUnsupported
from marketbus.runtime.tasks import cancel_and_wait

from . import normalize
from .client import (
    ArtifactUrlExpired, Conflict, MalformedReply, NotFound, RetriesExhausted, TickSupplyClient, TickSupplyError,
)
from .normalize import DatastreamRef, MalformedPayload
from .progress import DatastreamProgress, Inflight, ProgressStore
from .settings import TickSupplySettings

SUPPORTED_STREAM_TYPES = ("trade", "depth")
KIND_OF_STREAM = {"trade": "trade", "depth": "quote"}
MAX_DEAD_LETTERS_PER_ARTIFACT = 100
MAX_DEAD_LETTER_BYTES = 1_000_000


class ExportFailed(Exception):
    def __init__(self, export: dict[str, Any]) -> None:
        super().__init__(f"export {export.get('id')} {export.get('status')}: {export.get('reason')}")
        self.export = export


class TickSupplyIngestor(Ingestor):
    name: ClassVar[str] = "ingest_ticksupply"
    source: ClassVar[str] = "ticksupply"
    settings_cls = TickSupplySettings
    settings: TickSupplySettings

    def setup(self) -> None:
        super().setup()
        self.client: TickSupplyClient | None = None
        self.progress: ProgressStore | None = None
        self.datastreams: dict[int, DatastreamRef] = {}
        self.subscriptions: dict[int, dict[str, Any]] = {}
        self._holes_reported_until: dict[int, int] = {}  # datastream id -> end of the last reported hole
        self._ds_tasks: dict[int, asyncio.Task[Any]] = {}
        self._own_windows: set[str] = set()  # idempotency keys of the windows this instance started
        self._reported_feeds: set[str] = set()
        self._last_end: dict[int, int] = {}  # datastream id -> end of the last published window (ns)
        self.exports_created = 0
        self.ready = asyncio.Event()  # set once subscriptions are reconciled and the export loops run

    # --- lifecycle ------------------------------------------------------------------------------
    async def on_start(self) -> None:
        s = self.settings
        self.client = TickSupplyClient(
            s.base_url, s.api_key, timeout_s=s.request_timeout_s, requests_per_s=s.requests_per_s,
            max_retries=s.max_retries, max_rate_limited_retries=s.max_rate_limited_retries,
            on_error=self._vendor_error,
        )
        kv = await ensure_bucket(self.js, INGEST_STATE, s.stream_replicas)
        self.progress = ProgressStore(kv, s.state_namespace)
        self.spawn(self._catalog_loop(), "catalog")
        self.spawn(self._main_loop(), "main")

    async def on_stop(self) -> None:
        # Stop our loops before closing what they use (the base class then stops the rest).
        await cancel_and_wait([t for t in self._tasks if not t.get_name().endswith(":heartbeat")])
        if self.client is not None:
            await self.client.aclose()

    def _vendor_error(self, kind: str) -> None:
        self.metrics.vendor_errors.labels(self.source, kind).inc()

    def health(self) -> dict[str, Any]:
        return {
            "datastreams": {str(k): f"{v.exchange}/{v.instrument}/{v.stream_type}" for k, v in self.datastreams.items()},
            "subscriptions": {str(k): v.get("status") for k, v in self.subscriptions.items()},
            "exports_created": self.exports_created,
            "rate_limited": self.client.rate_limited_total if self.client else 0,
            "lag_s": {str(k): round((time.time_ns() - v) / 1e9, 3) for k, v in self._last_end.items()},
        }

    def heartbeat(self) -> Any:
        beat = super().heartbeat()
        counters = {"exports_created": float(self.exports_created),
                    "rate_limited": float(self.client.rate_limited_total if self.client else 0)}
        counters.update({f"lag_s.{k}": round((time.time_ns() - v) / 1e9, 3) for k, v in self._last_end.items()})
        return msgspec.structs.replace(beat, counters=counters)

    @property
    def api(self) -> TickSupplyClient:
        assert self.client is not None
        return self.client

    @property
    def store(self) -> ProgressStore:
        assert self.progress is not None
        return self.progress

    async def _guarded(self, what: str, coro_factory: Any, backoff: Backoff) -> bool:
        """Run one step; vendor/bus errors are logged (and malformed replies dead-lettered), never fatal."""
        try:
            await coro_factory()
            backoff.reset()
            return True
        except asyncio.CancelledError:
            raise
        except MalformedReply as exc:
            await self.malformed(exc.url.split("?")[0], exc.payload[:MAX_DEAD_LETTER_BYTES], exc.reason)
        except (RetriesExhausted, TickSupplyError) as exc:
            self.log.warning("%s failed: %s", what, exc)
            if isinstance(exc, RetriesExhausted):
                await self._safe_status("disconnected", detail=f"{what}: {exc}")
        except BUS_ERRORS as exc:  # NATS down or no stream leader: one line (the health says more)
            self.log.warning("%s failed: the bus: %r", what, exc)
        except Exception as exc:  # noqa: BLE001 - a loop must survive anything and retry
            self.log.warning("%s failed: %r", what, exc, exc_info=exc)
        await backoff.sleep()
        return False

    async def _safe_status(self, state: Any, ds: DatastreamRef | None = None, **kw: Any) -> None:
        feed = f"{self.source}/{ds.venue}/{ds.symbol}" if ds else f"{self.source}/_/_"
        if feed not in self._reported_feeds:
            # The tracker starts every feed as "disconnected" and only publishes changes; the first
            # state of a feed is news too (e.g. a subscription that is paused from the start).
            self._reported_feeds.add(feed)
            self.feeds.set_state(feed, "stale")
        try:
            if ds is None:
                await self.publish_feed_status(self.source, state, **kw)
            else:
                await self.publish_feed_status(self.source, state, venue=ds.venue, symbol=ds.symbol,
                                               kind=KIND_OF_STREAM.get(ds.stream_type), **kw)
            self.metrics.feed_state.labels(self.source, f"{self.source}/{ds.venue}/{ds.symbol}" if ds else "api").set(
                1 if state in ("connected", "resynced") else 0)
        except Exception as exc:  # noqa: BLE001 - status is best effort
            self.log.warning("could not publish feed status: %r", exc)

    # --- main: resolve datastreams, keep subscriptions, run the export loops ---------------------
    async def _main_loop(self) -> None:
        backoff = Backoff(0.5, 30.0)
        while not await self._guarded("resolving datastreams", self._resolve_datastreams, backoff):
            pass
        while not await self._guarded("reconciling subscriptions", self.reconcile_subscriptions, backoff):
            pass
        await self._safe_status("connected", detail="catalog and subscriptions in sync")
        for ds_id, ds in self.datastreams.items():
            self._ds_tasks[ds_id] = self.spawn(self._datastream_loop(ds), f"export-{ds_id}")
        self.ready.set()
        while True:
            await asyncio.sleep(self.settings.subscription_interval_s)
            await self._guarded("reconciling subscriptions", self.reconcile_subscriptions, backoff)

    async def _resolve_datastreams(self) -> None:
        wanted = set(self.settings.datastreams)
        found: dict[int, DatastreamRef] = {}
        async for page in self.api.datastream_pages():
            self.metrics.frames_in.labels(self.source, "datastreams").inc()
            for item in page:
                if isinstance(item, dict) and item.get("datastream_id") in wanted:
                    try:
                        found[item["datastream_id"]] = normalize.datastream_ref(item)
                    except MalformedPayload as exc:
                        await self.malformed("datastreams", msgspec.json.encode(item), str(exc))
        covered: dict[tuple[str, str, str], DatastreamRef] = {}  # (exchange, instrument, stream type) -> it
        for ds_id in sorted(wanted, key=lambda i: (i not in found or found[i].wire_format != "json", i)):
            ds = found.get(ds_id)
            if ds is None:
                self.log.error("datastream %s is not in the TickSupply catalog: skipped", ds_id)
            elif ds.stream_type not in SUPPORTED_STREAM_TYPES:
                self.log.error("datastream %s is a %s stream, which this ingestor does not read: skipped",
                               ds_id, ds.stream_type)
            elif (twin := covered.get((ds.exchange, ds.instrument, ds.stream_type))) is not None:
                # the same data in another wire format: ingesting both would publish every event twice
                self.log.error("datastreams %s (%s) and %s (%s) carry the same %s %s %s: ingesting %s only; "
                               "list one of them in DATASTREAMS", twin.datastream_id, twin.wire_format, ds_id,
                               ds.wire_format, ds.exchange, ds.instrument, ds.stream_type, twin.datastream_id)
            else:
                covered[(ds.exchange, ds.instrument, ds.stream_type)] = ds
                self.datastreams[ds_id] = ds

    async def reconcile_subscriptions(self) -> None:
        """Bring every configured subscription to its desired state; report spans as feed status."""
        subs = await self.api.subscriptions()
        live: dict[int, dict[str, Any]] = {}
        for sub in subs:  # newest first
            if isinstance(sub, dict) and sub.get("status") != "deleted" and sub.get("datastream_id") not in live:
                live[sub["datastream_id"]] = sub
        paused = set(self.settings.paused_datastreams)
        for ds_id, ds in self.datastreams.items():
            want = "paused" if ds_id in paused else "active"
            sub = live.get(ds_id)
            if sub is None:
                try:
                    sub = await self.api.create_subscription(ds_id, idempotency_key=str(uuid.uuid4()))
                except Conflict:  # created meanwhile (another instance): take it from the list
                    sub = next(s for s in await self.api.subscriptions()
                               if s.get("datastream_id") == ds_id and s.get("status") != "deleted")
                self.log.info("subscribed to datastream %s (%s)", ds_id, sub.get("id"))
            if sub.get("status") != want:
                if want == "paused":
                    await self.api.pause_subscription(sub["id"], idempotency_key=str(uuid.uuid4()))
                else:
                    await self.api.resume_subscription(sub["id"], idempotency_key=str(uuid.uuid4()))
                sub = dict(sub, status=want)
                self.log.info("subscription %s of datastream %s is now %s", sub["id"], ds_id, want)
            self.subscriptions[ds_id] = sub
            spans = await self.api.spans(sub["id"])
            await self._report_spans(ds, want, spans if isinstance(spans, list) else [])

    async def _report_spans(self, ds: DatastreamRef, status: str, spans: list[dict[str, Any]]) -> None:
        bounds = []
        for span in spans:
            try:
                start = _iso_ns(span["started_at"])
                end = _iso_ns(span["ended_at"]) if span.get("ended_at") else None
            except (KeyError, TypeError, ValueError):
                await self.malformed("spans", msgspec.json.encode(span), "bad span")
                continue
            bounds.append((start, end))
        bounds.sort()
        reported = self._holes_reported_until.get(ds.datastream_id)
        if reported is None:  # persisted, so a restart does not report the same holes again
            reported = self._holes_reported_until[ds.datastream_id] = await self.store.get_mark(ds.datastream_id, "holes")
        for (_, end), (next_start, _) in zip(bounds, bounds[1:]):
            if end is not None and next_start > end and next_start > reported:
                await self._safe_status("gap", ds, detail="the subscription was paused: TickSupply collected nothing",
                                        gap=(end, next_start))
                reported = self._holes_reported_until[ds.datastream_id] = next_start
                await self.store.put_mark(ds.datastream_id, "holes", next_start)
        if status == "active":
            await self._safe_status("connected", ds, detail="subscription active")
        else:
            await self._safe_status("disconnected", ds, detail=f"subscription {status}")

    # --- catalog ----------------------------------------------------------------------------------
    async def _catalog_loop(self) -> None:
        backoff = Backoff(1.0, 60.0)
        while True:
            if await self._guarded("catalog sync", self.sync_catalog, backoff):
                if self.settings.catalog_interval_s <= 0:
                    return
                await asyncio.sleep(self.settings.catalog_interval_s)

    async def sync_catalog(self) -> int:
        """Publish the catalog as reference events; returns how many were published."""
        ts = self.now_ns()
        futures: list[Awaitable[Any]] = []
        exchanges = await self.api.exchanges()
        if not isinstance(exchanges, list):
            raise MalformedReply(f"{self.api.base_url}/exchanges", msgspec.json.encode(exchanges), "not a list")
        self.metrics.frames_in.labels(self.source, "exchanges").inc()
        wanted = {e.lower() for e in self.settings.catalog_exchanges}
        codes = []
        for exchange in exchanges:
            try:
                venue = normalize.venue_event(exchange, ts)
            except MalformedPayload as exc:
                await self.malformed("exchanges", msgspec.json.encode(exchange), str(exc))
                continue
            if wanted and venue.venue not in wanted:
                continue
            codes.append(exchange["code"])
            futures.append(await self.emit(venue))
        for code in codes:
            by_instrument: dict[str, list[DatastreamRef]] = {}
            async for page in self.api.datastream_pages(exchange=code):
                self.metrics.frames_in.labels(self.source, "datastreams").inc()
                for item in page:
                    try:
                        ds = normalize.datastream_ref(item)
                    except MalformedPayload as exc:
                        await self.malformed("datastreams", msgspec.json.encode(item), str(exc))
                        continue
                    by_instrument.setdefault(ds.instrument, []).append(ds)
                    futures.append(await self.emit(normalize.datastream_event(ds, ts)))
            async for page in self.api.instrument_pages(code):
                self.metrics.frames_in.labels(self.source, "instruments").inc()
                for item in page:
                    try:
                        inst = normalize.instrument_event(code, item, by_instrument.get(item.get("symbol"), []), ts)
                    except (MalformedPayload, AttributeError) as exc:
                        await self.malformed("instruments", msgspec.json.encode(item), str(exc))
                        continue
                    futures.append(await self.emit(inst))
        await _acked(futures)
        self.log.info("catalog synced: %d reference events", len(futures))
        return len(futures)

    # --- rolling exports --------------------------------------------------------------------------
    async def _datastream_loop(self, ds: DatastreamRef) -> None:
        backoff = Backoff(0.5, 30.0)
        while True:
            more = False

            async def step() -> None:
                nonlocal more
                more = await self.ingest_once(ds)

            ok = await self._guarded(f"ingesting datastream {ds.datastream_id}", step, backoff)
            if ok and not more:
                await asyncio.sleep(self.settings.export_interval_s)

    async def ingest_once(self, ds: DatastreamRef) -> bool:
        """Export and publish the next window; returns True when more backlog is waiting."""
        s = self.settings
        progress = await self.store.get(ds.datastream_id)
        end_limit = self.now_ns() - int(s.export_lag_s * 1e9)
        if progress.inflight is None:
            start = progress.last_end_ns
            if start is None:
                start = end_limit - int(s.initial_lookback_s * 1e9)
            availability = await self.api.availability(ds.datastream_id)
            ranges = _ranges(availability)
            overlapping = [(lo, hi) for lo, hi in ranges if hi > start and lo < end_limit]
            if not overlapping:
                if progress.last_end_ns is None or end_limit > progress.last_end_ns:
                    # Nothing was collected in [start, end_limit) and never will be (spans only grow
                    # forward from now): move on.
                    progress.last_end_ns = end_limit
                    await self.store.put(progress)
                return False
            start = max(start, overlapping[0][0])
            end = min(end_limit, start + int(s.max_window_s * 1e9))
            if end <= start:
                return False
            progress.inflight = Inflight(start_ns=start, end_ns=end, idempotency_key=str(uuid.uuid4()))
            self._own_windows.add(progress.inflight.idempotency_key)
            await self.store.put(progress)  # before the create: a restart re-POSTs with this key
        elif progress.inflight.idempotency_key not in self._own_windows:
            self._own_windows.add(progress.inflight.idempotency_key)
            progress.inflight.resumed = True
            self.log.info("resuming export window %s..%s of datastream %s (export %s, %d artifacts done)",
                          progress.inflight.start_ns, progress.inflight.end_ns, ds.datastream_id,
                          progress.inflight.export_id, len(progress.inflight.done_artifacts))
        window_end = progress.inflight.end_ns
        await self._run_window(ds, progress)
        return window_end < end_limit - int(s.export_interval_s * 1e9)

    async def _run_window(self, ds: DatastreamRef, progress: DatastreamProgress) -> None:
        inflight = progress.inflight
        assert inflight is not None
        resumed = inflight.resumed and (inflight.export_id is not None or inflight.done_artifacts)
        if inflight.export_id is None:
            job = await self.api.create_export(ds.datastream_id, inflight.start_ns, inflight.end_ns,
                                               inflight.idempotency_key)
            if not isinstance(job, dict) or not isinstance(job.get("id"), str):
                raise MalformedReply(f"{self.api.base_url}/exports", msgspec.json.encode(job), "no export id")
            self.exports_created += 1
            inflight.export_id = job["id"]
            await self.store.put(progress)
        try:
            await self._wait_export(inflight.export_id)
        except ExportFailed as exc:
            await self._window_failed(ds, progress, exc.export)
            return
        except NotFound:
            self.log.warning("export %s vanished: exporting the window again", inflight.export_id)
            progress.inflight = _fresh(inflight)
            await self.store.put(progress)
            return

        async def artifact_done(art_id: str, events: int) -> None:
            inflight.done_artifacts.append(art_id)
            inflight.events += events
            await self.store.put(progress)

        await self._download_and_publish(ds, inflight.export_id, replay=False, skip=set(inflight.done_artifacts),
                                         on_artifact=artifact_done)
        progress.last_end_ns = inflight.end_ns
        self._last_end[ds.datastream_id] = inflight.end_ns
        progress.events_total += inflight.events
        progress.inflight = None
        had_gap = progress.failed_windows > 0
        progress.failed_windows = 0
        await self.store.put(progress)
        self.log.info("datastream %s: window up to %s published (%d events)", ds.datastream_id,
                      progress.last_end_ns, inflight.events)
        if had_gap:
            await self._safe_status("resynced", ds, detail="a failed export window was exported again",
                                    gap=(inflight.start_ns, inflight.end_ns))
        elif resumed:
            await self._safe_status("resynced", ds, detail=f"resumed export {inflight.export_id} after a restart",
                                    gap=(inflight.start_ns, inflight.end_ns))
        if self.subscriptions.get(ds.datastream_id, {}).get("status", "active") == "active":
            await self._safe_status("connected", ds)

    async def _window_failed(self, ds: DatastreamRef, progress: DatastreamProgress, export: dict[str, Any]) -> None:
        inflight = progress.inflight
        assert inflight is not None
        reason = str(export.get("reason") or export.get("status"))
        if export.get("status") == "failed" and await self._window_is_empty(ds, inflight, reason):
            progress.last_end_ns = inflight.end_ns
            progress.inflight = None
            await self.store.put(progress)
            return
        self.log.warning("export %s of datastream %s %s: %s; exporting the window again",
                         inflight.export_id, ds.datastream_id, export.get("status"), reason)
        # A window the vendor finds too large (or that keeps failing) is retried in halves.
        shrink = "too large" in reason.lower() or "split" in reason.lower() or inflight.attempts >= 2
        progress.inflight = _fresh(inflight, shrink=shrink)
        progress.failed_windows += 1
        await self.store.put(progress)
        await self._safe_status("gap", ds, detail=f"export {export.get('status')}: {reason}",
                                gap=(inflight.start_ns, inflight.end_ns))
        raise RuntimeError(f"export {inflight.export_id} {export.get('status')}: {reason}")  # back off, then retry

    async def _window_is_empty(self, ds: DatastreamRef, inflight: Inflight, reason: str) -> bool:
        if "no data" in reason.lower():
            return True
        ranges = _ranges(await self.api.availability(ds.datastream_id))
        return not any(hi > inflight.start_ns and lo < inflight.end_ns for lo, hi in ranges)

    async def _wait_export(self, export_id: str) -> dict[str, Any]:
        s = self.settings
        backoff = Backoff(s.export_poll_initial_s, s.export_poll_max_s, factor=1.6, min_s=s.export_poll_initial_s / 2)
        deadline = time.monotonic() + s.export_timeout_s
        while True:
            job = await self.api.get_export(export_id)
            status = job.get("status") if isinstance(job, dict) else None
            if status == "succeeded":
                return job
            if status in ("failed", "canceled", "deleted"):
                raise ExportFailed(job)
            if status not in ("queued", "running"):
                raise MalformedReply(f"{self.api.base_url}/exports/{export_id}", msgspec.json.encode(job),
                                     f"unknown export status {status!r}")
            if time.monotonic() > deadline:
                await self.api.cancel_export(export_id)
                raise ExportFailed(dict(job, status="canceled", reason=f"not finished after {s.export_timeout_s}s"))
            await backoff.sleep()

    async def _download_and_publish(self, ds: DatastreamRef, export_id: str, *, replay: bool, skip: set[str],
                                    on_artifact: Any = None, batch_salt: str | None = None) -> int:
        listing = await self._listing(export_id)
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
                    data = await self.api.fetch_artifact(url)
                    break
                except ArtifactUrlExpired as exc:
                    self.log.info("artifact URL of %s refused (%s): listing the export again", art_id, exc)
                    listing = await self._listing(export_id)
            if data is None:
                raise RuntimeError(f"artifact {art_id}: every presigned URL was refused")
            self.metrics.frames_in.labels(self.source, "artifacts").inc()
            n = await self.publish_artifact(ds, data, channel=f"artifact:{art.get('filename', art_id)}",
                                            replay=replay, batch_salt=batch_salt)
            total += n
            if on_artifact is not None:
                await on_artifact(art_id, n)
        return total

    async def _listing(self, export_id: str) -> list[dict[str, Any]]:
        reply = await self.api.download(export_id)
        arts = reply.get("artifacts") if isinstance(reply, dict) else None
        if not isinstance(arts, list) or not all(isinstance(a, dict) and "id" in a and "url" in a for a in arts):
            raise MalformedReply(f"{self.api.base_url}/exports/{export_id}/download",
                                 msgspec.json.encode(reply), "bad download listing")
        return arts

    async def publish_artifact(self, ds: DatastreamRef, data: bytes, *, channel: str = "artifact",
                               replay: bool = False, batch_salt: str | None = None) -> int:
        """Parse one artifact and publish its events; returns once every message is acked.

        The artifact is parsed slice by slice; a slice is published while the previous one's
        acks come in, so memory stays bounded. Bad rows and unreadable artifacts are dead-lettered
        (never raised)."""
        published = bad_rows = 0
        waiting: list[Any] = []
        try:
            for piece in normalize.iter_artifact(data, ds.stream_type, self.settings.artifact_slice_bytes):
                for bad in piece.bad:
                    bad_rows += 1
                    if bad_rows <= MAX_DEAD_LETTERS_PER_ARTIFACT:
                        await self.malformed(channel, bad.line, f"line {bad.line_no}: {bad.reason}")
                self.metrics.frames_in.labels(self.source, "rows").inc(piece.total_lines)
                sent = await self._publish_rows(ds, piece.rows, replay, batch_salt)
                published += len(piece.rows)
                await self._wait_acks(waiting)
                waiting = sent
        except normalize.ArtifactError as exc:
            await self._wait_acks(waiting)
            await self.malformed(channel, data[:MAX_DEAD_LETTER_BYTES], str(exc))
            await self._safe_status("gap", ds, detail=f"unreadable artifact {channel}: {exc}")
            return published
        await self._wait_acks(waiting)
        if bad_rows > MAX_DEAD_LETTERS_PER_ARTIFACT:
            await self.malformed(channel, b"", f"{bad_rows - MAX_DEAD_LETTERS_PER_ARTIFACT} more bad rows")
        return published

    async def _wait_acks(self, futures: list[Any]) -> None:
        await _acked(futures)

    async def _publish_rows(self, ds: DatastreamRef, rows: list[Any], replay: bool,
                            batch_salt: str | None) -> list[Any]:
        """Send every event (as batch envelopes, or one message per event acked as a group);
        returns the ack futures to wait on."""
        assert self.publisher is not None
        publish = self.publisher.publish
        ts_recv = self.now_ns()
        futures: list[Any] = []
        if not rows:
            return futures
        single = self.settings.publish_mode == "single" and batch_salt is None
        size = self.settings.batch_max_events if single else self._batch_size(ds, rows, ts_recv)
        subject = None
        for i in range(0, len(rows), size):
            events = normalize.events_of(ds, rows[i:i + size], ts_recv, replay)
            if not events:
                continue
            if subject is None:
                subject = subjects.for_event(events[0])
            if single:
                futures.append(await self.publisher.publish_group(events))
            else:
                for batch, payload in self._batches(events, replay, batch_salt):
                    futures.append(await publish(subject, payload, codec.headers_for(batch)))
            self._account(events[-1], len(events))
        return futures

    def _max_payload(self) -> int:
        return int(getattr(self.nc, "max_payload", 0) or 1_048_576)

    def _batch_size(self, ds: DatastreamRef, rows: list[Any], ts_recv: int) -> int:
        """Events per batch so a batch stays under the server's max_payload. Derived from the
        artifact's own first rows only, so the same artifact is always cut the same way (the same
        batch ids when it is published again after a restart)."""
        sample = normalize.events_of(ds, rows[:64], ts_recv)
        widest = max((len(codec.encode(e)) for e in sample), default=256) + 16
        fit = int(self._max_payload() * 0.85) // widest
        return max(1, min(self.settings.batch_max_events, fit))

    def _batches(self, events: list[Any], replay: bool, batch_salt: str | None) -> list[tuple[Batch, bytes]]:
        first = events[0]
        kind = subjects.kind_of(first)
        identity: tuple[Any, ...] = (kind, first.venue, first.symbol, first.id, events[-1].id, len(events))
        batch_id = event_id(first.source, "batch", *identity) if batch_salt is None else \
            event_id(first.source, "replay_batch", batch_salt, *identity)
        batch = Batch(id=batch_id, kind=kind, source=first.source, venue=first.venue, symbol=first.symbol,
                      replay=replay, events=events)
        payload = codec.encode(batch)
        if len(events) > 1 and len(payload) > self._max_payload() - 4096:
            half = len(events) // 2  # still too large (unusually wide rows): split, deterministically
            return self._batches(events[:half], replay, batch_salt) + self._batches(events[half:], replay, batch_salt)
        return [(batch, payload)]

    # --- replay -----------------------------------------------------------------------------------
    async def replay(self, request: ReplayRequest) -> int:
        """Export the requested range (in windows of at most ``max_window_s``) and publish it as
        ``replay=True`` batches; returns the number of events, once all are acked."""
        ds = await self._replay_datastream(request)
        step = int(self.settings.max_window_s * 1e9)
        count = 0
        for lo in range(request.start_ns, request.end_ns, step):
            hi = min(request.end_ns, lo + step)
            job = await self.api.create_export(ds.datastream_id, lo, hi, str(uuid.uuid4()))
            self.exports_created += 1
            try:
                await self._wait_export(job["id"])
            except ExportFailed as exc:
                if "no data" in str(exc.export.get("reason") or "").lower():
                    continue
                raise
            count += await self._download_and_publish(ds, job["id"], replay=True, skip=set(),
                                                      batch_salt=f"{request.request_id or job['id']}:{lo}")
        self.log.info("replay %s: %d %s events of %s/%s", request.request_id, count, request.kind, ds.venue, ds.symbol)
        return count

    async def _replay_datastream(self, request: ReplayRequest) -> DatastreamRef:
        stream_type = next((t for t, k in KIND_OF_STREAM.items() if k == request.kind), None)
        if stream_type is None:
            raise ReplayUnsupported(f"ticksupply replays trade and quote, not {request.kind}")
        candidates = [ds for ds in self.datastreams.values()
                      if ds.venue == request.venue and ds.symbol == request.symbol and ds.stream_type == stream_type]
        if not candidates:
            instrument = subjects.denormalize_symbol(request.symbol)
            async for page in self.api.datastream_pages(exchange=request.venue, instrument=instrument,
                                                        stream_type=stream_type):
                for item in page:
                    try:
                        candidates.append(normalize.datastream_ref(item))
                    except MalformedPayload:
                        continue
        candidates.sort(key=lambda d: (d.wire_format != "json", d.datastream_id))
        if not candidates:
            raise ReplayUnsupported(f"no TickSupply {stream_type} datastream for {request.venue}/{request.symbol}")
        subscribed = {int(s.get("datastream_id", 0)) for s in await self.api.subscriptions()
                      if s.get("status") != "deleted"}
        for ds in candidates:
            if ds.datastream_id in subscribed:
                return ds
        raise ReplayUnsupported(f"no TickSupply subscription to {request.venue}/{request.symbol} {stream_type}: "
                                "only subscribed datastreams can be exported")


async def _acked(futures: list[Any]) -> None:
    """Wait for JetStream acks; raises the first publish error. ``asyncio.wait`` (not gather): a
    cancelled caller must not cancel the publisher's own futures."""
    if not futures:
        return
    await asyncio.wait(futures)
    for future in futures:
        if future.exception() is not None:
            raise future.exception()


def _fresh(inflight: Inflight, shrink: bool = False) -> Inflight:
    """The window to export again (new idempotency key, nothing done); ``shrink`` halves it (down
    to one second): the rest is the next window's."""
    end = inflight.end_ns
    if shrink and end - inflight.start_ns >= 2_000_000_000:
        end = inflight.start_ns + (end - inflight.start_ns) // 2
    return Inflight(resumed=inflight.resumed, start_ns=inflight.start_ns, end_ns=end,
                    idempotency_key=str(uuid.uuid4()), attempts=0 if end != inflight.end_ns else inflight.attempts + 1)


def _ranges(availability: Any) -> list[tuple[int, int]]:
    if not isinstance(availability, dict) or not isinstance(availability.get("ranges"), list):
        raise MalformedReply("/availability", msgspec.json.encode(availability), "bad availability reply")
    out = []
    for r in availability["ranges"]:
        try:
            out.append((int(r["from"]), int(r["to"])))
        except (KeyError, TypeError, ValueError):
            raise MalformedReply("/availability", msgspec.json.encode(availability), "bad range") from None
    return sorted(out)


def _iso_ns(text: str) -> int:
    """ISO 8601 (UTC, up to ns) -> int ns."""
    from datetime import datetime

    text = text.strip()
    zone = ""
    if text.endswith("Z"):
        text = text[:-1]
    elif len(text) > 6 and text[-6] in "+-" and text[-3] == ":":
        text, zone = text[:-6], text[-6:]
    whole, _, frac = text.partition(".")
    dt = datetime.fromisoformat(whole + (zone or "+00:00"))
    return int(dt.timestamp()) * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9])

