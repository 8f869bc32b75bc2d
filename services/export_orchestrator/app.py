"""The export orchestrator: export jobs from history to downloadable files, filling gaps from
the vendors first.

NATS (request/reply, queue group ``export_orchestrator``):

- ``export.create``: :class:`ExportRequest` -> :class:`ExportJob` (idempotent per key)
- ``export.get``: ``{"job_id": ...}`` (or the bare id) -> :class:`ExportJob`
- ``export.cancel``: ``{"job_id": ...}`` -> :class:`ExportJob`
- ``export.list``: ``{}`` -> ``{"jobs": [ExportJob...]}``
- errors: the contracts' ``ErrorReply`` (``not_found``, ``bad_request``, ``conflict``, ``overloaded``)

Progress: :class:`ExportJob` events on ``export.status.<job_id>`` (stream EXPORTS).
HTTP: the TickSupply-shaped API (http_api.py) on ``api_port`` (8710).
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import msgspec
from nats.js.errors import KeyNotFoundError, NotFoundError

from marketbus.clients.feeds import FeedClient
from marketbus.contracts import codec, subjects
from marketbus.contracts.errors import NOT_FOUND, ErrorReply, code_for_http_status
from marketbus.contracts.jobs import ExportRequest
from marketbus.contracts.streams import EXPORT_JOBS, ensure_bucket
from marketbus.runtime.http import AsgiServer
from marketbus.runtime.logging import register_secret
from marketbus.runtime.service import Service

from .artifacts import ArtifactStore, make_store
from .export_schemas import SchemaStore
from .history_source import HistorySource
from .http_api import ExportApi
from .jobs import JobError, JobManager
from .settings import ExportSettings
from .signing import UrlSigner, load_signing_key
from .subscriptions import Subscriptions

QUEUE = "export_orchestrator"
SECRET_KEY = "config.signing_secret"


class JobRef(msgspec.Struct):
    job_id: str


_ref_dec = msgspec.json.Decoder(JobRef)


def parse_ref(data: bytes) -> str:
    text = data.strip()
    if text.startswith(b"{"):
        try:
            return _ref_dec.decode(text).job_id
        except RecursionError:  # msgspec skipping an unknown field nested too deep: not a DecodeError
            raise msgspec.DecodeError("JSON nested too deep") from None
    return text.decode().strip('"')


async def _raw(msg: Any) -> Any:
    return msg.body


async def _kv_has(kv: Any, key: str) -> bool:
    try:
        await kv.get(key)
        return True
    except (KeyNotFoundError, NotFoundError):
        return False


def _error(exc: Exception) -> bytes:
    status = exc.status if isinstance(exc, JobError) else 400
    return codec.encode(ErrorReply(code=code_for_http_status(status), message=str(exc) or type(exc).__name__))


class ExportOrchestrator(Service):
    name: ClassVar[str] = "export_orchestrator"
    settings_cls: ClassVar[type[ExportSettings]] = ExportSettings
    settings: ExportSettings

    def setup(self) -> None:
        self.jobs: JobManager | None = None
        self.history: HistorySource | None = None
        self.artifacts: ArtifactStore | None = None
        self.signer: UrlSigner | None = None
        self.api: AsgiServer | None = None
        for key in self.settings.api_key_list():
            register_secret(key)

        @self.broker.subscriber(subjects.EXPORT_CREATE, queue=QUEUE, decoder=_raw)
        async def on_create(body: bytes) -> bytes:
            try:
                request = codec.decode_as(body, ExportRequest)
                record, _ = await self.manager.submit(request)
                return codec.encode(record.job)
            except (msgspec.DecodeError, msgspec.ValidationError, JobError) as exc:
                return _error(exc)

        @self.broker.subscriber(subjects.EXPORT_GET, queue=QUEUE, decoder=_raw)
        async def on_get(body: bytes) -> bytes:
            try:
                job_id = parse_ref(body)
                record = await self.manager.get(job_id)
                if record is None:
                    return codec.encode(ErrorReply(code=NOT_FOUND, message=f"export {job_id} not found"))
                return codec.encode(record.job)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
                return _error(exc)

        @self.broker.subscriber(subjects.EXPORT_CANCEL, queue=QUEUE, decoder=_raw)
        async def on_cancel(body: bytes) -> bytes:
            try:
                record = await self.manager.cancel(parse_ref(body))
                return codec.encode(record.job)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, JobError) as exc:
                return _error(exc)

        @self.broker.subscriber(subjects.EXPORT_LIST, queue=QUEUE, decoder=_raw)
        async def on_list(body: bytes) -> bytes:
            records = sorted(await self.manager.list(), key=lambda r: r.job.created_ts)
            return b'{"jobs":[' + b",".join(codec.encode(r.job) for r in records) + b"]}"

    @property
    def manager(self) -> JobManager:
        assert self.jobs is not None, "not started"
        return self.jobs

    async def _signing_secret(self, kv: Any) -> bytes:
        s = self.settings
        key = load_signing_key(s.signing_secret.get(), s.data_dir, s.signing_key_file)
        register_secret(key.decode())
        # earlier versions kept the key in the job bucket, readable on the bus: remove it for good
        with contextlib.suppress(Exception):
            if await _kv_has(kv, SECRET_KEY):
                await kv.purge(SECRET_KEY)
        return key

    async def on_start(self) -> None:
        s = self.settings
        kv = await ensure_bucket(self.js, EXPORT_JOBS, s.stream_replicas)
        self.signer = UrlSigner(await self._signing_secret(kv), s.url_ttl_s)
        self.artifacts = make_store(s, self.js)
        await self.artifacts.open()
        self.history = HistorySource(s, self.nc)
        await self.history.open()
        self.jobs = JobManager(s, self.nc, kv, self.history, self.artifacts, self.instance)
        await self.jobs.start()
        if s.api_port >= 0:
            api = ExportApi(s, self.jobs, self.history, self.artifacts, self.signer, SchemaStore(kv, self.js),
                            Subscriptions(FeedClient(self.nc, by="export_api"), self.history, kv))
            self.api = AsgiServer(api.app(), s.api_host, s.api_port, lifespan="off")
            await self.api.start()
            self.log.info("export API on %s/v1", self.api.url)

    async def on_stop(self) -> None:
        if self.api is not None:
            await self.api.stop()
        if self.jobs is not None:
            await self.jobs.stop()
        if self.history is not None:
            await self.history.close()
        if self.artifacts is not None:
            await self.artifacts.close()

    @property
    def api_url(self) -> str | None:
        return self.api.url if self.api else None

    def health(self) -> dict[str, Any]:
        jobs = self.jobs
        return {
            "api_url": self.api_url,
            "history": self.history.mode if self.history else None,
            "artifact_store": self.artifacts.kind if self.artifacts else None,
            "running_jobs": sorted(jobs.running) if jobs else [],
            "jobs_done": jobs.jobs_done if jobs else 0,
        }
