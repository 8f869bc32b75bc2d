"""Running one claimed job: the lease, the three phases, the checkpoints and the artifacts.

- the worker renews its lease while it works; every write it makes checks that it still holds
  the lease (else it stops: the job was taken over) and whether a cancel was requested;
- 1. coverage (and replays of the holes, when asked), 2. the data, written to files of at most
  ``max_rows_per_file`` rows, each stored as an artifact, 3. the manifest;
- after every finished artifact the worker checkpoints (files done, position in the history
  order), so a job resumes where it was after a restart or a takeover; a graceful stop hands the
  job back to the queue at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from marketbus.contracts.base import SCHEMA_VERSION
from marketbus.contracts.jobs import Artifact, ExportJob, StreamCoverage

from .artifacts import ArtifactStore
from .gaps import all_holes, clip_coverage, fill_gaps
from .history_source import HistorySource, Position, kind_columns
from .job_records import (
    Checkpoint,
    JobCancelled,
    JobError,
    JobRecord,
    JobStore,
    LeaseLost,
    NotFound,
    artifact_id,
    now_ns,
    replace_job,
)
from .job_status import JobStatus
from .layouts import MARKETBUS, layout_columns, layout_for
from .writer import MANIFEST_NAME, MANIFEST_VERSION, FileResult, SplitWriter, name_part

log = logging.getLogger("marketbus.export_orchestrator.jobs")
_enc = msgspec.json.Encoder(decimal_format="string")


NO_DATA = "no data collected for this datastream in the requested time range"


def exact_decimals(request: Any) -> bool:
    """Does the export write decimals as Parquet ``decimal`` columns? Parquet exports of
    marketbus's own columns do (exact values, typed as a data engineer expects, and not rendered
    to text: the slowest part of a read); CSV and the TickSupply layouts write text."""
    return bool(request.format == "parquet" and request.schema == MARKETBUS)


def clip_to_ranges(batch: pa.RecordBatch, ranges: list[tuple[int, int]]) -> pa.RecordBatch:
    """The rows whose ``ts_event`` falls in one of the ``[from, to)`` ranges (a subscription's
    spans: TickSupply exports only what was collected while the subscription was active)."""
    if "ts_event" not in batch.schema.names:
        return batch
    ts = batch.column("ts_event")
    mask = None
    for lo, hi in ranges:
        inside = pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi))
        mask = inside if mask is None else pc.or_(mask, inside)
    if mask is None:
        return batch.slice(0, 0)
    return batch.filter(mask)


def filenames_of(record: JobRecord) -> list[str]:
    """The artifacts a job stored (its files and manifest): what deleting the job deletes."""
    return [f.filename for f in record.files] + ([record.manifest] if record.manifest else [])


class JobRunner:
    def __init__(self, settings: Any, nc: Any, store: JobStore, cache: dict[str, JobRecord], history: HistorySource,
                 artifacts: ArtifactStore, status: JobStatus) -> None:
        self.settings = settings
        self.nc = nc
        self.store = store
        self.cache = cache  # the queue's cache, kept current with what this worker writes
        self.history = history
        self.artifacts = artifacts
        self.status = status
        self.jobs_done = 0
        self.rows_exported = 0

    async def run(self, record: JobRecord, name: str) -> None:
        job_id = record.id
        stop = asyncio.Event()
        renew = asyncio.create_task(self._renew(job_id, name, stop))
        work = self.settings.work_path / job_id / name.replace("/", "_")
        try:
            await self._execute(record, name, work)
        except JobCancelled:
            log.info("export %s cancelled", job_id)
            with contextlib.suppress(Exception):
                got = await self.store.get(job_id)
                if got is not None:
                    await self.artifacts.delete_job(job_id, filenames_of(got[1]))
            await self._finish(job_id, name, "cancelled", "cancelled by request")
        except LeaseLost:
            log.warning("export %s: lease lost (taken over by another worker); stopping here", job_id)
        except asyncio.CancelledError:
            # shutting down: hand the job back to the queue (it resumes from its checkpoint)
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._release(job_id, name))
            raise
        except Exception as exc:
            log.warning("export %s failed: %r", job_id, exc, exc_info=not isinstance(exc, JobError))
            with contextlib.suppress(LeaseLost, NotFound):
                await self._finish(job_id, name, "failed", str(exc) or type(exc).__name__)
        finally:
            stop.set()
            renew.cancel()
            with contextlib.suppress(BaseException):
                await renew
            with contextlib.suppress(OSError):
                shutil.rmtree(work, ignore_errors=True)

    async def _save(self, job_id: str, name: str, change: Callable[[JobRecord], JobRecord], *,
                    check_cancel: bool = True) -> JobRecord:
        lease_s = self.settings.lease_s

        def fn(r: JobRecord) -> JobRecord:
            if r.lease_owner != name or r.state != "running":
                raise LeaseLost
            if check_cancel and r.cancel_requested:
                raise JobCancelled
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
            except LeaseLost:
                return
            except Exception as exc:
                log.warning("lease renewal of %s failed: %r", job_id, exc)

    async def _release(self, job_id: str, name: str) -> None:
        def fn(r: JobRecord) -> JobRecord | None:
            if r.lease_owner != name or r.state != "running":
                return None
            r = msgspec.structs.replace(r, lease_owner=None, lease_until=0.0, attempts=max(0, r.attempts - 1))
            return replace_job(r, state="queued")

        record = await self.store.mutate(job_id, fn)
        await self.status.publish(record)
        log.info("export %s handed back to the queue", job_id)

    async def _finish(self, job_id: str, name: str, state: str, reason: str | None, **changes: Any) -> JobRecord:
        def change(r: JobRecord) -> JobRecord:
            r = msgspec.structs.replace(
                r, finished_ts=now_ns(), **{k: v for k, v in changes.items() if k in JobRecord.__struct_fields__}
            )
            job_changes = {k: v for k, v in changes.items() if k in ExportJob.__struct_fields__}
            return replace_job(r, state=state, reason=reason, **job_changes)

        record = await self._save(job_id, name, change, check_cancel=False)
        # the lease is no longer needed
        record = await self.store.mutate(
            job_id, lambda r: msgspec.structs.replace(r, lease_owner=None, lease_until=0.0)
        )
        self.cache[job_id] = record
        await self.status.publish(record)
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
                return replace_job(r, coverage=clip_coverage(cov, req.start_ns, req.end_ns))

            record = await self._save(job_id, name, after_coverage)
            await self.status.publish(record)
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
                    parquet_level=s.parquet_compression_level, csv_level=s.csv_compression_level,
                    layout=layout_for(req.schema, req.schema_spec, kind, sel.venue))
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
                    return replace_job(r, rows=done_rows, bytes=done_bytes,  # noqa: B023 (called within this iteration)
                                        percent=round(min(99.0, 100.0 * done_rows / expected_rows()), 1))  # noqa: B023 (called within this iteration)

                state["record"] = await self._save(job_id, name, change)
                await self.status.publish(state["record"])

        current: str | None = None
        try:
            async for kind, batch in self.history.batches(sel, req.start_ns, req.end_ns, columns=req.columns,
                                                          resume=cp.position, batch_rows=s.read_batch_rows,
                                                          exact_decimals=exact_decimals(req)):
                if record.ranges is not None:
                    batch = clip_to_ranges(batch, record.ranges)
                    if batch.num_rows == 0:
                        continue
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
                        return replace_job(
                            r, rows=n, bytes=done_bytes, percent=round(min(99.0, 100.0 * n / expected_rows()), 1)
                        )

                    state["record"] = await self._save(job_id, name, progress)
                    await self.status.publish(state["record"])
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

        if record.ranges is not None and done_rows == 0:  # as TickSupply: nothing collected, nothing to export
            raise JobError(NO_DATA)

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
            "finished_ts": now_ns(),
            "selector": msgspec.to_builtins(req.selector),
            "start_ns": req.start_ns,
            "end_ns": req.end_ns,
            "format": req.format,
            "compression": "zstd" if req.format == "parquet" else "gzip",
            "decimals": ("exact decimal(38, 18) columns" if exact_decimals(req) and self.history.mode == "iceberg"
                         else "exact decimal text of the vendor (strings)"),
            "schema": req.schema,
            "columns": {k: layout_columns(req, k) for k in kinds},
            "rows": sum(f.rows for f in record.files),
            "bytes": sum(f.bytes for f in record.files),
            "artifacts": [{"id": artifact_id(record.id, f.filename), **msgspec.to_builtins(f)} for f in record.files],
            "coverage": msgspec.to_builtins(coverage),
            "complete": complete,
            "replays": msgspec.to_builtins(record.replays),
        }
