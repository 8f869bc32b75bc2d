"""The history tables through a REST catalog: SeaweedFS's built-in Iceberg REST catalog (its
S3 keys as OAuth2 client credentials, a table bucket as the warehouse)."""

from __future__ import annotations

import uuid

import boto3

from marketbus.history.lakehouse import LakehouseSettings
from marketbus.history.reader import HistoryReader
from marketbus.history.schema import SCHEMAS
from marketbus.history.selector import Selector
from marketbus.history.writer import HistoryTableWriter
from marketbus.runtime.settings import Secret

from .common import trade
from .seaweedfs import SeaweedFS


def test_writer_and_reader_through_seaweedfs_rest_catalog(seaweedfs: SeaweedFS) -> None:
    port = next(a for a in seaweedfs.proc.args if a.startswith("-s3.port.iceberg=")).split("=")[1]
    bucket = f"rest-{uuid.uuid4().hex[:10]}"
    boto3.client("s3tables", endpoint_url=seaweedfs.endpoint, region_name=seaweedfs.region,
                 aws_access_key_id=seaweedfs.access_key, aws_secret_access_key=seaweedfs.secret_key
                 ).create_table_bucket(name=bucket)
    settings = LakehouseSettings(
        catalog="rest", catalog_uri=Secret(f"http://127.0.0.1:{port}"), warehouse=f"s3://{bucket}/",
        catalog_credential=Secret(f"{seaweedfs.access_key}:{seaweedfs.secret_key}"), s3_endpoint=seaweedfs.endpoint,
        s3_access_key=Secret(seaweedfs.access_key), s3_secret_key=Secret(seaweedfs.secret_key))
    events = [trade("REST", i) for i in range(300)]
    rows = SCHEMAS["trade"].rows_to_table(events, "MD", list(range(1, 301)), [0] * 300)
    writer = HistoryTableWriter(settings, "rest")
    assert writer.append("trade", "MD", rows) == (300, 0)
    assert writer.append("trade", "MD", rows) == (0, 300)  # the same messages again: nothing twice
    got = HistoryReader(settings).read_kind("trade", Selector(symbol="REST"), 0, 2**63 - 1)
    assert SCHEMAS["trade"].table_to_events(got) == events
