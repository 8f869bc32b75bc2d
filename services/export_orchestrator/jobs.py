"""Export jobs: the job store (KV bucket ``export_jobs``), the shared queue and the workers.

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
import hashlib
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError, NotFoundError

from marketbus.contracts import codec, subjects
from marketbus.contracts.base import SCHEMA_VERSION
from marketbus.contracts.ids import event_id
from marketbus.contracts.jobs import Artifact, ExportJob, ExportRequest, StreamCoverage
from marketbus.runtime.tasks import cancel_and_wait

from .artifacts import ArtifactStore
from .gaps import ReplayOutcome, all_holes, clip_coverage, fill_gaps
from .history_source import HistorySource, Position, kind_columns, kinds_of
from .writer import MANIFEST_NAME, MANIFEST_VERSION, FileResult, SplitWriter, name_part

log = logging.getLogger("marketbus.export_orchestrator.jobs")

TERMINAL = ("succeeded", "failed", "cancelled")
_JOB_ID = re.compile(r"[-_=a-zA-Z0-9]{1,128}")
KEY_PREFIX = "job."


class Checkpoint(msgspec.Struct, kw_only=True):
    phase: Literal["coverage", "export", "finalize"] = "coverage"
    position: Position | None = None  # resume strictly after this
    next_index: dict[str, int] = {}  # kind -> next file number
    kind_rows: dict[str, int] = {}  # kind -> rows in finished files


class JobRecord(msgspec.Struct, kw_only=True):
    job: ExportJob
    owner: str = ""  # hash of the API key that created it ("" = over NATS)
    datastream_id: int | None = None
    fingerprint: str = ""
    lease_owner: str | None = None
    lease_until: float = 0.0
    attempts: int = 0
    cancel_requested: bool = False
    deleted: bool = False
    started_ts: int | None = None
    finished_ts: int | None = None
    expected_rows: int = 0
    files: list[FileResult] = []
    manifest: str | None = None
    replays: list[ReplayOutcome] = []
    complete: bool | None = None
    checkpoint: Checkpoint = msgspec.field(default_factory=Checkpoint)

    @property
    def id(self) -> str:
        return self.job.job_id

    @property
    def state(self) -> str:
        return self.job.state


class JobError(Exception):
    status = 400


class InvalidRequest(JobError):
    status = 400


class Conflict(JobError):
    status = 409


class NotFound(JobError):
    status = 404


class Overloaded(JobError):
    status = 429


class _Cancelled(Exception):
    pass


class _LostLease(Exception):
    pass


class _NotClaimable(Exception):
    pass


_enc = msgspec.json.Encoder(decimal_format="string")
_dec = msgspec.json.Decoder(JobRecord)


def job_id_for(owner: str, idempotency_key: str) -> str:
    return "exp_" + event_id("export", "job", owner, idempotency_key)


def fingerprint(request: ExportRequest) -> str:
    body = msgspec.structs.replace(request, idempotency_key="")
    return hashlib.sha256(codec.encode(body)).hexdigest()[:32]


def artifact_id(job_id: str, filename: str) -> str:
    return "art_" + hashlib.sha256(f"{job_id}/{filename}".encode()).hexdigest()[:32]


def validate(request: ExportRequest) -> None:
    if request.start_ns >= request.end_ns:
        raise InvalidRequest("start_ns must be before end_ns")
    if request.format not in ("csv.gz", "parquet"):
        raise InvalidRequest(f"unknown format {request.format!r}")
    if request.max_rows_per_file < 1:
        raise InvalidRequest("max_rows_per_file must be positive")
    kinds = kinds_of(request.selector)
    if not kinds:
        raise InvalidRequest(f"no event kind matches {request.selector.kind!r}")
    if request.columns is not None:
        if not request.columns:
            raise InvalidRequest("columns must not be empty")
        known = {c for k in kinds for c in kind_columns(k)}
        unknown = [c for c in request.columns if c not in known]
        if unknown:
            raise InvalidRequest(f"unknown column(s) {unknown} for kind(s) {kinds}")


class JobStore:
    """The KV bucket: CAS reads and writes of job records."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv

    async def get(self, job_id: str) -> tuple[int, JobRecord] | None:
        if not _JOB_ID.fullmatch(job_id):
            return None  # not a job id (and not a usable KV key: a hostile request), so no such job
        try:
            entry = await self.kv.get(KEY_PREFIX + job_id)
        except (KeyNotFoundError, NotFoundError):
            return None
        if entry.value is None:
            return None
        return entry.revision, _dec.decode(entry.value)

    async def create(self, record: JobRecord) -> tuple[bool, JobRecord]:
        try:
            await self.kv.create(KEY_PREFIX + record.id, _enc.encode(record))
            return True, record
        except KeyWrongLastSequenceError:
            got = await self.get(record.id)
            if got is None:  # deleted meanwhile: try once more
                await self.kv.put(KEY_PREFIX + record.id, _enc.encode(record))
                return True, record
            return False, got[1]

    async def mutate(self, job_id: str, fn: Callable[[JobRecord], JobRecord | None]) -> JobRecord:
        """Read-modify-write with compare-and-set, retried on conflicts. ``fn`` returns the new
        record (None = no change) or raises to abort."""
        for _ in range(100):
            got = await self.get(job_id)
            if got is None:
                raise NotFound(f"export {job_id} not found")
            rev, record = got
            new = fn(record)
            if new is None:
                return record
            try:
                await self.kv.update(KEY_PREFIX + job_id, _enc.encode(new), last=rev)
                return new
            except KeyWrongLastSequenceError:
                await asyncio.sleep(0.005)
        raise RuntimeError(f"could not update {job_id}: too many concurrent writers")

    async def put(self, record: JobRecord) -> None:
        await self.kv.put(KEY_PREFIX + record.id, _enc.encode(record))

    async def delete(self, job_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.kv.delete(KEY_PREFIX + job_id)

    async def all(self) -> list[JobRecord]:
        try:
            keys = [k for k in await self.kv.keys() if k.startswith(KEY_PREFIX)]
        except (NoKeysError, NotFoundError):
            return []
        out = []
        for key in keys:
            got = await self.get(key[len(KEY_PREFIX):])
            if got is not None:
                out.append(got[1])
        return out


def _now_ns() -> int:
    return time.time_ns()


def _replace_job(record: JobRecord, **changes: Any) -> JobRecord:
    job = msgspec.structs.replace(record.job, updated_ts=_now_ns(), **changes)
    return msgspec.structs.replace(record, job=job)


class JobManager:
    """Accepts jobs, runs them on ``settings.workers`` workers, and answers state queries."""

    def __init__(self, settings: Any, nc: Any, kv: Any, history: HistorySource, artifacts: ArtifactStore,
                 instance: str) -> None:
        self.settings = settings
        self.nc = nc
        self.js = nc.jetstream()
        self.store = JobStore(kv)
        self.kv = kv
        self.history = history
        self.artifacts = artifacts
        self.instance = instance
        self.cache: dict[str, JobRecord] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._running: dict[str, str] = {}  # job id -> worker name
        self.jobs_done = 0
        self.rows_exported = 0

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._watch(), name="export:watch"))
        for i in range(max(0, self.settings.workers)):
            self._tasks.append(asyncio.create_task(self._worker(f"{self.instance}/w{i}"), name=f"export:worker{i}"))
        self._tasks.append(asyncio.create_task(self._maintenance(), name="export:maintenance"))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()

    # --- API ------------------------------------------------------------------------------------
    async def submit(self, request: ExportRequest, *, owner: str = "", datastream_id: int | None = None) -> tuple[JobRecord, bool]:
        """Create a job (or return the one this idempotency key already made)."""
        if not request.idempotency_key:
            raise InvalidRequest("idempotency_key is required")
        job_id = job_id_for(owner, request.idempotency_key)
        fp = fingerprint(request)
        existing = await self.store.get(job_id)
        if existing is not None:
            return self._same(existing[1], fp), False
        validate(request)
        queued = sum(1 for r in self.cache.values() if r.state == "queued")
        if queued >= self.settings.max_queued_jobs:
            raise Overloaded(f"{queued} export jobs are queued; try again later")
        if request.max_rows_per_file == 1_000_000 and self.settings.max_rows_per_file != 1_000_000:
            request = msgspec.structs.replace(request, max_rows_per_file=self.settings.max_rows_per_file)
        now = _now_ns()
        job = ExportJob(job_id=job_id, request=request, state="queued", created_ts=now, updated_ts=now)
        record = JobRecord(job=job, owner=owner, datastream_id=datastream_id, fingerprint=fp)
        created, record = await self.store.create(record)
        if not created:
            return self._same(record, fp), False
        self.cache[job_id] = record
        await self.publish(record)
        self._wake.set()
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
                return _replace_job(msgspec.structs.replace(r, cancel_requested=True, finished_ts=_now_ns()),
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
            await self.artifacts.delete_job(job_id, self._filenames(record))
        return record

    @staticmethod
    def _filenames(record: JobRecord) -> list[str]:
        return [f.filename for f in record.files] + ([record.manifest] if record.manifest else [])

    async def publish(self, record: JobRecord) -> None:
        with contextlib.suppress(Exception):
            await self.js.publish(subjects.export_status(record.id), codec.encode(record.job),
                                  headers=codec.headers_for(record.job), timeout=2.0)

    # --- queue ----------------------------------------------------------------------------------
    async def _watch(self) -> None:
        """Keep a cache of every job (for the queue and the overload check); wake idle workers."""
        while True:
            try:
                watcher = await self.kv.watch(KEY_PREFIX + ">")
                while True:
                    try:
                        entry = await watcher.updates(timeout=30)
                    except asyncio.TimeoutError:
                        continue
                    if entry is None:
                        self._wake.set()
                        continue
                    job_id = entry.key[len(KEY_PREFIX):]
                    if entry.operation in ("DEL", "PURGE") or not entry.value:
                        self.cache.pop(job_id, None)
                        continue
                    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                        record = _dec.decode(entry.value)
                        self.cache[job_id] = record
                        if record.state == "queued":
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnects etc.: watch again
                log.warning("job watcher failed (%r); restarting it", exc)
                await asyncio.sleep(1.0)

    def _candidates(self) -> list[str]:
        now = time.time()
        queued = sorted((r for r in self.cache.values() if r.state == "queued" and not r.deleted),
                        key=lambda r: r.job.created_ts)
        orphans = [r for r in self.cache.values() if r.state == "running" and r.lease_until < now]
        return [r.id for r in queued + orphans if r.id not in self._running]

    async def _worker(self, name: str) -> None:
        while True:
            ran = False
            try:
                for job_id in self._candidates():
                    record = await self._claim(job_id, name)
                    if record is not None:
                        self._running[job_id] = name
                        try:
                            await self._run(record, name)
                        finally:
                            self._running.pop(job_id, None)
                        ran = True
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. NATS unavailable: retry after a pause
                log.warning("export worker %s: %r", name, exc)
                await asyncio.sleep(self.settings.scan_interval_s)
            if not ran:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.settings.scan_interval_s)

    async def _claim(self, job_id: str, name: str) -> JobRecord | None:
        max_attempts = self.settings.max_attempts

        def fn(r: JobRecord) -> JobRecord:
            now = time.time()
            takeover = r.state == "running" and r.lease_until < now
            if r.deleted or not (r.state == "queued" or takeover):
                raise _NotClaimable
            if r.attempts >= max_attempts:
                return _replace_job(msgspec.structs.replace(r, lease_owner=None, finished_ts=_now_ns()), state="failed",
                                    reason=f"gave up after {r.attempts} attempts (the worker kept dying)")
            r = msgspec.structs.replace(r, lease_owner=name, lease_until=now + self.settings.lease_s,
                                        attempts=r.attempts + 1, started_ts=r.started_ts or _now_ns())
            return _replace_job(r, state="running")

        try:
            record = await self.store.mutate(job_id, fn)
        except (_NotClaimable, NotFound):
            return None
        self.cache[job_id] = record
        await self.publish(record)
        if record.state != "running":
            return None
        if record.attempts > 1:
            log.info("export %s resumed by %s (attempt %d, %d file(s) done)", job_id, name, record.attempts, len(record.files))
        return record

    # --- running a job ----------------------------------------------------------------------------
    async def _save(self, job_id: str, name: str, change: Callable[[JobRecord], JobRecord], *,
                    check_cancel: bool = True) -> JobRecord:
        lease_s = self.settings.lease_s

        def fn(r: JobRecord) -> JobRecord:
            if r.lease_owner != name or r.state != "running":
                raise _LostLease
            if check_cancel and r.cancel_requested:
                raise _Cancelled
            return msgspec.structs.replace(change(r), lease_until=time.time() + lease_s)

        record = await self.store.mutate(job_id, fn)
        self.cache[job_id] = record
        return record

    async def _renew(self, job_id: str, name: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.lease_s / 3)
            if stop.is_set():
                return
            try:
                await self._save(job_id, name, lambda r: r, check_cancel=False)
            except _LostLease:
                return
            except Exception as exc:  # noqa: BLE001
                log.warning("lease renewal of %s failed: %r", job_id, exc)

    async def _run(self, record: JobRecord, name: str) -> None:
        job_id = record.id
        stop = asyncio.Event()
        renew = asyncio.create_task(self._renew(job_id, name, stop))
        work = self.settings.work_path / job_id / name.replace("/", "_")
        try:
            await self._execute(record, name, work)
        except _Cancelled:
            log.info("export %s cancelled", job_id)
            with contextlib.suppress(Exception):
                rec = await self.get(job_id)
                if rec is not None:
                    await self.artifacts.delete_job(job_id, self._filenames(rec))
            await self._finish(job_id, name, "cancelled", "cancelled by request")
        except _LostLease:
            log.warning("export %s: lease lost (taken over by another worker); stopping here", job_id)
        except asyncio.CancelledError:
            # shutting down: hand the job back to the queue (it resumes from its checkpoint)
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._release(job_id, name))
            raise
        except Exception as exc:  # noqa: BLE001 - the job fails with the reason
            log.warning("export %s failed: %r", job_id, exc, exc_info=not isinstance(exc, JobError))
            with contextlib.suppress(_LostLease, NotFound):
                await self._finish(job_id, name, "failed", str(exc) or type(exc).__name__)
        finally:
            stop.set()
            renew.cancel()
            with contextlib.suppress(BaseException):
                await renew
            with contextlib.suppress(OSError):
                import shutil

                shutil.rmtree(work, ignore_errors=True)

    async def _release(self, job_id: str, name: str) -> None:
        def fn(r: JobRecord) -> JobRecord | None:
            if r.lease_owner != name or r.state != "running":
                return None
            r = msgspec.structs.replace(r, lease_owner=None, lease_until=0.0, attempts=max(0, r.attempts - 1))
            return _replace_job(r, state="queued")

        record = await self.store.mutate(job_id, fn)
        await self.publish(record)
        log.info("export %s handed back to the queue", job_id)

    async def _finish(self, job_id: str, name: str, state: str, reason: str | None, **changes: Any) -> JobRecord:
        def change(r: JobRecord) -> JobRecord:
            r = msgspec.structs.replace(r, finished_ts=_now_ns(), **{k: v for k, v in changes.items() if k in JobRecord.__struct_fields__})
            job_changes = {k: v for k, v in changes.items() if k in ExportJob.__struct_fields__}
            return _replace_job(r, state=state, reason=reason, **job_changes)

        record = await self._save(job_id, name, change, check_cancel=False)
        # the lease is no longer needed
        record = await self.store.mutate(job_id, lambda r: msgspec.structs.replace(r, lease_owner=None, lease_until=0.0))
        self.cache[job_id] = record
        await self.publish(record)
        return record

    async def _execute(self, record: JobRecord, name: str, work: Path) -> None:
        s = self.settings
        job_id = record.id
        req = record.job.request
        cp = record.checkpoint

        async def coverage() -> list[StreamCoverage]:
            return await self.history.coverage(req.selector, req.start_ns, req.end_ns)

        # 1. completeness: coverage, replays of the holes, wait until they are stored
        cov_task: asyncio.Task[list[StreamCoverage]] | None = None
        if cp.phase == "coverage" and not (req.fill_gaps and s.fill_gaps):
            # nothing to replay: the coverage (for the manifest) is read while the data is exported
            cov_task = asyncio.create_task(coverage())

            def to_export(r: JobRecord) -> JobRecord:
                return msgspec.structs.replace(r, checkpoint=msgspec.structs.replace(r.checkpoint, phase="export"))

            record = await self._save(job_id, name, to_export)
        elif cp.phase == "coverage":
            if req.fill_gaps and s.fill_gaps:
                cov, replays = await fill_gaps(
                    self.nc, coverage, req.start_ns, req.end_ns, job_id=job_id, min_gap_ns=s.min_gap_ns,
                    replay_timeout_s=s.replay_timeout_s, wait_s=s.replay_wait_s)
            else:
                cov, replays = await coverage(), []
            expected = sum(c.rows for c in cov)

            def after_coverage(r: JobRecord) -> JobRecord:
                r = msgspec.structs.replace(r, expected_rows=expected, replays=replays,
                                            checkpoint=msgspec.structs.replace(r.checkpoint, phase="export"))
                return _replace_job(r, coverage=clip_coverage(cov, req.start_ns, req.end_ns))

            record = await self._save(job_id, name, after_coverage)
            await self.publish(record)
        # 2. the data
        try:
            if record.checkpoint.phase == "export":
                record = await self._export(record, name, work, cov_task)
        except BaseException:
            if cov_task is not None:
                cov_task.cancel()
            raise
        # 3. the manifest, with the coverage finally achieved (after the replays: what was exported)
        if cov_task is not None or not record.job.coverage:
            cov = await cov_task if cov_task is not None else await coverage()
            final_cov = clip_coverage(cov, req.start_ns, req.end_ns)
        else:
            final_cov = record.job.coverage
        holes = all_holes(final_cov, req.start_ns, req.end_ns, s.min_gap_ns)
        manifest = self._manifest(record, final_cov, not holes)
        work.mkdir(parents=True, exist_ok=True)
        mpath = work / MANIFEST_NAME
        mpath.write_bytes(msgspec.json.format(_enc.encode(manifest), indent=2))
        await self.artifacts.put(job_id, MANIFEST_NAME, mpath)
        artifacts = [Artifact(id=artifact_id(job_id, f.filename), filename=f.filename, rows=f.rows, bytes=f.bytes,
                              sha256=f.sha256) for f in record.files]
        rows = sum(f.rows for f in record.files)
        await self._finish(job_id, name, "succeeded", None, artifacts=artifacts, coverage=final_cov, rows=rows,
                           bytes=sum(f.bytes for f in record.files), percent=100.0, manifest=MANIFEST_NAME,
                           complete=not holes)
        self.jobs_done += 1
        log.info("export %s succeeded: %d rows in %d file(s)", job_id, rows, len(record.files))

    async def _export(self, record: JobRecord, name: str, work: Path,
                      cov_task: asyncio.Task[list[StreamCoverage]] | None = None) -> JobRecord:
        s = self.settings
        job_id = record.id
        req = record.job.request
        cp = record.checkpoint
        sel = req.selector
        prefix_base = "-".join(name_part(p) for p in (sel.source, sel.venue, sel.symbol))
        writers: dict[str, SplitWriter] = {}
        done_rows = sum(f.rows for f in record.files)
        done_bytes = sum(f.bytes for f in record.files)
        expected = max(record.expected_rows, 1)

        def expected_rows() -> int:
            nonlocal expected
            if cov_task is not None and cov_task.done() and not cov_task.cancelled() and cov_task.exception() is None:
                expected = max(sum(c.rows for c in cov_task.result()), 1)
            return expected

        kind_rows = dict(cp.kind_rows)
        next_index = dict(cp.next_index)
        last_progress = time.monotonic()
        started = time.monotonic()
        rows_this_run = 0
        state = {"record": record}

        def writer_for(kind: str) -> SplitWriter:
            w = writers.get(kind)
            if w is None:
                cols = [c for c in req.columns if c in kind_columns(kind)] if req.columns else None
                w = writers[kind] = SplitWriter(
                    work, req.format, f"{name_part(kind)}-{prefix_base}", kind, cols,
                    req.max_rows_per_file, s.max_bytes_per_file, next_index=next_index.get(kind, 1),
                    parquet_level=s.parquet_compression_level, csv_level=s.csv_compression_level)
            return w

        async def commit(w: SplitWriter, results: list[FileResult]) -> None:
            nonlocal done_rows, done_bytes
            for res in results:
                await self.artifacts.put(job_id, res.filename, w.path_of(res))
                kind_rows[res.kind] = kind_rows.get(res.kind, 0) + res.rows
                next_index[res.kind] = w.index
                done_rows += res.rows
                done_bytes += res.bytes
                pos = Position(res.kind, res.last_key, kind_rows[res.kind])

                def change(r: JobRecord, res: FileResult = res, pos: Position = pos) -> JobRecord:
                    r = msgspec.structs.replace(r, files=[*r.files, res], checkpoint=Checkpoint(
                        phase="export", position=pos, next_index=dict(next_index), kind_rows=dict(kind_rows)))
                    return _replace_job(r, rows=done_rows, bytes=done_bytes,
                                        percent=round(min(99.0, 100.0 * done_rows / expected_rows()), 1))

                state["record"] = await self._save(job_id, name, change)
                await self.publish(state["record"])

        current: str | None = None
        try:
            async for kind, batch in self.history.batches(sel, req.start_ns, req.end_ns, columns=req.columns,
                                                          resume=cp.position, batch_rows=s.read_batch_rows):
                if current is not None and kind != current:
                    w = writers[current]
                    await commit(w, await asyncio.to_thread(w.finish))
                current = kind
                w = writer_for(kind)
                finished = await asyncio.to_thread(w.write, batch)
                rows_this_run += batch.num_rows
                if finished:
                    await commit(w, finished)
                now = time.monotonic()
                if now - last_progress >= s.progress_interval_s:
                    last_progress = now
                    in_flight = done_rows + w._rows

                    def progress(r: JobRecord, n: int = in_flight) -> JobRecord:
                        return _replace_job(r, rows=n, bytes=done_bytes, percent=round(min(99.0, 100.0 * n / expected_rows()), 1))

                    state["record"] = await self._save(job_id, name, progress)
                    await self.publish(state["record"])
                if s.throttle_rows_per_s > 0:
                    ahead = rows_this_run / s.throttle_rows_per_s - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            if current is not None:
                w = writers[current]
                await commit(w, await asyncio.to_thread(w.finish))
        except BaseException:
            for w in writers.values():
                w.abort()
            raise

        def to_finalize(r: JobRecord) -> JobRecord:
            return msgspec.structs.replace(r, checkpoint=msgspec.structs.replace(r.checkpoint, phase="finalize"))

        self.rows_exported += rows_this_run
        return await self._save(job_id, name, to_finalize)

    def _manifest(self, record: JobRecord, coverage: list[StreamCoverage], complete: bool) -> dict[str, Any]:
        req = record.job.request
        kinds = sorted({f.kind for f in record.files})
        return {
            "manifest_version": MANIFEST_VERSION,
            "schema_version": SCHEMA_VERSION,
            "job_id": record.id,
            "created_ts": record.job.created_ts,
            "finished_ts": _now_ns(),
            "selector": msgspec.to_builtins(req.selector),
            "start_ns": req.start_ns,
            "end_ns": req.end_ns,
            "format": req.format,
            "compression": "zstd" if req.format == "parquet" else "gzip",
            "decimals": "exact decimal text of the vendor (strings)",
            "columns": {k: ([c for c in req.columns if c in kind_columns(k)] if req.columns else kind_columns(k))
                        for k in kinds},
            "rows": sum(f.rows for f in record.files),
            "bytes": sum(f.bytes for f in record.files),
            "artifacts": [{"id": artifact_id(record.id, f.filename), **msgspec.to_builtins(f)} for f in record.files],
            "coverage": msgspec.to_builtins(coverage),
            "complete": complete,
            "replays": msgspec.to_builtins(record.replays),
        }

    # --- housekeeping ---------------------------------------------------------------------------
    async def _maintenance(self) -> None:
        """Delete finished jobs (and their artifacts) after the retention period."""
        while True:
            await asyncio.sleep(300)
            with contextlib.suppress(Exception):
                cutoff = _now_ns() - int(self.settings.job_retention_days * 86_400 * 1e9)
                for r in list(self.cache.values()):
                    if r.state in TERMINAL and (r.finished_ts or r.job.updated_ts) < cutoff:
                        await self.artifacts.delete_job(r.id, self._filenames(r))
                        await self.store.delete(r.id)


def _describe(req: ExportRequest) -> str:
    s = req.selector
    return f"{s.kind}.{s.source}.{s.venue}.{s.symbol} [{req.start_ns}, {req.end_ns}) as {req.format}"

