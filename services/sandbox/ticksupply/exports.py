"""Export jobs: the queued -> running -> succeeded|failed|canceled machine, artifacts and signed URLs.

An export covers ``[start_time, end_time)`` intersected with the spans of the account's current
subscription, clipped at the moment the export was created (data not yet collected is not in it).
Artifacts are gzipped CSV (header row first, ``\\n`` line ends), one per UTC hour that holds at
least one row, named ``<exchange>-<instrument>-<stream_type>-<YYYY-MM-DD>T<HH>.csv.gz``. Columns
follow the export's schema (see :mod:`.schemas`; the default ``raw`` trade schema is
``exchange_ts_ns,collection_ts_ns,trade_id,price,quantity,side``). Bytes are deterministic
(gzip mtime 0), so ``bytes`` and a re-download are stable.

Artifacts are served by the sandbox at S3-style presigned URLs
``/artifacts/<art_id>/<filename>?X-Amz-Algorithm=...&X-Amz-Date=...&X-Amz-Expires=...&X-Amz-Signature=...``
(HMAC-SHA256, no API key); expired or tampered URLs get S3's 403 XML errors.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import hashlib
import hmac
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from .api import iso, now_ns
from .catalog import Datastream
from .schemas import CompiledSchema

HOUR_NS = 3_600_000_000_000


@dataclass
class Artifact:
    id: str
    filename: str
    data: bytes
    rows: int


@dataclass
class ExportJob:
    id: str
    seq: int
    account: str
    datastream: Datastream
    start_ns: int
    end_ns: int
    ranges: list[tuple[int, int]]
    schema: CompiledSchema
    created_ns: int
    status: str = "queued"
    reason: str | None = None
    started_ns: int | None = None
    finished_ns: int | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def wire(self) -> dict[str, Any]:
        return {"id": self.id, "datastream_id": self.datastream.datastream_id, "start_time": self.start_ns,
                "end_time": self.end_ns, "format": "csv", "status": self.status, "reason": self.reason,
                "created_at": iso(self.created_ns),
                "started_at": None if self.started_ns is None else iso(self.started_ns),
                "finished_at": None if self.finished_ns is None else iso(self.finished_ns)}

    @property
    def terminal(self) -> bool:
        return self.status in ("succeeded", "failed", "canceled", "deleted")


# --- rows and partitions -----------------------------------------------------------------------
def hour_slices(ranges: list[tuple[int, int]]) -> Iterator[tuple[int, int, int]]:
    """(hour start, from, to) pieces of the ranges, split on UTC hour boundaries."""
    for lo, hi in ranges:
        cursor = lo
        while cursor < hi:
            hour = cursor - cursor % HOUR_NS
            end = min(hi, hour + HOUR_NS)
            yield hour, cursor, end
            cursor = end


def export_rows(ds: Datastream, schema: CompiledSchema, ranges: list[tuple[int, int]]) -> Iterator[list[str]]:
    """Ground truth: every CSV data row an export over ``ranges`` contains, in file order."""
    for _hour, lo, hi in hour_slices(ranges):
        yield from schema.rows(ds, lo, hi)


def estimate_rows(ds: Datastream, ranges: list[tuple[int, int]]) -> int:
    per_tick = 1 if ds.stream_type == "trade" else 2
    tape = ds.tape
    return sum(tape.index_at_or_after(hi) - tape.index_at_or_after(lo) for lo, hi in ranges) * per_tick


def build_artifacts(job: ExportJob) -> list[Artifact]:
    ds = job.datastream
    by_hour: dict[int, list[tuple[int, int]]] = {}
    for hour, lo, hi in hour_slices(job.ranges):
        by_hour.setdefault(hour, []).append((lo, hi))
    artifacts = []
    for hour, pieces in by_hour.items():
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(job.schema.header)
        rows = 0
        for lo, hi in pieces:
            for row in job.schema.rows(ds, lo, hi):
                writer.writerow(row)
                rows += 1
        if rows == 0:
            continue
        stamp = datetime.fromtimestamp(hour // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H")
        art_id = "art_" + hashlib.sha256(f"{job.id}:{hour}".encode()).hexdigest()[:32]
        filename = f"{ds.exchange}-{ds.symbol}-{ds.stream_type}-{stamp}.csv.gz"
        data = gzip.compress(buf.getvalue().encode(), compresslevel=6, mtime=0)
        artifacts.append(Artifact(art_id, filename, data, rows))
    return artifacts


# --- presigned URLs ----------------------------------------------------------------------------
class UrlSigner:
    def __init__(self, secret: str, ttl_s: int) -> None:
        self.secret = secret.encode()
        self.ttl_s = ttl_s

    def _signature(self, path: str, date: str, expires: str) -> str:
        return hmac.new(self.secret, f"GET\n{path}\n{date}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, base_url: str, art: Artifact) -> str:
        path = f"/artifacts/{art.id}/{art.filename}"
        date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        expires = str(self.ttl_s)
        query = urlencode({"X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Date": date, "X-Amz-Expires": expires,
                           "X-Amz-SignedHeaders": "host", "X-Amz-Signature": self._signature(path, date, expires)})
        return f"{base_url.rstrip('/')}{path}?{query}"

    def verify(self, path: str, params: dict[str, str]) -> str | None:
        """None if valid, else the S3 error code (``AccessDenied`` for expired, ...)."""
        date, expires, sig = (
            params.get("X-Amz-Date", ""),
            params.get("X-Amz-Expires", ""),
            params.get("X-Amz-Signature", ""),
        )
        if not (date and expires.isdigit() and sig):
            return "AccessDenied"
        if not hmac.compare_digest(sig, self._signature(path, date, expires)):
            return "SignatureDoesNotMatch"
        try:
            signed_at = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            return "AccessDenied"
        if time.time() >= signed_at + int(expires):
            return "AccessDenied"
        return None


# --- the job runner ----------------------------------------------------------------------------
@dataclass
class ExportFaults:
    """TickSupply-specific fault switches (``POST /_sandbox/ticksupply/faults``)."""

    fail_next_exports: int = 0
    fail_reason: str = "internal error while reading collected data"
    slow_exports_s: float = 0.0  # extra running time for every export


@dataclass
class ExportTiming:
    queued_s: float
    running_s: float
    speed: float
    max_rows: int


async def run_export(job: ExportJob, timing: ExportTiming, faults: ExportFaults) -> None:
    speed = timing.speed if timing.speed > 0 else 1.0
    await asyncio.sleep(timing.queued_s / speed)
    if job.status != "queued":
        return
    job.status, job.started_ns = "running", now_ns()
    started = time.monotonic()
    failure: str | None = None
    artifacts: list[Artifact] = []
    if estimate_rows(job.datastream, job.ranges) > timing.max_rows:
        failure = f"export too large: more than {timing.max_rows} rows; split the time range"
    else:
        artifacts = await asyncio.to_thread(build_artifacts, job)
        if not artifacts:
            failure = "no data collected for this datastream in the requested time range"
    remaining = timing.running_s / speed + faults.slow_exports_s - (time.monotonic() - started)
    if remaining > 0:
        await asyncio.sleep(remaining)
    if job.status != "running":  # canceled (or deleted) meanwhile
        return
    if failure is None and faults.fail_next_exports > 0:
        faults.fail_next_exports -= 1
        failure = faults.fail_reason
    job.finished_ns = now_ns()
    if failure is not None:
        job.status, job.reason = "failed", failure
    else:
        job.status, job.artifacts = "succeeded", artifacts
