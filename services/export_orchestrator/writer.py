"""Artifact writers: Arrow record batches -> CSV.gz or Parquet (zstd) files, split by rows or size.

Vectorized end to end (pyarrow's C++ CSV writer into a gzip stream, pyarrow.parquet row groups):
no Python work per row. Every finished file gets its row count, byte size and sha256.
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from .layouts import csv_text

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
STORAGE_COLUMNS = ("_stream", "_seq", "_idx")
ORDER_COLUMNS = ("ts_event", "_stream", "_seq", "_idx")
EXTENSIONS = {"csv.gz": "csv.gz", "parquet": "parquet"}


class FileResult(msgspec.Struct, frozen=True, kw_only=True):
    filename: str
    kind: str
    rows: int
    bytes: int
    sha256: str
    first_ts: int | None = None
    last_ts: int | None = None
    # position of the last row in the history order: (ts_event, _stream, _seq, _idx)
    last_key: tuple[int, str, int, int] | None = None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


_UNSAFE = re.compile(r"[^A-Za-z0-9_.=~-]")


def name_part(value: str) -> str:
    if value in ("", "*"):
        return "all"
    return _UNSAFE.sub("_", value.replace("*", "x"))[:60] or "all"


def default_columns(schema: pa.Schema) -> list[str]:
    """The event's own fields (the storage bookkeeping columns are not exported)."""
    return [n for n in schema.names if n not in STORAGE_COLUMNS]


