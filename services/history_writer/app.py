"""The history writer: every md./ref. event (and feed gap/resync status) persisted exactly once,
queryable over NATS (``history.query``, ``history.coverage``) and in-process (store API).

Run: ``python -m services.history_writer``. See consumer.py (intake and exactly-once), store/
(backends), query.py (the NATS protocols), coverage.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, ClassVar

from faststream.nats import NatsMessage

from marketbus.contracts import codec, subjects
from marketbus.contracts.consumers import HISTORY_MD, HISTORY_REF, HISTORY_STATUS, ConsumerSpec
from marketbus.contracts.errors import BAD_REQUEST, ErrorReply
from marketbus.contracts.jobs import CoverageQuery, HistoryQuery
from marketbus.history.coverage import DEFAULT_MAX_GAP_NS, NS
from marketbus.runtime.service import Service

from .consumer import StreamIntake
from .intake_client import IntakeClient
from .metrics import HistoryMetrics
from .query import serve_coverage, serve_query
from .schema import warm_up
from .settings import HistoryWriterSettings
from .store import HistoryStore, open_store


async def _raw(msg: Any) -> Any:
    return msg.body


def _decoded(body: bytes, kind: type) -> tuple[Any, bytes | None]:
    """(request, None) or (None, the encoded ErrorReply to answer with): a malformed request gets
    a ``bad_request`` error reply, the one error shape of the bus."""
    try:
        return codec.decode_as(body, kind), None
    except Exception as exc:
        return None, codec.encode(ErrorReply(code=BAD_REQUEST, message=f"bad request: {exc}"[:1000]))


class HistoryWriter(Service):
    name: ClassVar[str] = "history_writer"
    settings_cls: ClassVar[type[HistoryWriterSettings]] = HistoryWriterSettings
    metrics_cls = HistoryMetrics
    settings: HistoryWriterSettings
    metrics: HistoryMetrics

    def setup(self) -> None:
        self.store: HistoryStore = open_store(self.settings)
        self.intakes: list[StreamIntake] = []
        self.store_problem: str | None = None  # why the store cannot write now (unhealthy meanwhile)
        gaps = dict(DEFAULT_MAX_GAP_NS)
        gaps.update({k: int(v * NS) for k, v in self.settings.coverage_max_gap_s.items()})
        self.max_gap_ns = gaps
        queue = self.settings.query_queue

        @self.broker.subscriber(subjects.HISTORY_QUERY, queue=queue, decoder=_raw)
        async def on_query(body: bytes, msg: NatsMessage) -> bytes | None:
            self.metrics.queries.labels("query").inc()
            query, problem = _decoded(body, HistoryQuery)
            if problem:
                return problem
            chunks = serve_query(self.store, query, max_rows=self.settings.query_max_rows,
                                 max_chunk_bytes=self.settings.query_max_chunk_bytes)
            last = None
            async for chunk in chunks:
                if last is not None and msg.reply_to:
                    await self.nc.publish(msg.reply_to, codec.encode(last))
                last = chunk
            # the last chunk is the handler's reply (published after every previous chunk)
            return codec.encode(last) if last is not None else None

        @self.broker.subscriber(subjects.HISTORY_COVERAGE, queue=queue, decoder=_raw)
        async def on_coverage(body: bytes) -> bytes:
            self.metrics.queries.labels("coverage").inc()
            query, problem = _decoded(body, CoverageQuery)
            if problem:
                return problem
            return codec.encode(await serve_coverage(self.store, query, self.max_gap_ns))

    def consumer_specs(self) -> list[ConsumerSpec]:
        """The durable consumers of this writer (names from ``durable``, policy from settings)."""
        s = self.settings
        policy = {"ack_wait_s": s.ack_wait_s, "max_deliver": s.max_deliver, "max_ack_pending": s.max_ack_pending}
        specs = [HISTORY_MD.with_(durable=f"{s.durable}_md", **policy)]
        if s.store_reference:
            specs.append(HISTORY_REF.with_(durable=f"{s.durable}_ref", **policy))
        if s.store_feed_status:
            specs.append(HISTORY_STATUS.with_(durable=f"{s.durable}_status", **policy))
        return specs

    async def on_start(self) -> None:
        # a connection of its own for the JetStream intake (see intake_client.py)
        self.intake_nc = IntakeClient()
        await self.intake_nc.connect(**self.settings.connect_options(f"{self.name}-intake"))
        if await self._open_store(attempt=0):
            await self._start_intakes()
        else:
            # the store is down (PostgreSQL not up yet): wait for it in the background, unhealthy
            # meanwhile, instead of failing the start
            self.spawn(self._wait_for_store(), "open-store")
        self.spawn(self._maintenance_loop(), "maintenance")

    async def _open_store(self, attempt: int) -> bool:
        try:
            # also initialises pyarrow's compute registry (first-call cost) before messages arrive
            await asyncio.gather(self.store.open(), asyncio.to_thread(warm_up))
        except Exception as exc:
            delay = min(self.settings.store_retry_max_s, 0.25 * 2 ** (attempt + 1))
            self.store_failed(f"cannot open the {self.store.backend} store: {type(exc).__name__}: {exc}")
            self.log.warning("cannot open the %s store (%s: %s): retry %d in %.1f s", self.store.backend,
                             type(exc).__name__, exc, attempt + 1, delay)
            await asyncio.sleep(0 if attempt == 0 else delay)
            return False
        if attempt:
            self.log.info("%s store open after %d retries", self.store.backend, attempt)
        self.store_recovered()
        return True

    async def _wait_for_store(self) -> None:
        """Open the store, retried with back-off while it is unavailable, then start the intakes."""
        attempt = 1
        while not await self._open_store(attempt):
            attempt += 1
        await self._start_intakes()

    async def _start_intakes(self) -> None:
        for spec in self.consumer_specs():
            intake = StreamIntake(self, spec)
            await intake.start()
            self.intakes.append(intake)

    # --- health -----------------------------------------------------------------------------
    def store_failed(self, reason: str) -> None:
        """The store cannot write: /healthz says so (503, with the reason) until it recovers."""
        self.store_problem = reason
        self.unhealthy("store", f"store unavailable: {reason}")

    def store_recovered(self) -> None:
        if self.store_problem is not None:
            self.store_problem = None
            self.healthy("store")

    async def on_stop(self) -> None:
        for intake in self.intakes:
            await intake.stop()
        if getattr(self, "intake_nc", None) is not None:
            with contextlib.suppress(Exception):
                await self.intake_nc.close()
        with contextlib.suppress(Exception):
            await self.store.close()

    async def _maintenance_loop(self) -> None:
        s = self.settings
        next_compact = time.monotonic() + s.compact_interval_s
        next_retention = time.monotonic() + min(60.0, s.retention_interval_s)
        next_prune = time.monotonic() + 10.0
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if not self.intakes:
                continue  # the store is not open yet
            try:
                if now >= next_prune:
                    next_prune = now + 10.0
                    for intake in self.intakes:
                        info = await self.js.consumer_info(intake.stream, intake.durable)
                        self.store.forget_below(intake.stream, info.ack_floor.stream_seq if info.ack_floor else 0)
                if now >= next_compact:
                    next_compact = now + s.compact_interval_s
                    merged = await self.store.compact()
                    if merged:
                        self.log.info("compacted %d small files", merged)
                if s.retention_days and now >= next_retention:
                    next_retention = now + s.retention_interval_s
                    removed = await self.apply_retention()
                    if removed:
                        self.log.info("retention removed %d partitions/rows", removed)
            except Exception as exc:
                self.log.warning("maintenance failed: %r", exc)

    async def apply_retention(self, now_ns: int | None = None) -> int:
        return await self.store.apply_retention(self.settings.retention_days, now_ns or time.time_ns())

    def health(self) -> dict[str, Any]:
        return {
            "backend": self.store.backend,
            "store_ok": self.store_problem is None,
            **({"unhealthy": self.store_problem} if self.store_problem else {}),
            "streams": {
                i.stream: {"stored": i.stored, "acked": i.acked, "duplicates": i.duplicates, "dead_lettered": i.bad,
                           "retried": i.retried, "buffered": i.buffered, "last_flush_ts": i.last_flush_ts}
                for i in self.intakes
            },
        }

    def heartbeat(self):
        hb = super().heartbeat()
        counters = {}
        for i in self.intakes:
            counters[f"{i.stream.lower()}_stored"] = float(i.stored)
            counters[f"{i.stream.lower()}_duplicates"] = float(i.duplicates)
            counters[f"{i.stream.lower()}_dead_lettered"] = float(i.bad)
        import msgspec.structs as ms

        return ms.replace(hb, counters=counters)
