"""Export job records and their store: the KV bucket ``export_jobs``, one entry per job,
``job.<job_id>`` -> :class:`JobRecord` (the contract ExportJob plus lease, checkpoint and artifact
details), every change a compare-and-set on the entry's revision (see jobs.py for how the queue,
the leases and the checkpoints use it).

The job id is derived from (owner, idempotency key), and the job is created with a KV ``create``
(fails if the key exists): the same request sent twice, even to two orchestrators at the same
moment, makes one job.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from marketbus.contracts import codec
from marketbus.contracts.ids import event_id
from marketbus.contracts.jobs import ExportJob, ExportRequest
from marketbus.contracts.streams import EXPORT_JOBS
from marketbus.runtime import kv as kv_snapshot
from marketbus.runtime.tsapi_schemas import parse_content

from .gaps import ReplayOutcome
from .history_source import Position, kind_columns, kinds_of
from .layouts import BUILT_IN_KINDS, MARKETBUS, TICKSUPPLY_LAYOUTS
from .writer import FileResult

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
    # TickSupply API exports: the subscription's spans within [start_ns, end_ns) when the job was
    # created; only events whose ts_event falls in one are exported (None = not clipped)
    ranges: list[tuple[int, int]] | None = None
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


class JobCancelled(Exception):
    """A cancel was requested: the worker stops the job."""


class LeaseLost(Exception):
    """Another worker holds the job now (this one's lease expired): stop without writing."""


class NotClaimable(Exception):
    """The job is not queued, nor running on an expired lease."""


_enc = msgspec.json.Encoder(decimal_format="string")
RECORD_DECODER = msgspec.json.Decoder(JobRecord)


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
    if request.schema in TICKSUPPLY_LAYOUTS and any(k not in BUILT_IN_KINDS for k in kinds):
        raise InvalidRequest(f"the {request.schema} schema is defined for {', '.join(BUILT_IN_KINDS)} only; "
                             f"the selector matches {kinds} (use schema {MARKETBUS!r} or select kind trade)")
    if request.schema == "custom":
        try:
            parse_content(request.schema_spec)
        except ValueError as exc:
            raise InvalidRequest(f"invalid schema_spec: {exc}") from None
    if request.columns is not None:
        if not request.columns:
            raise InvalidRequest("columns must not be empty")
        known = {c for k in kinds for c in kind_columns(k)}
        unknown = [c for c in request.columns if c not in known]
        if unknown:
            raise InvalidRequest(f"unknown column(s) {unknown} for kind(s) {kinds}")


class JobStore:
    """The KV bucket: CAS reads and writes of job records."""

    def __init__(self, kv: Any, js: Any = None) -> None:
        self.kv = kv
        self.js = js  # the JetStream context of ``kv``: :meth:`all` reads the bucket through it

    async def get(self, job_id: str) -> tuple[int, JobRecord] | None:
        if not _JOB_ID.fullmatch(job_id):
            return None  # not a job id (and not a usable KV key: a hostile request), so no such job
        try:
            entry = await self.kv.get(KEY_PREFIX + job_id)
        except (KeyNotFoundError, NotFoundError):
            return None
        if entry.value is None:
            return None
        return entry.revision, RECORD_DECODER.decode(entry.value)

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
        """Every job record (a complete read: not nats-py's ``kv.keys()``, see marketbus.runtime.kv)."""
        if self.js is None:
            raise TypeError("JobStore.all needs the JetStream context: JobStore(kv, js)")
        entries = await kv_snapshot.latest(self.js, EXPORT_JOBS.name, KEY_PREFIX + ">")
        return [RECORD_DECODER.decode(entry.value) for entry in entries if entry.value]


def now_ns() -> int:
    return time.time_ns()


def replace_job(record: JobRecord, **changes: Any) -> JobRecord:
    job = msgspec.structs.replace(record.job, updated_ts=now_ns(), **changes)
    return msgspec.structs.replace(record, job=job)
