"""Durable artifact storage: a local directory (default), a NATS object store, or S3-compatible
storage (AWS S3, MinIO...). Objects are addressed by ``(job_id, filename)`` only; both are single
path segments checked by :func:`signing.safe_name`, and the local store also checks that the
resolved path stays inside its root, so no path outside the store is ever read or written.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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
    """S3-compatible storage (AWS S3, MinIO, SeaweedFS...) through pyarrow's S3 filesystem (the
    AWS SDK's signing, retries and multipart uploads; path-style URLs unless on AWS), the client
    the history tables' warehouse uses too. Blocking calls run on worker threads."""

    kind = "s3"

    def __init__(self, endpoint: str, bucket: str, access_key: str, secret_key: str, region: str = "us-east-1") -> None:
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.fs: Any = None

    async def open(self) -> None:
        from urllib.parse import urlsplit

        from pyarrow import fs

        url = urlsplit(self.endpoint) if self.endpoint else None
        self.fs = fs.S3FileSystem(
            access_key=self.access_key or None, secret_key=self.secret_key or None, region=self.region,
            endpoint_override=url.netloc if url else None, scheme=url.scheme if url else "https",
            force_virtual_addressing=False, retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=3))

    def _path(self, job_id: str, filename: str) -> str:
        _check(job_id, filename)
        return f"{self.bucket}/{job_id}/{filename}"

    async def put(self, job_id: str, filename: str, src: Path) -> None:
        path = self._path(job_id, filename)

        def upload() -> None:  # streamed in chunks (multipart when large): bounded memory at any size;
            # compression=None: the file's bytes (pyarrow would gzip a .gz name once more on its own)
            with src.open("rb") as f, self.fs.open_output_stream(path, compression=None, metadata={}) as out:
                while chunk := f.read(CHUNK):
                    out.write(chunk)

        await asyncio.to_thread(upload)
        with contextlib.suppress(OSError):
            src.unlink()

    async def size(self, job_id: str, filename: str) -> int:
        from pyarrow.fs import FileType

        info = await asyncio.to_thread(self.fs.get_file_info, self._path(job_id, filename))
        if info.type != FileType.File:
            raise ArtifactNotFound(f"{job_id}/{filename}")
        return int(info.size)

    async def read(self, job_id: str, filename: str) -> AsyncIterator[bytes]:
        try:
            # compression=None: the bytes as stored (pyarrow would gunzip a .gz name on its own)
            stream = await asyncio.to_thread(self.fs.open_input_stream, self._path(job_id, filename), compression=None)
        except FileNotFoundError:
            raise ArtifactNotFound(f"{job_id}/{filename}") from None
        try:
            while chunk := await asyncio.to_thread(stream.read, CHUNK):
                yield chunk
        finally:
            stream.close()

    async def delete_job(self, job_id: str, filenames: list[str]) -> None:
        for name in filenames:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.fs.delete_file, self._path(job_id, name))


def make_store(settings: Any, js: Any = None) -> ArtifactStore:
    if settings.artifact_store == "nats":
        return NatsArtifactStore(js, settings.artifact_bucket, settings.stream_replicas)
    if settings.artifact_store == "s3":
        return S3ArtifactStore(settings.s3_endpoint, settings.artifact_bucket, settings.s3_access_key.get(),
                               settings.s3_secret_key.get(), settings.s3_region)
    return LocalArtifactStore(settings.artifact_path)
