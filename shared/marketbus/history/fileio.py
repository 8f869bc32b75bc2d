"""The history tables' FileIO: pyiceberg's pyarrow FileIO without the object-store round trips
that a commit does not need (measured on SeaweedFS, ``bench/history_lake.py``):

- one filesystem per store and credentials for the process, shared by every FileIO instance:
  pyiceberg builds a FileIO per loaded or committed table, each with its own ``S3FileSystem``
  (its own AWS client and connection pool), so every commit paid new connections;
- the length of a file this FileIO wrote is the count of bytes written, not a ``HEAD`` (pyiceberg
  asks for it after writing each manifest);
- the table's metadata files (manifest lists, manifests, metadata JSON) written by this process
  are kept, bounded, and read back from memory: every commit re-reads the parent snapshot's
  manifest list, and merging manifests re-reads manifests the writer itself wrote. Metadata files
  are immutable (a new name for every version), so a copy never goes stale; deleting one
  forgets it. Data files are not kept.

Loaded by pyiceberg through the catalog property ``py-io-impl`` (``lakehouse.catalog_properties``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import pyarrow as pa
from pyiceberg.io import InputFile, InputStream, OutputFile, OutputStream
from pyiceberg.io.pyarrow import PyArrowFile, PyArrowFileIO

METADATA_DIR = "/metadata/"
KEEP_FILE_BYTES = 4 << 20  # a metadata file larger than this is not kept
KEEP_TOTAL_BYTES = 64 << 20  # per filesystem, least recently used dropped first
# the properties pyiceberg builds a pyarrow filesystem from (endpoints, keys, regions, timeouts)
FS_PROPERTIES = ("s3.", "client.", "gcs.", "adls.", "hdfs.", "oss.", "hf.")

_lock = threading.Lock()
_filesystems: dict[tuple[Any, ...], Any] = {}
_kept: dict[tuple[Any, ...], OrderedDict[str, bytes]] = {}
_kept_bytes: dict[tuple[Any, ...], int] = {}


def _keep(key: tuple[Any, ...], location: str, data: bytes) -> None:
    with _lock:
        files = _kept.setdefault(key, OrderedDict())
        old = files.pop(location, None)
        total = _kept_bytes.get(key, 0) - (len(old) if old is not None else 0) + len(data)
        files[location] = data
        while total > KEEP_TOTAL_BYTES and files:
            _, dropped = files.popitem(last=False)
            total -= len(dropped)
        _kept_bytes[key] = total


def _kept_file(key: tuple[Any, ...], location: str) -> bytes | None:
    with _lock:
        files = _kept.get(key)
        if files is None:
            return None
        data = files.get(location)
        if data is not None:
            files.move_to_end(location)
        return data


def _forget(key: tuple[Any, ...], location: str) -> None:
    with _lock:
        files = _kept.get(key)
        data = files.pop(location, None) if files is not None else None
        if data is not None:
            _kept_bytes[key] -= len(data)


def forget_all() -> None:
    """Drop the kept metadata files and the shared filesystems (tests)."""
    with _lock:
        _kept.clear()
        _kept_bytes.clear()
        _filesystems.clear()


class _MetadataStream:
    """The output stream of one metadata file: its bytes kept until it is closed (uploaded),
    then they are the file, and its length is known."""

    def __init__(self, file: LakehouseFile, native: Any) -> None:
        self.file, self.native = file, native
        self.chunks: list[bytes] | None = []
        self.size = 0

    def write(self, b: bytes) -> int:
        n = self.native.write(b)
        if self.chunks is not None:
            self.chunks.append(bytes(b))
            self.size += len(b)
            if self.size > KEEP_FILE_BYTES:
                self.chunks = None
        return n  # type: ignore[no-any-return]

    def tell(self) -> int:
        return self.native.tell()  # type: ignore[no-any-return]

    def flush(self) -> None:
        self.native.flush()

    @property
    def closed(self) -> bool:
        return bool(self.native.closed)

    def close(self) -> None:
        if self.native.closed:
            return
        length = self.native.tell()
        self.native.close()  # the upload: raises when it failed (then nothing is kept)
        self.file.length = length
        if self.chunks is not None:
            _keep(self.file.io_key, self.file.location, b"".join(self.chunks))
            self.chunks = None

    def __enter__(self) -> _MetadataStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LakehouseFile(PyArrowFile):
    """A pyiceberg pyarrow file that knows its length once written here."""

    io_key: tuple[Any, ...] = ()
    length: int | None = None

    def __len__(self) -> int:
        if self.length is not None:
            return self.length
        return super().__len__()

    def create(self, overwrite: bool = False) -> OutputStream:
        """A data file's stream is pyarrow's own (Parquet writes it from C++; its writer takes the
        length from ``tell()``); a metadata file's stream keeps its bytes."""
        native = super().create(overwrite=overwrite)
        if METADATA_DIR not in self.location:
            return native
        return _MetadataStream(self, native)


class _KeptFile(InputFile):
    """A metadata file this process wrote, read from memory."""

    def __init__(self, location: str, data: bytes) -> None:
        super().__init__(location)
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def exists(self) -> bool:
        return True

    def open(self, seekable: bool = True) -> InputStream:
        reader: InputStream = pa.BufferReader(self.data)
        return reader


class LakehouseFileIO(PyArrowFileIO):
    """pyiceberg's pyarrow FileIO with shared filesystems, written lengths and kept metadata files."""

    def __init__(self, properties: Any = None) -> None:
        super().__init__(properties or {})
        self._bind()

    def _bind(self) -> None:
        # what the filesystem is made of (a table's own properties, write.* etc., are not)
        self._props_key = tuple(sorted((k, v) for k, v in self.properties.items() if k.startswith(FS_PROPERTIES)))
        self.fs_by_scheme = self._shared_fs

    def _shared_fs(self, scheme: str, netloc: str | None) -> Any:
        key = (scheme, netloc, self._props_key)
        with _lock:
            fs = _filesystems.get(key)
        if fs is None:
            fs = self._initialize_fs(scheme, netloc)
            with _lock:
                fs = _filesystems.setdefault(key, fs)
        return fs

    def _key(self, location: str) -> tuple[Any, ...]:
        scheme, netloc, _ = self.parse_location(location, self.properties)
        return (scheme, netloc, self._props_key)

    def new_input(self, location: str) -> InputFile:  # type: ignore[override]  # a PyArrowFile or a kept one
        if METADATA_DIR in location:
            data = _kept_file(self._key(location), location)
            if data is not None:
                return _KeptFile(location, data)
        return super().new_input(location)

    def new_output(self, location: str) -> LakehouseFile:
        scheme, netloc, path = self.parse_location(location, self.properties)
        file = LakehouseFile(fs=self.fs_by_scheme(scheme, netloc), location=location, path=path,
                             buffer_size=int(self.properties.get("buffer-size", 1 << 20)))
        file.io_key = (scheme, netloc, self._props_key)
        return file

    def delete(self, location: str | InputFile | OutputFile) -> None:
        name = location.location if isinstance(location, (InputFile, OutputFile)) else location
        _forget(self._key(name), name)
        super().delete(location)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._bind()
