"""Commits into an S3 warehouse (SeaweedFS) without the round trips they do not need
(``marketbus.history.fileio``, ``marketbus.history.sqlcatalog``), with the same guarantees:

- a commit reads nothing back from the object store (no GET or HEAD of the table's metadata,
  manifest lists or files it just wrote) and reuses one filesystem (connections) for the process;
- a writer whose view of the table is stale still loses the race cleanly (the catalog's swap
  asserts the metadata it built on), refreshes, and stores each message once; the metadata file
  of the failed attempt is removed;
- an upload that fails (data file, manifest, metadata JSON) leaves no snapshot, and the retry
  stores every row once;
- metadata files written by this process are read back from memory, data files never; a delete
  forgets them; the kept bytes are bounded.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.io.pyarrow import PyArrowFileIO

from marketbus.history import fileio
from marketbus.history.lakehouse import LakehouseSettings, Tables
from marketbus.history.reader import HistoryReader
from marketbus.history.schema import SCHEMAS
from marketbus.history.selector import Selector
from marketbus.history.snapshot_props import SEQS_PROP, STREAM_PROP, decode_ranges
from marketbus.history.writer import HistoryTableWriter

from .common import SEC, T0, trade
from .seaweedfs import SeaweedFS, lakehouse_env


def _s3_settings(tmp_path: Path, seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> LakehouseSettings:
    """SQLite catalog (per test), warehouse in a new SeaweedFS bucket."""
    env = lakehouse_env(seaweedfs, "postgresql://unused", f"s3c_{uuid.uuid4().hex[:8]}")
    env.pop("MARKETBUS_LAKEHOUSE_CATALOG_URI")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return LakehouseSettings.from_env(tmp_path / "h")


def _rows(first_seq: int, n: int, symbol: str = "S3C") -> pa.Table:
    events = [trade(symbol, first_seq + i, ts=T0 + (first_seq + i) * SEC) for i in range(n)]
    return SCHEMAS["trade"].rows_to_table(events, "MD", list(range(first_seq, first_seq + n)), [0] * n)


def _stored(settings: LakehouseSettings) -> list[int]:
    """The ``_seq`` of every row of the table, through a reader of its own (a fresh view)."""
    t = HistoryReader(settings).read_kind("trade", Selector(kind="trade"), 0, 2**63 - 1)
    return sorted(t.column("_seq").to_pylist())


def _snapshot_seqs(settings: LakehouseSettings) -> list[int]:
    table = Tables(settings).get("trade", refresh=True)
    assert table is not None
    seqs: list[int] = []
    for snap in table.metadata.snapshots:
        props = snap.summary.additional_properties if snap.summary is not None else {}
        if props.get(STREAM_PROP) == "MD":
            seqs += [s for a, b in decode_ranges(props[SEQS_PROP]) for s in range(a, b + 1)]
    return sorted(seqs)


class _Counting:
    """A pyarrow filesystem that counts the calls made through it."""

    def __init__(self, fs: Any, calls: list[str]) -> None:
        self._fs, self._calls = fs, calls

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._fs, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._calls.append(f"{name} {args[0] if args else ''}")
            return attr(*args, **kwargs)

        return call


def test_a_commit_reads_nothing_back_and_reuses_its_filesystem(tmp_path: Path, seaweedfs: SeaweedFS,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _s3_settings(tmp_path, seaweedfs, monkeypatch)
    calls: list[str] = []
    made: list[Any] = []
    initialize = fileio.LakehouseFileIO._initialize_fs

    def counting_fs(self: Any, scheme: str, netloc: str | None = None) -> Any:
        fs = _Counting(initialize(self, scheme, netloc), calls)
        made.append(fs)
        return fs

    fileio.forget_all()
    with monkeypatch.context() as patched:
        patched.setattr(fileio.LakehouseFileIO, "_initialize_fs", counting_fs)
        writer = HistoryTableWriter(settings, "w")
        writer.append("trade", "MD", _rows(1, 100))  # creates the table
        calls.clear()
        for c in range(1, 6):
            writer.append("trade", "MD", _rows(1 + 100 * c, 100))
    reads = [c for c in calls if c.split()[0] in ("get_file_info", "open_input_file", "open_input_stream")]
    assert reads == [], reads  # before: per commit a GET of the metadata JSON and the manifest list, 3 HEADs
    writes = [c for c in calls if c.startswith("open_output_stream")]
    # per commit: the data file, a manifest, the manifest list, the metadata JSON
    assert len(writes) == 5 * 4, writes
    assert len(made) == 1  # one filesystem for the process (the same connections for every commit)
    fileio.forget_all()
    assert _stored(settings) == list(range(1, 601))  # and a fresh reader (from S3) reads it all
    assert _snapshot_seqs(settings) == list(range(1, 601))


def test_a_stale_writer_loses_the_race_and_stores_each_message_once(tmp_path: Path, seaweedfs: SeaweedFS,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _s3_settings(tmp_path, seaweedfs, monkeypatch)
    first, second = HistoryTableWriter(settings, "a"), HistoryTableWriter(settings, "b")
    first.append("trade", "MD", _rows(1, 50))
    second.tables.get("trade", create=True)  # b's view of the table: before a's next commit
    first.append("trade", "MD", _rows(51, 50))
    # b got 41-150 (41-100 are in a's commits, which b has not seen): its first attempt builds
    # on its stale view; the catalog refuses the swap, b refreshes and stores 101-150 only
    stored, skipped = second.append("trade", "MD", _rows(41, 110))
    assert (stored, skipped) == (50, 60)
    assert second.retries == 1
    assert _stored(settings) == list(range(1, 151))
    assert _snapshot_seqs(settings) == list(range(1, 151))
    # the metadata JSON of b's refused attempt is gone: every one left is the current or logged
    table = Tables(settings).get("trade", refresh=True)
    assert table is not None
    logged = {entry.metadata_file for entry in table.metadata.metadata_log} | {table.metadata_location}
    s3 = seaweedfs.client()
    bucket, prefix = table.metadata.location.split("://", 1)[1].split("/", 1)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/metadata/")["Contents"]
    jsons = {f"s3://{bucket}/{o['Key']}" for o in listed if o["Key"].endswith(".metadata.json")}
    assert jsons <= logged, jsons - logged


@pytest.mark.parametrize("failing", ["data", "manifest", "metadata.json"])
def test_a_failed_upload_commits_nothing_and_the_retry_stores_everything_once(
        tmp_path: Path, seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    settings = _s3_settings(tmp_path, seaweedfs, monkeypatch)
    writer = HistoryTableWriter(settings, "w")
    writer.append("trade", "MD", _rows(1, 100))
    create = fileio.LakehouseFile.create
    failed: list[str] = []

    class FailingUpload:
        """The object store refuses the upload when the stream is closed (pyarrow's S3 stream
        uploads then)."""

        def __init__(self, stream: Any) -> None:
            self.stream = stream

        def __getattr__(self, name: str) -> Any:
            return getattr(self.stream, name)

        def write(self, b: bytes) -> int:
            return int(self.stream.write(b))

        def close(self) -> None:
            self.stream.abort() if hasattr(self.stream, "abort") else None
            raise OSError("upload refused (injected)")

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

    def matches(location: str) -> bool:
        name = location.rsplit("/", 1)[-1]
        if failing == "data":
            return "/data/" in location
        if failing == "manifest":
            return name.endswith("-m0.avro")
        return name.endswith(".metadata.json")

    def create_failing(self: Any, overwrite: bool = False) -> Any:
        stream = create(self, overwrite)
        if matches(self.location) and not failed:
            failed.append(self.location)
            if hasattr(stream, "native"):  # a metadata stream: fail its upload underneath
                stream.native = FailingUpload(stream.native)
                return stream
            return FailingUpload(stream)
        return stream

    monkeypatch.setattr(fileio.LakehouseFile, "create", create_failing)
    with pytest.raises(OSError, match="injected"):
        writer.append("trade", "MD", _rows(101, 100))
    assert failed
    assert fileio._kept_file(writer.tables.get("trade").io._key(failed[0]), failed[0]) is None  # type: ignore[union-attr]
    assert _snapshot_seqs(settings) == list(range(1, 101))  # no snapshot of the failed append
    assert _stored(settings) == list(range(1, 101))
    # the writer retries the flush (its messages were not acked): everything once
    assert writer.append("trade", "MD", _rows(101, 100)) == (100, 0)
    assert writer.append("trade", "MD", _rows(101, 100)) == (0, 100)  # a redelivery: stored already
    assert _stored(settings) == list(range(1, 201))
    assert _snapshot_seqs(settings) == list(range(1, 201))


def test_metadata_files_written_here_are_read_from_memory_bounded(tmp_path: Path, seaweedfs: SeaweedFS,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _s3_settings(tmp_path, seaweedfs, monkeypatch)
    fileio.forget_all()
    io = fileio.LakehouseFileIO(settings.catalog_properties())
    base = settings.warehouse.rstrip("/")
    meta, data = f"{base}/t/metadata/a.avro", f"{base}/t/data/a.parquet"
    for location, payload in ((meta, b"m" * 1000), (data, b"d" * 1000)):
        with io.new_output(location).create(overwrite=True) as out:
            out.write(payload[:400])
            out.write(payload[400:])
    written = io.new_output(meta)
    assert len(io.new_input(meta)) == 1000
    kept = io.new_input(meta)
    assert type(kept).__name__ == "_KeptFile"
    with kept.open() as f:
        assert f.read() == b"m" * 1000
    assert type(io.new_input(data)).__name__ == "PyArrowFile"  # data files are read from the store
    # another FileIO of the same store and keys: the same filesystem and the kept files
    other = fileio.LakehouseFileIO(settings.catalog_properties())
    assert other.fs_by_scheme("s3", base.split("/")[2]) is io.fs_by_scheme("s3", base.split("/")[2])
    assert type(other.new_input(meta)).__name__ == "_KeptFile"
    # what S3 holds is what was kept
    with PyArrowFileIO(settings.catalog_properties()).new_input(meta).open() as f:
        assert f.read() == b"m" * 1000
    io.delete(meta)
    assert not io.new_input(meta).exists()
    assert not written.exists()
    # bounded: the least recently used go first
    monkeypatch.setattr(fileio, "KEEP_TOTAL_BYTES", 2500)
    for i in range(4):
        with io.new_output(f"{base}/t/metadata/{i}.avro").create(overwrite=True) as out:
            out.write(bytes([i]) * 1000)
    kinds = [type(io.new_input(f"{base}/t/metadata/{i}.avro")).__name__ for i in range(4)]
    assert kinds == ["PyArrowFile", "PyArrowFile", "_KeptFile", "_KeptFile"]
    fileio.forget_all()
