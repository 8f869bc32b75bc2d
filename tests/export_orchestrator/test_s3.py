"""The S3 artifact store against a real S3 endpoint (moto's server, over HTTP, with IAM
authentication switched on): its SigV4 requests are accepted with the right secret and refused
with a wrong one, and an export job's artifacts go to the bucket and download exactly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from moto import settings as moto_settings
from moto.server import ThreadedMotoServer

from marketbus.runtime.http import free_port
from services.export_orchestrator.artifacts import ArtifactNotFound, S3ArtifactStore

from .conftest import Harness, download_all, export_three_files, read_artifact, stored_names, table_rows, trade_rows

BUCKET = "marketbus-exports"


class S3:
    def __init__(self, endpoint: str, access_key: str, secret_key: str) -> None:
        self.endpoint, self.access_key, self.secret_key = endpoint, access_key, secret_key


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    """moto's S3 on a free port; an IAM user allowed s3:* on the bucket; then authentication on."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    admin = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "setup",
             "aws_secret_access_key": "setup"}
    try:
        # moto's state is per process: start from nothing (a previous test's user and bucket)
        httpx.post(f"{endpoint}/moto-api/reset").raise_for_status()
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="exporter")
        iam.put_user_policy(UserName="exporter", PolicyName="artifacts", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*",
                           "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}]}))
        key = iam.create_access_key(UserName="exporter")["AccessKey"]
        boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
        # from here on every request must be signed by a known key (and be allowed)
        monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
        yield S3(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        server.stop()


async def test_signed_requests_are_accepted_and_a_wrong_secret_is_refused(s3: S3, tmp_path: Path) -> None:
    store = S3ArtifactStore(s3.endpoint, BUCKET, s3.access_key, s3.secret_key)
    await store.open()
    try:
        src = tmp_path / "part-0001.csv.gz"
        payload = bytes(range(256)) * 4096 + b"tail"  # ~1 MB, every byte value
        src.write_bytes(payload)
        await store.put("exp_1", "part-0001.csv.gz", src)
        assert not src.exists()  # moved, like the other stores
        assert await store.size("exp_1", "part-0001.csv.gz") == len(payload)
        assert await store.read_all("exp_1", "part-0001.csv.gz") == payload
        await store.delete_job("exp_1", ["part-0001.csv.gz"])
        with pytest.raises(ArtifactNotFound):
            await store.size("exp_1", "part-0001.csv.gz")
    finally:
        await store.close()

    forged = S3ArtifactStore(s3.endpoint, BUCKET, s3.access_key, "not-the-secret")
    await forged.open()
    try:
        src.write_bytes(b"x")
        with pytest.raises(Exception, match="403"):
            await forged.put("exp_1", "part-0002.csv.gz", src)
    finally:
        await forged.close()


async def test_export_job_artifacts_in_s3(harness: Harness, s3: S3) -> None:
    await harness.start_writer()
    orch = await harness.start_orchestrator(artifact_store="s3", artifact_bucket=BUCKET, s3_endpoint=s3.endpoint,
                                            s3_access_key=s3.access_key, s3_secret_key=s3.secret_key)
    trades, job = await export_three_files(harness, "s3src", "ADA-USD", "csv.gz")
    listed = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1", aws_access_key_id=s3.access_key,
                          aws_secret_access_key=s3.secret_key).list_objects_v2(Bucket=BUCKET, Prefix=job.job_id)
    assert sorted(o["Key"] for o in listed.get("Contents", [])) == stored_names(job)
    _, files = await download_all(orch.api_url, job.job_id)
    tables = [read_artifact(a.filename, files[a.filename]) for a in job.artifacts]
    assert table_rows(tables) == trade_rows(trades)
    assert not any(orch.settings.artifact_path.glob("*/*.csv.gz"))  # nothing left on local disk
