"""Where the history tables live and how they are laid out (Apache Iceberg).

Catalog and storage come from configuration (:class:`LakehouseSettings`, env prefix
``MARKETBUS_LAKEHOUSE_``):

- embedded default, nothing to install: a SQL catalog in SQLite (``<history dir>/catalog.db``)
  and the warehouse under ``<history dir>/warehouse``;
- at scale: the SQL catalog in PostgreSQL (``CATALOG_URI=postgresql+psycopg2://...``) and the
  warehouse in S3-compatible object storage (``WAREHOUSE=s3://bucket/prefix``, ``S3_ENDPOINT``,
  keys); or a REST catalog (``CATALOG=rest``, ``CATALOG_URI=http://...``, ``CATALOG_CREDENTIAL``,
  ``WAREHOUSE`` as the catalog names it, e.g. SeaweedFS's ``s3://<table bucket>/``).

Layout: one table per event kind, ``<namespace>.<kind>`` (e.g. ``marketbus.trade``), because
kinds have different columns and are queried separately. Each table is partitioned by
``day(ts_event)`` and ``bucket(N, symbol)``: a query for one symbol and one day reads one
partition of one day (partition pruning), the files of a commit are bounded by days x buckets
whatever the number of symbols, and rows are sorted by (symbol, ts_event) in every file so the
Parquet row-group statistics prune further.

Columns (what a data engineer expects):

- ``ts_event`` / ``ts_recv``: ``timestamptz`` (microseconds, what every engine reads), plus
  ``ts_event_ns`` / ``ts_recv_ns``: the exact nanoseconds as ``long`` (the contracts' value);
- prices and sizes: ``decimal(38, 18)`` (exact; more than 18 decimals is refused, not rounded);
- ids, symbols and other text: ``string``; nested values (book levels, deliveries): JSON text;
- ``_stream``, ``_seq``, ``_idx``: the JetStream position of the row (history order, exactly once).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import BucketTransform, DayTransform, IdentityTransform
from pyiceberg.types import (
    BooleanType,
    DecimalType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

from marketbus.runtime.settings import Secret, Settings, load_settings

from .schema import SCHEMAS, KindSchema, canonical_decimal_column

DECIMAL = pa.decimal128(38, 18)
TIME_COLUMNS = ("ts_event", "ts_recv")  # int ns in the contracts: timestamptz + <name>_ns here
_ICEBERG = {"int": LongType(), "bool": BooleanType(), "str": StringType(), "decimal": DecimalType(38, 18),
            "json": StringType()}
_ARROW = {"int": pa.int64(), "bool": pa.bool_(), "str": pa.string(), "decimal": DECIMAL, "json": pa.string()}
TS = pa.timestamp("us", tz="UTC")

log = logging.getLogger("marketbus.history.lakehouse")


class LakehouseSettings(Settings, kw_only=True):
    """The catalog and warehouse every reader and writer of the history uses."""

    env_prefix: ClassVar[str] = "MARKETBUS_LAKEHOUSE_"

    catalog: Literal["sql", "rest"] = "sql"
    catalog_uri: Secret = Secret("")  # default sqlite:///<history dir>/catalog.db
    catalog_name: str = "marketbus"
    catalog_credential: Secret = Secret("")  # REST catalog: "<client id>:<secret>" (OAuth2 client credentials)
    warehouse: str = ""  # default file://<history dir>/warehouse; s3://bucket/prefix at scale
    namespace: str = "marketbus"
    s3_endpoint: str = ""  # e.g. http://127.0.0.1:8333 (SeaweedFS), empty = AWS
    s3_region: str = "us-east-1"
    s3_access_key: Secret = Secret("")
    s3_secret_key: Secret = Secret("")
    buckets: int = 16  # bucket(N, symbol) partitions per day
    history_dir: str = ""  # where the embedded defaults live; default $MARKETBUS_DATA_DIR/history

    @classmethod
    def from_env(cls, history_dir: str | Path | None = None, **overrides: Any) -> LakehouseSettings:
        """From ``MARKETBUS_LAKEHOUSE_*``; ``history_dir`` places the embedded defaults."""
        if history_dir is not None and "history_dir" not in overrides:
            overrides["history_dir"] = str(history_dir)
        return load_settings(cls, **overrides)

    def base_dir(self) -> Path:
        if self.history_dir:
            return Path(self.history_dir)
        base = os.environ.get("MARKETBUS_DATA_DIR")
        return Path(base) / "history" if base else Path(".marketbus") / "history"

    def catalog_properties(self) -> dict[str, str]:
        props: dict[str, str] = {}
        uri = self.catalog_uri.get()
        if self.catalog == "sql" and not uri:
            self.base_dir().mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{self.base_dir().resolve() / 'catalog.db'}"
        if uri:
            props["uri"] = uri
        if self.catalog == "sql":
            props["type"] = "sql"
            props["init_catalog_tables"] = "true"
        else:
            props["type"] = "rest"
            if self.catalog_credential:
                props["credential"] = self.catalog_credential.get()
                props["oauth2-server-uri"] = uri.rstrip("/") + "/v1/oauth/tokens"  # the spec's token endpoint
        warehouse = self.warehouse
        if not warehouse:
            path = (self.base_dir() / "warehouse").resolve()
            path.mkdir(parents=True, exist_ok=True)
            warehouse = path.as_uri()
        props["warehouse"] = warehouse
        if self.s3_endpoint:
            props["s3.endpoint"] = self.s3_endpoint
        if self.s3_access_key:
            props["s3.access-key-id"] = self.s3_access_key.get()
            props["s3.secret-access-key"] = self.s3_secret_key.get()
        props["s3.region"] = self.s3_region
        props["s3.force-virtual-addressing"] = "false"
        # pyiceberg's pyarrow FileIO, minus round trips a commit does not need (fileio.py)
        props["py-io-impl"] = "marketbus.history.fileio.LakehouseFileIO"
        return props

    def warehouse_bucket(self) -> str | None:
        """The bucket of an S3 warehouse of the SQL catalog (a REST catalog manages its own)."""
        if self.catalog != "sql" or not self.warehouse.startswith(("s3://", "s3a://")):
            return None
        return self.warehouse.split("://", 1)[1].split("/", 1)[0] or None

    @property
    def embedded(self) -> bool:
        return self.catalog == "sql" and not self.catalog_uri and not self.warehouse


_catalogs: dict[tuple[tuple[str, str], ...], Any] = {}
_catalogs_lock = threading.Lock()


def open_catalog(settings: LakehouseSettings) -> Any:
    """The configured catalog (one per configuration and process; the namespace created)."""
    from pyiceberg.catalog import load_catalog
    from pyiceberg.exceptions import NamespaceAlreadyExistsError

    props = settings.catalog_properties()
    key = tuple(sorted(props.items()))
    with _catalogs_lock:
        catalog = _catalogs.get(key)
        if catalog is None:
            ensure_bucket(settings)
            if props.get("type") == "sql":  # pyiceberg's, with a commit that builds on the table's metadata
                props = {k: v for k, v in props.items() if k != "type"}
                props["py-catalog-impl"] = "marketbus.history.sqlcatalog.LakehouseSqlCatalog"
            catalog = load_catalog(settings.catalog_name, **props)
            try:
                catalog.create_namespace_if_not_exists(settings.namespace)
            except NamespaceAlreadyExistsError:  # created by another process meanwhile
                pass
            _catalogs[key] = catalog
        return catalog


def ensure_bucket(settings: LakehouseSettings) -> bool:
    """Create the S3 warehouse's bucket when it is missing (a new SeaweedFS or MinIO starts
    empty): whoever opens the catalog first creates it, nothing else has to. Best effort: keys
    that may not create buckets (a reader's) only log it; a bucket that is really missing then
    fails the first write with the store's own error. True when it was created here."""
    bucket = settings.warehouse_bucket()
    if bucket is None:
        return False
    from pyarrow import fs

    options: dict[str, Any] = {"region": settings.s3_region, "allow_bucket_creation": True}
    if settings.s3_endpoint:
        options["endpoint_override"] = settings.s3_endpoint
    if settings.s3_access_key:
        options["access_key"] = settings.s3_access_key.get()
        options["secret_key"] = settings.s3_secret_key.get()
    try:
        s3 = fs.S3FileSystem(**options)
        if s3.get_file_info(bucket).type != fs.FileType.NotFound:
            return False
        s3.create_dir(bucket)  # an existing bucket (another process was first) is no error
    except OSError as exc:
        log.warning("the warehouse bucket %s: cannot create it (%s)", bucket, exc)
        return False
    log.info("created the warehouse bucket %s", bucket)
    return True


class TableLayout:
    """One kind's Iceberg table: schema, partitioning, sort order, and the conversion between
    the storage rows (``schema.KindSchema.schema``: int ns times, decimal text) and the table."""

    def __init__(self, kind_schema: KindSchema) -> None:
        self.kind_schema = kind_schema
        self.kind = kind_schema.kind
        fields: list[NestedField] = []
        arrow: list[pa.Field] = []
        # storage column -> the table columns it becomes
        self.columns: dict[str, tuple[str, ...]] = {}
        decimals = {kind_schema.column_of[n] for n, ck, _ in kind_schema.fields if ck == "decimal"}
        self.decimals = decimals

        def add(name: str, itype: Any, atype: pa.DataType) -> None:
            fields.append(NestedField(len(fields) + 1, name, itype, required=False))
            arrow.append(pa.field(name, atype))

        for f in kind_schema.schema:
            if f.name in TIME_COLUMNS:
                add(f.name, TimestamptzType(), TS)
                add(f"{f.name}_ns", LongType(), pa.int64())
                self.columns[f.name] = (f.name, f"{f.name}_ns")
                continue
            if f.name in decimals:
                add(f.name, DecimalType(38, 18), DECIMAL)
            elif f.name == "_idx":
                add(f.name, IntegerType(), pa.int32())
            else:
                ck = "int" if pa.types.is_integer(f.type) else ("bool" if pa.types.is_boolean(f.type) else "str")
                add(f.name, _ICEBERG[ck], _ARROW[ck])
            self.columns[f.name] = (f.name,)
        self.schema = Schema(*fields)
        self.arrow_schema = pa.schema(arrow)
        ids = {f.name: f.field_id for f in fields}
        self.spec = PartitionSpec(
            PartitionField(ids["ts_event"], 1000, DayTransform(), "ts_event_day"),
            PartitionField(ids["symbol"], 1001, BucketTransform(0), "symbol_bucket"),
        )
        self.sort_order = SortOrder(SortField(ids["symbol"], IdentityTransform()),
                                    SortField(ids["ts_event"], IdentityTransform()))

    def spec_for(self, buckets: int) -> PartitionSpec:
        day, bucket = self.spec.fields
        return PartitionSpec(day, PartitionField(bucket.source_id, bucket.field_id, BucketTransform(buckets),
                                                 bucket.name))

    # --- storage rows <-> table rows ---------------------------------------------------------
    def to_table(self, rows: pa.Table) -> pa.Table:
        """Storage rows -> the table's columns (raises ValueError for a decimal that does not
        fit ``decimal(38, 18)`` exactly)."""
        arrays = []
        for f in self.kind_schema.schema:
            col = rows.column(f.name)
            if f.name in TIME_COLUMNS:
                arrays.append(pc.cast(pc.cast(col, pa.timestamp("ns", tz="UTC")), TS, safe=False))
                arrays.append(col)
            elif f.name in self.decimals:
                try:
                    arrays.append(pc.cast(col, DECIMAL))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise ValueError(f"{self.kind}.{f.name}: not an exact decimal(38, 18): {exc}") from None
            else:
                arrays.append(col)
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema)

    def table_columns(self, storage_columns: list[str]) -> list[str]:
        """The table columns needed to rebuild these storage columns."""
        out: list[str] = []
        for c in storage_columns:
            out.append(f"{c}_ns" if c in TIME_COLUMNS else c)
        return out

    def to_rows(self, table: pa.Table, storage_columns: list[str], *, exact_decimals: bool = False) -> pa.Table:
        """Table rows -> storage columns (int ns times, the decimal's canonical text).
        ``exact_decimals``: the decimal columns stay the table's ``decimal(38, 18)`` (the same
        values, not rendered to text: what a Parquet export writes)."""
        schema = self.kind_schema.schema
        arrays, fields = [], []
        for c in storage_columns:
            f = schema.field(c)
            if c in TIME_COLUMNS:
                col = table.column(f"{c}_ns")
            elif c in self.decimals and exact_decimals:
                col = table.column(c)
                f = f.with_type(DECIMAL)
            elif c in self.decimals:
                col = decimal_text(table.column(c))
            else:
                col = table.column(c)
                if col.type != f.type:
                    col = col.cast(f.type)
            arrays.append(col)
            fields.append(f)
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def decimal_text(col: Any) -> Any:
    """decimal(38, 18) -> the contracts' canonical decimal text (``1.500000000000000000`` -> ``1.5``,
    ``0E-18`` -> ``0``, ``1E-7`` for 0.0000001): the text marketbus published.

    Rendering a decimal is Arrow's slowest cast (~0.2 s per 1M values); prices and sizes repeat
    (ticks, lots), so a column of few distinct values is rendered once per value and the texts
    taken by index (~0.03 s per 1M)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(col) >= 1024:
        encoded = pc.dictionary_encode(col)
        if len(encoded.dictionary) * 2 <= len(col):
            return pc.take(canonical_decimal_column(encoded.dictionary), encoded.indices)
    return canonical_decimal_column(col)


LAYOUTS: dict[str, TableLayout] = {kind: TableLayout(s) for kind, s in SCHEMAS.items()}
STREAM_KINDS: dict[str, tuple[str, ...]] = {}
for _kind, _schema in SCHEMAS.items():
    STREAM_KINDS.setdefault(_schema.stream, ())
    STREAM_KINDS[_schema.stream] += (_kind,)


TABLE_PROPERTIES = {
    "format-version": "2",
    "write.parquet.compression-codec": "zstd",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    # no blind retry inside pyiceberg: a commit that lost the race is retried by our writer, which
    # first drops the rows of messages the winning commit already holds (exactly once)
    "commit.retry.num-retries": "0",
    # every append adds a manifest: merge them as they pile up, so planning a scan stays cheap
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "16",
}


def _ensure_properties(table: Any) -> None:
    """Tables created by an older version get today's properties (the retry one matters)."""
    missing = {k: v for k, v in TABLE_PROPERTIES.items() if k != "format-version" and table.properties.get(k) != v}
    if missing:
        from pyiceberg.exceptions import CommitFailedException

        try:
            with table.transaction() as tx:
                tx.set_properties(missing)
        except CommitFailedException:
            table.refresh()


