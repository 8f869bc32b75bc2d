"""Export jobs: the job store (KV bucket ``export_jobs``), the shared queue and the workers.

(This module is the API: :class:`JobManager`; the parts are job_records, job_queue, job_runner
and job_status.)

State: one KV entry per job, ``job.<job_id>`` -> :class:`JobRecord` (the contract ExportJob plus
lease, checkpoint and artifact details). Every change is a compare-and-set on the entry's
revision, so several orchestrator processes share the queue safely:

- a worker claims a ``queued`` job (or a ``running`` one whose lease expired: its worker died)
  by CAS-writing ``running`` + its lease; only one CAS can win, so a job runs once at a time;
- the owner renews its lease while it works; every write it makes checks that it still holds
  the lease (else it stops: the job was taken over) and whether a cancel was requested;
- after every finished artifact the owner checkpoints (files done, position in the history
  order), so a job resumes where it was after a restart or a takeover; a graceful stop hands the
  job back to the queue at once.

The job id is derived from (owner, idempotency key), and the job is created with a KV ``create``
(fails if the key exists): the same request sent twice, even to two orchestrators at the same
moment, makes one job.

Progress and state changes are published as :class:`ExportJob` events on ``export.status.<id>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec

from marketbus.contracts.jobs import ExportJob, ExportRequest
from marketbus.runtime.tasks import cancel_and_wait

from .artifacts import ArtifactStore
from .history_source import HistorySource
from .job_queue import JobQueue
from .job_records import (
    KEY_PREFIX,
    TERMINAL,
    Checkpoint,
    Conflict,
    InvalidRequest,
    JobError,
    JobRecord,
    JobStore,
    NotFound,
    Overloaded,
    artifact_id,
    fingerprint,
    job_id_for,
    now_ns,
    replace_job,
    validate,
)
from .job_runner import JobRunner, filenames_of
from .job_status import JobStatus

__all__ = [
    "KEY_PREFIX", "TERMINAL", "Checkpoint", "Conflict", "InvalidRequest", "JobError", "JobManager", "JobRecord",
    "JobStore", "NotFound", "Overloaded", "artifact_id", "fingerprint", "job_id_for", "validate",
]

log = logging.getLogger("marketbus.export_orchestrator.jobs")


class JobManager:
    """Accepts jobs, runs them on ``settings.workers`` workers, and answers state queries.

    Made of: the record store (job_records), the queue and claiming (job_queue), running a job
    (job_runner) and status publishing (job_status)."""

    def __init__(self, settings: Any, nc: Any, kv: Any, history: HistorySource, artifacts: ArtifactStore,
                 instance: str) -> None:
        self.settings = settings
        self.store = JobStore(kv, nc.jetstream())
        self.artifacts = artifacts
        self.instance = instance
        self.status = JobStatus(nc.jetstream())
        self.queue = JobQueue(settings, kv, self.store, self.status)
        self.runner = JobRunner(settings, nc, self.store, self.queue.cache, history, artifacts, self.status)
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def cache(self) -> dict[str, JobRecord]:
        return self.queue.cache

    @property
    def running(self) -> dict[str, str]:
        """Job id -> worker name, of the jobs this process runs."""
        return self.queue.running

    @property
    def jobs_done(self) -> int:
        return self.runner.jobs_done

    @property
    def rows_exported(self) -> int:
        return self.runner.rows_exported

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self.queue.watch(), name="export:watch"))
        for i in range(max(0, self.settings.workers)):
            worker = self.queue.worker(f"{self.instance}/w{i}", self.runner.run)
            self._tasks.append(asyncio.create_task(worker, name=f"export:worker{i}"))
        self._tasks.append(asyncio.create_task(self._maintenance(), name="export:maintenance"))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()

    async def publish(self, record: JobRecord) -> None:
        await self.status.publish(record)

    # --- API ------------------------------------------------------------------------------------
    async def submit(self, request: ExportRequest, *, owner: str = "", datastream_id: int | None = None,
                     ranges: list[tuple[int, int]] | None = None) -> tuple[JobRecord, bool]:
        """Create a job (or return the one this idempotency key already made). ``ranges``: the
        ``[from, to)`` event-time ranges the export is clipped to (a subscription's spans), None =
        the whole ``[start_ns, end_ns)``."""
        if not request.idempotency_key:
            raise InvalidRequest("idempotency_key is required")
        job_id = job_id_for(owner, request.idempotency_key)
        fp = fingerprint(request)
        existing = await self.store.get(job_id)
        if existing is not None:
            return self._same(existing[1], fp), False
        validate(request)
        queued = self.queue.queued()
        if queued >= self.settings.max_queued_jobs:
            raise Overloaded(f"{queued} export jobs are queued; try again later")
        if request.max_rows_per_file == 1_000_000 and self.settings.max_rows_per_file != 1_000_000:
            request = msgspec.structs.replace(request, max_rows_per_file=self.settings.max_rows_per_file)
        now = now_ns()
        job = ExportJob(job_id=job_id, request=request, state="queued", created_ts=now, updated_ts=now)
        record = JobRecord(job=job, owner=owner, datastream_id=datastream_id, fingerprint=fp, ranges=ranges)
        created, record = await self.store.create(record)
        if not created:
            return self._same(record, fp), False
        self.cache[job_id] = record
        await self.publish(record)
        self.queue.wake()
        log.info("export %s queued: %s", job_id, _describe(request))
        return record, True

    @staticmethod
    def _same(record: JobRecord, fp: str) -> JobRecord:
        if record.fingerprint != fp:
            raise Conflict(f"idempotency key already used for a different export ({record.id})")
        return record

    async def get(self, job_id: str) -> JobRecord | None:
        got = await self.store.get(job_id)
        return got[1] if got else None

    async def list(self, owner: str | None = None, include_deleted: bool = False) -> list[JobRecord]:
        records = await self.store.all()
        return [r for r in records if (owner is None or r.owner in (owner, ""))
                and (include_deleted or not r.deleted)]

    async def cancel(self, job_id: str) -> JobRecord:
        def fn(r: JobRecord) -> JobRecord | None:
            if r.state in TERMINAL or r.cancel_requested:
                return None
            if r.state == "queued":
                return replace_job(msgspec.structs.replace(r, cancel_requested=True, finished_ts=now_ns()),
                                    state="cancelled", reason="cancelled before it started")
            return msgspec.structs.replace(r, cancel_requested=True)

        record = await self.store.mutate(job_id, fn)
        if record.state == "cancelled":
            await self.publish(record)
        return record

    async def delete(self, job_id: str) -> JobRecord:
        record = await self.cancel(job_id)

        def fn(r: JobRecord) -> JobRecord | None:
            return None if r.deleted else msgspec.structs.replace(r, deleted=True)

        record = await self.store.mutate(job_id, fn)
        if record.state in TERMINAL:
            await self.artifacts.delete_job(job_id, filenames_of(record))
        return record

    # --- housekeeping ---------------------------------------------------------------------------
    async def _maintenance(self) -> None:
        """Delete finished jobs (and their artifacts) after the retention period."""
        while True:
            await asyncio.sleep(300)
            with contextlib.suppress(Exception):
                cutoff = now_ns() - int(self.settings.job_retention_days * 86_400 * 1e9)
                for r in list(self.cache.values()):
                    if r.state in TERMINAL and (r.finished_ts or r.job.updated_ts) < cutoff:
                        await self.artifacts.delete_job(r.id, filenames_of(r))
                        await self.store.delete(r.id)


def _describe(req: ExportRequest) -> str:
    s = req.selector
    return f"{s.kind}.{s.source}.{s.venue}.{s.symbol} [{req.start_ns}, {req.end_ns}) as {req.format}"

