"""Durable artifact storage: a local directory (default), a NATS object store, or S3-compatible
storage (AWS S3, MinIO...). Objects are addressed by ``(job_id, filename)`` only; both are single
path segments checked by :func:`signing.safe_name`, and the local store also checks that the
resolved path stays inside its root, so no path outside the store is ever read or written.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .signing import safe_name

CHUNK = 1 << 20


class ArtifactNotFound(LookupError):
    pass


def _check(job_id: str, filename: str) -> None:
    if not (safe_name(job_id) and safe_name(filename)):
        raise ArtifactNotFound(f"invalid artifact name {job_id!r}/{filename!r}")


class ArtifactStore(abc.ABC):
    kind = "?"

    async def open(self) -> None:  # noqa: B027
        pass

    async def close(self) -> None:  # noqa: B027
        pass

    @abc.abstractmethod
    async def put(self, job_id: str, filename: str, src: Path) -> None:
        """Store a finished local file durably (atomically: readers never see half a file)."""

    @abc.abstractmethod
    async def size(self, job_id: str, filename: str) -> int:
        """Size in bytes; raises ArtifactNotFound."""

    @abc.abstractmethod
    def read(self, job_id: str, filename: str) -> AsyncIterator[bytes]:
        """The object's bytes in chunks; raises ArtifactNotFound."""

    @abc.abstractmethod
    async def delete_job(self, job_id: str, filenames: list[str]) -> None:
        """Delete the artifacts of a job (missing ones are ignored)."""

    async def read_all(self, job_id: str, filename: str) -> bytes:
        return b"".join([chunk async for chunk in self.read(job_id, filename)])