class Tables:
    """The history tables of one catalog: loaded (and created) on demand, cached."""

    def __init__(self, settings: LakehouseSettings) -> None:
        self.settings = settings
        self._catalog: Any = None
        self._tables: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def catalog(self) -> Any:
        if self._catalog is None:
            self._catalog = open_catalog(self.settings)
        return self._catalog

    def ident(self, kind: str) -> str:
        return f"{self.settings.namespace}.{kind}"

    def get(self, kind: str, *, create: bool = False, refresh: bool = False) -> Any | None:
        """The table of ``kind`` (None when it does not exist and ``create`` is False)."""
        from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError

        with self._lock:
            table = self._tables.get(kind)
        if table is not None:
            if refresh:
                table.refresh()
            return table
        try:
            table = self.catalog.load_table(self.ident(kind))
        except NoSuchTableError:
            if not create:
                return None
            layout = LAYOUTS[kind]
            try:
                table = self.catalog.create_table(
                    self.ident(kind), layout.schema, partition_spec=layout.spec_for(self.settings.buckets),
                    sort_order=layout.sort_order,
                    properties={**TABLE_PROPERTIES, "marketbus.kind": kind},
                )
            except TableAlreadyExistsError:  # another writer created it meanwhile
                table = self.catalog.load_table(self.ident(kind))
        self._evolve(kind, table)
        _ensure_properties(table)
        with self._lock:
            self._tables[kind] = table
        return table

    @staticmethod
    def _evolve(kind: str, table: Any) -> None:
        """A contract that gained a field gains the column (old rows read it as null)."""
        have = {f.name for f in table.schema().fields}
        if all(f.name in have for f in LAYOUTS[kind].schema.fields):
            return
        from pyiceberg.exceptions import CommitFailedException

        try:
            with table.update_schema() as update:
                update.union_by_name(LAYOUTS[kind].schema)
        except CommitFailedException:
            table.refresh()  # another process evolved it first

    def existing(self, kinds: list[str] | tuple[str, ...], *, refresh: bool = False) -> dict[str, Any]:
        out = {}
        for kind in kinds:
            table = self.get(kind, refresh=refresh)
            if table is not None:
                out[kind] = table
        return out