class SplitWriter:
    """Writes one kind's batches into numbered files ``<prefix>-<n:05d>.<ext>`` in ``work_dir``."""

    def __init__(self, work_dir: Path, fmt: str, prefix: str, kind: str, columns: Sequence[str] | None,
                 max_rows: int, max_bytes: int, *, next_index: int = 1, parquet_level: int = 1,
                 csv_level: int = 1, layout: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None) -> None:
        if fmt not in EXTENSIONS:
            raise ValueError(f"unknown format {fmt!r}")
        self.work_dir = work_dir
        self.fmt = fmt
        self.prefix = prefix
        self.kind = kind
        self.columns = list(columns) if columns else None
        self.max_rows = max(1, max_rows)
        self.max_bytes = max(1 << 16, max_bytes)
        self.index = next_index
        self.parquet_level = parquet_level
        self.csv_level = csv_level
        self.layout = layout  # a TickSupply layout: replaces the columns, CSV quoted as TickSupply does
        self._file: Any = None
        self._sink: Any = None
        self._writer: Any = None
        self._path: Path | None = None
        self._rows = 0
        self._first: int | None = None
        self._last_key: tuple[int, str, int, int] | None = None
        self._out_schema: pa.Schema | None = None

    @property
    def filename(self) -> str:
        return f"{self.prefix}-{self.index:05d}.{EXTENSIONS[self.fmt]}"

    def _open(self, schema: pa.Schema, first: pa.RecordBatch) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._path = self.work_dir / self.filename
        self._file = pa.OSFile(str(self._path), "wb")
        if self.fmt == "parquet":
            self._writer = pq.ParquetWriter(
                self._file,
                schema,
                compression="zstd",
                compression_level=self.parquet_level,
                write_statistics=True,
                use_dictionary=self._dictionary_columns(first),
            )
        else:
            # one gzip member, compressed by zlib (releases the GIL) at a configurable level
            self._sink = zlib.compressobj(self.csv_level, zlib.DEFLATED, 31)
            self._writer = "csv"
            self._header = True
        self._rows = 0
        self._first = None

    @staticmethod
    def _dictionary_columns(sample: pa.RecordBatch) -> list[str]:
        """Dictionary-encode only the repetitive columns (source, venue, side...): trying it on
        unique values (ids, timestamps) costs time and saves nothing. Judged on the first 32k
        rows (counting the distinct values of a whole 128k-row batch's ids took ~0.1 s a file)."""
        import pyarrow.compute as pc

        sample = sample.slice(0, 32_768)
        n = sample.num_rows
        out = []
        for name, col in zip(sample.schema.names, sample.columns):
            try:
                if pc.count_distinct(col).as_py() <= max(16, n // 10):
                    out.append(name)
            except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
                continue
        return out

    def _close(self) -> FileResult | None:
        if self._writer is None:
            return None
        if self.fmt == "parquet":
            self._writer.close()
        else:
            self._file.write(self._sink.flush())
        self._file.close()
        path = self._path
        assert path is not None
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        result = FileResult(filename=path.name, kind=self.kind, rows=self._rows, bytes=path.stat().st_size,
                            sha256=sha256_file(path), first_ts=self._first,
                            last_ts=self._last_key[0] if self._last_key else None, last_key=self._last_key)
        self._writer = self._sink = self._file = self._path = None
        self.index += 1
        return result

    def path_of(self, result: FileResult) -> Path:
        return self.work_dir / result.filename

    def _shape(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The rows written for ``batch``: the layout's, or the selected columns."""
        if self.layout is not None:
            out = self.layout(batch)
        else:
            out = batch.select(self.columns or default_columns(batch.schema))
        if self._out_schema is None:
            self._out_schema = out.schema
        elif out.schema != self._out_schema:
            out = pa.RecordBatch.from_arrays([out.column(i).cast(f.type) for i, f in enumerate(self._out_schema)],
                                             schema=self._out_schema)
        return out

    def _put(self, rows: pa.RecordBatch, events: pa.RecordBatch) -> None:
        """Append ``rows`` (made of ``events``) to the open file."""
        take = rows.num_rows
        if self.fmt == "parquet":
            self._writer.write_batch(rows, row_group_size=take)
        elif self.layout is not None:
            self._file.write(self._sink.compress(csv_text(rows, self._header)))
            self._header = False
        else:
            buf = pa.BufferOutputStream()
            pcsv.write_csv(rows, buf, pcsv.WriteOptions(include_header=self._header, batch_size=8192))
            self._header = False
            self._file.write(self._sink.compress(buf.getvalue()))
        if self._first is None and "ts_event" in events.schema.names:
            self._first = events.column("ts_event")[0].as_py()
        if all(c in events.schema.names for c in ORDER_COLUMNS):
            self._last_key = tuple(events.column(c)[events.num_rows - 1].as_py() for c in ORDER_COLUMNS)
        self._rows += take

    def _full(self, done: list[FileResult], *, anyway: bool = False) -> None:
        if anyway or self._rows >= self.max_rows or self._file.tell() >= self.max_bytes:
            result = self._close()
            if result:
                done.append(result)

    def _events_fitting(self, events: pa.RecordBatch, room: int) -> int:
        """How many of the first ``events`` make at most ``room`` rows (rows grow with events)."""
        assert self.layout is not None
        fits, too_many = 0, events.num_rows  # all of them make more than room
        while too_many - fits > 1:
            mid = (fits + too_many) // 2
            if self.layout(events.slice(0, mid)).num_rows <= room:
                fits = mid
            else:
                too_many = mid
        return fits

    def write(self, batch: pa.RecordBatch) -> list[FileResult]:
        """Write rows; returns the files finished by this call (split by rows or bytes). No file
        holds more than ``max_rows`` rows (but for one event whose own rows are more)."""
        done: list[FileResult] = []
        if batch.num_rows == 0:
            return done
        out = self._shape(batch)
        if out.num_rows == batch.num_rows:  # a row per event: files split anywhere
            offset = 0
            while offset < out.num_rows:
                if self._writer is None:
                    self._open(out.schema, out)
                take = min(out.num_rows - offset, self.max_rows - self._rows)
                self._put(out.slice(offset, take), batch.slice(offset, take))
                offset += take
                self._full(done)
            return done
        # A layout that makes another number of rows than events (a quote's bid and ask rows):
        # files split between events, so a resume position (an event) never splits its rows.
        events = batch
        while out.num_rows:
            if self._writer is None:
                self._open(out.schema, out)
            room = self.max_rows - self._rows
            if out.num_rows <= room:
                self._put(out, events)
                self._full(done)
                break
            fits = self._events_fitting(events, room)
            if fits == 0 and self._rows:
                self._full(done, anyway=True)  # the next event starts a new file
                continue
            fits = max(fits, 1)  # one event's rows are more than a file holds: they go whole
            self._put(self._shape(events.slice(0, fits)), events.slice(0, fits))
            self._full(done, anyway=True)  # the next event does not fit
            events = events.slice(fits)
            out = self._shape(events)
        return done

    def finish(self) -> list[FileResult]:
        result = self._close()
        return [result] if result else []

    def abort(self) -> None:
        try:
            if self._writer is not None and self.fmt == "parquet":
                self._writer.close()
            if self._file is not None:
                self._file.close()
        except Exception:
            pass
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        self._writer = self._sink = self._file = self._path = None
