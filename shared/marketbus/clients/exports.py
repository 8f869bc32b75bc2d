"""The client half of export jobs: create, get, list, cancel and follow them over NATS, and
download their files from the export HTTP API.

Request/reply (queue group of the export orchestrators):

- ``export.create``: :class:`ExportRequest` -> :class:`ExportJob` (idempotent per ``idempotency_key``)
- ``export.get`` / ``export.cancel``: ``{"job_id": ...}`` -> :class:`ExportJob`
- ``export.list``: ``{}`` -> ``{"jobs": [ExportJob, ...]}``
- any of them may answer an :class:`~marketbus.contracts.errors.ErrorReply`
  (``not_found``, ``bad_request``, ``conflict``, ``overloaded``): :class:`RequestError` is raised.

Progress: :class:`ExportJob` events on ``export.status.<job_id>`` (:meth:`ExportClient.follow`).
Files: the TickSupply-shaped HTTP API (default ``http://127.0.0.1:8710``, key in ``X-Api-Key``)
lists a job's artifacts with signed URLs; :meth:`ExportClient.download` fetches them and checks
their size and sha256.

    exports = ExportClient(nc)
    job = await exports.create(ExportRequest(idempotency_key="k1", selector=..., start_ns=..., end_ns=...))
    job = await exports.wait(job.job_id)
    paths = await exports.download(job.job_id, Path("out"))
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import msgspec

from marketbus.contracts import codec, subjects
from marketbus.contracts import errors as codes
from marketbus.contracts.jobs import ExportJob, ExportRequest

from .errors import RequestError, as_error_reply, decode_reply, request

SERVER = "export orchestrator"
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
DEFAULT_API_URL = "http://127.0.0.1:8710"
DEV_API_KEY = "mb_export_dev_key"  # the key `marketbus up` configures (not a secret)

ProgressCallback = Callable[[str, int, int | None], None]
"""``(filename, bytes received so far, total bytes or None)``, called as a download advances."""


class _JobList(msgspec.Struct):
    jobs: list[msgspec.Raw]


class ExportClient:
    """Export jobs over one NATS connection; downloads over HTTP (``api_url``, ``api_key``; a
    client used only to download may have ``nc=None``)."""

    def __init__(self, nc: Any, *, timeout: float = 10.0, api_url: str = DEFAULT_API_URL,
                 api_key: str = DEV_API_KEY) -> None:
        self.nc = nc
        self.timeout = timeout
        self.api_url = api_url.rstrip("/")
        self.api_key = api_key

    async def _job_request(self, subject: str, payload: bytes) -> ExportJob:
        data = await request(self.nc, subject, payload, timeout=self.timeout, what=SERVER)
        return decode_reply(data, ExportJob)

    async def create(self, req: ExportRequest) -> ExportJob:
        """Create a job (or get the one already created with the same idempotency key)."""
        return await self._job_request(subjects.EXPORT_CREATE, codec.encode(req))

    async def get(self, job_id: str) -> ExportJob:
        return await self._job_request(subjects.EXPORT_GET, msgspec.json.encode({"job_id": job_id}))

    async def cancel(self, job_id: str) -> ExportJob:
        """Cancel a queued or running job; returns it in its new state."""
        return await self._job_request(subjects.EXPORT_CANCEL, msgspec.json.encode({"job_id": job_id}))

    async def list(self) -> builtins.list[ExportJob]:
        """Every job the orchestrators know, oldest first."""
        data = await request(self.nc, subjects.EXPORT_LIST, b"{}", timeout=self.timeout, what=SERVER)
        error = as_error_reply(data)
        if error is not None:
            raise RequestError.from_reply(error)
        try:
            jobs = msgspec.json.decode(data, type=_JobList).jobs
            return [codec.decode_as(j, ExportJob) for j in jobs]
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise RequestError(codes.INTERNAL, f"unexpected reply to {subjects.EXPORT_LIST}: {exc}") from None

    async def follow(self, job_id: str, *, poll_s: float = 2.0) -> AsyncGenerator[ExportJob, None]:
        """The job as it changes (progress events, and a poll every ``poll_s`` in case events are
        missed), starting with its current state and ending with its terminal state."""
        latest: ExportJob | None = None
        changed = asyncio.Event()

        def newer(job: ExportJob) -> bool:
            return latest is None or job.updated_ts >= latest.updated_ts

        async def on_status(msg: Any) -> None:
            nonlocal latest
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                job = codec.decode_as(msg.data, ExportJob)
                if newer(job):
                    latest = job
                    changed.set()

        sub = await self.nc.subscribe(subjects.export_status(job_id), cb=on_status)
        try:
            first = await self.get(job_id)
            if newer(first):
                latest = first
            while True:
                assert latest is not None
                yield latest
                if latest.state in TERMINAL_STATES:
                    return
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), timeout=poll_s)
                except TimeoutError:
                    polled = await self.get(job_id)
                    if newer(polled):
                        latest = polled
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def wait(self, job_id: str, *, timeout: float | None = None,
                   on_update: Callable[[ExportJob], None] | None = None) -> ExportJob:
        """The job once it has ended (succeeded, failed or cancelled); RequestError ``timeout``
        after ``timeout`` seconds (None = never)."""
        deadline = time.monotonic() + timeout if timeout else None
        updates = self.follow(job_id)
        try:
            while True:
                remaining = deadline - time.monotonic() if deadline else None
                try:
                    job = await asyncio.wait_for(anext(updates), remaining)
                except TimeoutError:
                    raise RequestError(codes.TIMEOUT, f"export {job_id} has not ended after {timeout:g}s") from None
                if on_update is not None:
                    on_update(job)
                if job.state in TERMINAL_STATES:
                    return job
        finally:
            await updates.aclose()

    async def download(self, job_id: str, out_dir: Path, *, manifest: bool = True,
                       on_progress: ProgressCallback | None = None) -> builtins.list[Path]:
        """Download a succeeded job's files into ``out_dir``, each checked against its size and
        sha256 (a file that fails is not kept). Returns the paths written; RequestError when the
        API refuses (``not_found``...) or a file cannot be fetched or verified (``internal``)."""
        import httpx

        out_dir.mkdir(parents=True, exist_ok=True)
        written: builtins.list[Path] = []
        failed: builtins.list[str] = []
        async with httpx.AsyncClient(base_url=self.api_url, timeout=60) as client:
            try:
                resp = await client.get(f"/v1/exports/{job_id}/download", headers={"X-Api-Key": self.api_key})
            except httpx.HTTPError as exc:
                raise RequestError(
                    codes.NO_RESPONDERS, f"cannot reach the export API at {self.api_url}: {exc!r}"
                ) from None
            if resp.status_code != 200:
                raise _http_error(resp, job_id)
            body = resp.json()
            items = list(body["artifacts"])
            if manifest and body.get("manifest"):
                items.append({**body["manifest"], "bytes": None, "sha256": None})
            for art in items:
                dest = out_dir / Path(art["filename"]).name
                problem = await _fetch(client, art, dest, on_progress)
                if problem:
                    failed.append(f"{art['filename']}: {problem}")
                else:
                    written.append(dest)
        if failed:
            raise RequestError(codes.INTERNAL, f"{len(failed)} file(s) of {job_id} failed: " + "; ".join(failed),
                               {"written": ",".join(str(p) for p in written)})
        return written


async def _fetch(client: Any, art: dict[str, Any], dest: Path, on_progress: ProgressCallback | None) -> str | None:
    """Stream one artifact to ``dest`` (through a ``.part`` file); the problem, or None."""
    digest = hashlib.sha256()
    tmp = dest.with_name(dest.name + ".part")
    size = 0
    async with client.stream("GET", art["url"]) as r:
        if r.status_code != 200:
            return f"HTTP {r.status_code}"
        with open(tmp, "wb") as fh:
            async for chunk in r.aiter_bytes(1 << 20):
                fh.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if on_progress is not None:
                    on_progress(art["filename"], size, art.get("bytes"))
    if art.get("sha256") and (digest.hexdigest() != art["sha256"] or size != art["bytes"]):
        tmp.unlink(missing_ok=True)
        return "checksum mismatch"
    tmp.replace(dest)
    return None


def _http_error(resp: Any, job_id: str) -> RequestError:
    try:
        err = resp.json()["error"]
        message, code = err["message"], err.get("code")
    except Exception:
        message, code = resp.text[:200], None
    if resp.status_code == 401:
        return RequestError(codes.BAD_REQUEST, f"the export API refused the key ({message})")
    mapped = codes.code_for_http_status(resp.status_code)
    return RequestError(mapped, f"cannot download {job_id}: {message}", {"http_status": str(resp.status_code),
                                                                          "api_code": str(code)})
