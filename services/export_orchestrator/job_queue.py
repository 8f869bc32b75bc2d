"""The shared queue: which jobs wait, and claiming one.

Every orchestrator process keeps a cache of all job records (a KV watch), so its workers find
``queued`` jobs (and ``running`` ones whose lease expired: their worker died) without reading
the bucket. A worker claims a job by CAS-writing ``running`` + its lease; only one CAS can win,
so a job runs once at a time. A job whose workers kept dying fails after ``max_attempts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from .job_records import (
    KEY_PREFIX,
    RECORD_DECODER,
    JobRecord,
    JobStore,
    NotClaimable,
    NotFound,
    now_ns,
    replace_job,
)
from .job_status import JobStatus

log = logging.getLogger("marketbus.export_orchestrator.jobs")

RunJob = Callable[[JobRecord, str], Awaitable[None]]  # (claimed record, worker name)


class JobQueue:
    def __init__(self, settings: Any, kv: Any, store: JobStore, status: JobStatus) -> None:
        self.settings = settings
        self.kv = kv
        self.store = store
        self.status = status
        self.cache: dict[str, JobRecord] = {}
        self.running: dict[str, str] = {}  # job id -> worker name, in this process
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A job may be claimable: idle workers look again."""
        self._wake.set()

    def queued(self) -> int:
        return sum(1 for r in self.cache.values() if r.state == "queued")

    async def watch(self) -> None:
        """Keep a cache of every job (for the queue and the overload check); wake idle workers."""
        while True:
            try:
                watcher = await self.kv.watch(KEY_PREFIX + ">")
                while True:
                    try:
                        entry = await watcher.updates(timeout=30)
                    except TimeoutError:
                        continue
                    if entry is None:
                        self.wake()
                        continue
                    job_id = entry.key[len(KEY_PREFIX):]
                    if entry.operation in ("DEL", "PURGE") or not entry.value:
                        self.cache.pop(job_id, None)
                        continue
                    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                        record = RECORD_DECODER.decode(entry.value)
                        self.cache[job_id] = record
                        if record.state == "queued":
                            self.wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("job watcher failed (%r); restarting it", exc)
                await asyncio.sleep(1.0)

    def _candidates(self) -> list[str]:
        now = time.time()
        queued = sorted((r for r in self.cache.values() if r.state == "queued" and not r.deleted),
                        key=lambda r: r.job.created_ts)
        orphans = [r for r in self.cache.values() if r.state == "running" and r.lease_until < now]
        return [r.id for r in queued + orphans if r.id not in self.running]

    async def worker(self, name: str, run: RunJob) -> None:
        while True:
            ran = False
            try:
                for job_id in self._candidates():
                    record = await self.claim(job_id, name)
                    if record is not None:
                        self.running[job_id] = name
                        try:
                            await run(record, name)
                        finally:
                            self.running.pop(job_id, None)
                        ran = True
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("export worker %s: %r", name, exc)
                await asyncio.sleep(self.settings.scan_interval_s)
            if not ran:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.settings.scan_interval_s)

    async def claim(self, job_id: str, name: str) -> JobRecord | None:
        max_attempts = self.settings.max_attempts

        def fn(r: JobRecord) -> JobRecord:
            now = time.time()
            takeover = r.state == "running" and r.lease_until < now
            if r.deleted or not (r.state == "queued" or takeover):
                raise NotClaimable
            if r.attempts >= max_attempts:
                return replace_job(msgspec.structs.replace(r, lease_owner=None, finished_ts=now_ns()), state="failed",
                                    reason=f"gave up after {r.attempts} attempts (the worker kept dying)")
            r = msgspec.structs.replace(r, lease_owner=name, lease_until=now + self.settings.lease_s,
                                        attempts=r.attempts + 1, started_ts=r.started_ts or now_ns())
            return replace_job(r, state="running")

        try:
            record = await self.store.mutate(job_id, fn)
        except (NotClaimable, NotFound):
            return None
        self.cache[job_id] = record
        await self.status.publish(record)
        if record.state != "running":
            return None
        if record.attempts > 1:
            log.info(
                "export %s resumed by %s (attempt %d, %d file(s) done)",
                job_id,
                name,
                record.attempts,
                len(record.files),
            )
        return record