class LocalArtifactStore(ArtifactStore):
    kind = "local"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    async def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, job_id: str, filename: str) -> Path:
        _check(job_id, filename)
        path = (self.root / job_id / filename).resolve()
        if not path.is_relative_to(self.root) or path.parent.parent != self.root:
            raise ArtifactNotFound(f"{job_id}/{filename} is outside the artifact store")
        return path

    def _put_sync(self, dst: Path, src: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.parent / f".{dst.name}.{os.getpid()}.tmp"
        try:
            os.replace(src, tmp)  # same filesystem: a rename
        except OSError:
            shutil.copyfile(src, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
        with contextlib.suppress(OSError):
            fd = os.open(dst.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    async def put(self, job_id: str, filename: str, src: Path) -> None:
        await asyncio.to_thread(self._put_sync, self._path(job_id, filename), src)

    async def size(self, job_id: str, filename: str) -> int:
        path = self._path(job_id, filename)
        try:
            if not path.is_file() or path.is_symlink():
                raise FileNotFoundError
            return path.stat().st_size
        except OSError:
            raise ArtifactNotFound(f"{job_id}/{filename}") from None

    async def read(self, job_id: str, filename: str) -> AsyncIterator[bytes]:
        path = self._path(job_id, filename)
        if not path.is_file() or path.is_symlink():
            raise ArtifactNotFound(f"{job_id}/{filename}")
        with open(path, "rb") as fh:
            while True:
                chunk = await asyncio.to_thread(fh.read, CHUNK)
                if not chunk:
                    return
                yield chunk

    async def delete_job(self, job_id: str, filenames: list[str]) -> None:
        for name in filenames:
            with contextlib.suppress(ArtifactNotFound, OSError):
                self._path(job_id, name).unlink()
        with contextlib.suppress(OSError, ArtifactNotFound):
            _check(job_id, "x")
            (self.root / job_id).rmdir()


class NatsArtifactStore(ArtifactStore):
    """A JetStream object store bucket (replicated like the rest of the bus)."""

    kind = "nats"

    def __init__(self, js: Any, bucket: str, replicas: int = 1) -> None:
        self.js = js
        self.bucket = bucket
        self.replicas = replicas
        self.obs: Any = None

    async def open(self) -> None:
        from marketbus.contracts.streams import bind_object_store

        # created by provisioning (`marketbus provision`): the service only binds
        self.obs = await bind_object_store(self.js, self.bucket)

    @staticmethod
    def _name(job_id: str, filename: str) -> str:
        _check(job_id, filename)
        return f"{job_id}/{filename}"

    async def put(self, job_id: str, filename: str, src: Path) -> None:
        with open(src, "rb") as fh:
            await self.obs.put(self._name(job_id, filename), fh)
        with contextlib.suppress(OSError):
            src.unlink()

    async def size(self, job_id: str, filename: str) -> int:
        from nats.js.errors import NotFoundError, ObjectNotFoundError

        try:
            info = await self.obs.get_info(self._name(job_id, filename))
        except (NotFoundError, ObjectNotFoundError):
            raise ArtifactNotFound(f"{job_id}/{filename}") from None
        if info.deleted:
            raise ArtifactNotFound(f"{job_id}/{filename}")
        return int(info.size or 0)

    async def read(self, job_id: str, filename: str) -> AsyncIterator[bytes]:
        from nats.js.errors import NotFoundError, ObjectDeletedError, ObjectNotFoundError

        try:
            result = await self.obs.get(self._name(job_id, filename))
        except (NotFoundError, ObjectNotFoundError, ObjectDeletedError):
            raise ArtifactNotFound(f"{job_id}/{filename}") from None
        data = result.data or b""
        for i in range(0, len(data), CHUNK):
            yield data[i:i + CHUNK]

    async def delete_job(self, job_id: str, filenames: list[str]) -> None:
        for name in filenames:
            with contextlib.suppress(Exception):
                await self.obs.delete(self._name(job_id, name))


class S3ArtifactStore(ArtifactStore):
    """S3-compatible storage over plain HTTP with AWS Signature V4 (path-style URLs)."""

    kind = "s3"

    def __init__(self, endpoint: str, bucket: str, access_key: str, secret_key: str, region: str = "us-east-1") -> None:
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.client: Any = None

    async def open(self) -> None:
        import httpx

        self.client = httpx.AsyncClient(timeout=60)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def _signed(self, method: str, key: str, payload_hash: str) -> tuple[str, dict[str, str]]:
        from urllib.parse import urlsplit

        now = dt.datetime.now(dt.UTC)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        path = f"/{quote(self.bucket)}/{quote(key)}"
        host = urlsplit(self.endpoint).netloc
        headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
        signed = ";".join(sorted(headers))
        canonical = "\n".join(
            [method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload_hash]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        k = f"AWS4{self.secret_key}".encode()
        for part in (day, self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={sig}")
        del headers["host"]
        return self.endpoint + path, headers

    async def put(self, job_id: str, filename: str, src: Path) -> None:
        # streamed from disk twice (hash for the signature, then the body): an artifact of any
        # size uploads in bounded memory
        digest, size = await asyncio.to_thread(_sha256_of, src)
        url, headers = self._signed("PUT", self._key(job_id, filename), digest)
        headers["content-length"] = str(size)  # a plain PUT (S3 refuses chunked transfer encoding)
        resp = await self.client.put(url, content=_chunks_of(src), headers=headers)
        resp.raise_for_status()
        with contextlib.suppress(OSError):
            src.unlink()

    @staticmethod
    def _key(job_id: str, filename: str) -> str:
        _check(job_id, filename)
        return f"{job_id}/{filename}"

    async def size(self, job_id: str, filename: str) -> int:
        url, headers = self._signed("HEAD", self._key(job_id, filename), hashlib.sha256(b"").hexdigest())
        resp = await self.client.head(url, headers=headers)
        if resp.status_code == 404:
            raise ArtifactNotFound(f"{job_id}/{filename}")
        resp.raise_for_status()
        return int(resp.headers.get("content-length", 0))

    async def read(self, job_id: str, filename: str) -> AsyncIterator[bytes]:
        url, headers = self._signed("GET", self._key(job_id, filename), hashlib.sha256(b"").hexdigest())
        async with self.client.stream("GET", url, headers=headers) as resp:
            if resp.status_code == 404:
                raise ArtifactNotFound(f"{job_id}/{filename}")
            resp.raise_for_status()
            async for chunk in resp.aiter_bytes(CHUNK):
                yield chunk

    async def delete_job(self, job_id: str, filenames: list[str]) -> None:
        for name in filenames:
            with contextlib.suppress(Exception):
                url, headers = self._signed("DELETE", self._key(job_id, name), hashlib.sha256(b"").hexdigest())
                await self.client.delete(url, headers=headers)


def _sha256_of(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


async def _chunks_of(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk


def make_store(settings: Any, js: Any = None) -> ArtifactStore:
    if settings.artifact_store == "nats":
        return NatsArtifactStore(js, settings.artifact_bucket, settings.stream_replicas)
    if settings.artifact_store == "s3":
        return S3ArtifactStore(settings.s3_endpoint, settings.artifact_bucket, settings.s3_access_key.get(),
                               settings.s3_secret_key.get(), settings.s3_region)
    return LocalArtifactStore(settings.artifact_path)
