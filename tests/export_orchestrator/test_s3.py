"""The S3 artifact store against a real S3-compatible object store (SeaweedFS, authentication
on): its requests (pyarrow's S3 filesystem: the AWS SDK signs them, no hand-made SigV4) are
accepted with the right secret and refused with a wrong one, and an
export job's artifacts go to the bucket and download exactly. The same test runs the export
orchestrator on another data dir than the history writer, sharing only the history catalog
(PostgreSQL) and warehouse (SeaweedFS): what it exports is exactly what was published."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.export_orchestrator.artifacts import ArtifactNotFound, S3ArtifactStore
from services.history_writer.app import HistoryWriter
from tests.history.seaweedfs import SeaweedFS, lakehouse_env, seaweedfs  # noqa: F401 - fixture

from .conftest import Harness, download_all, export_three_files, read_artifact, stored_names, table_rows, trade_rows


async def test_signed_requests_are_accepted_and_a_wrong_secret_is_refused(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    bucket = seaweedfs.bucket("exports")
    store = S3ArtifactStore(seaweedfs.endpoint, bucket, seaweedfs.access_key, seaweedfs.secret_key)
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

    forged = S3ArtifactStore(seaweedfs.endpoint, bucket, seaweedfs.access_key, "not-the-secret")
    await forged.open()
    try:
        src.write_bytes(b"x")
        with pytest.raises(OSError, match="SIGNATURE_DOES_NOT_MATCH"):  # S3's refusal (HTTP 403) of the forged one
            await forged.put("exp_1", "part-0002.csv.gz", src)
    finally:
        await forged.close()


async def test_export_from_the_lakehouse_on_another_data_dir_to_s3(
    harness: Harness, seaweedfs: SeaweedFS, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    for name, value in lakehouse_env(seaweedfs, pg_dsn, f"exp_{uuid.uuid4().hex[:8]}").items():
        monkeypatch.setenv(name, value)
    harness.writer = HistoryWriter(nats_url=harness.url, data_dir=str(harness.tmp / "writer-host" / "history"),
                                   http_port=0, batch_max_wait_s=0.05, heartbeat_interval_s=60.0)
    await harness.writer.start()
    bucket = seaweedfs.bucket("exports")
    orch_dir = harness.tmp / "export-host"
    orch = await harness.start_orchestrator(
        data_dir=str(orch_dir), history_dir=str(orch_dir / "history"), artifact_store="s3", artifact_bucket=bucket,
        s3_endpoint=seaweedfs.endpoint, s3_access_key=seaweedfs.access_key, s3_secret_key=seaweedfs.secret_key)
    trades, job = await export_three_files(harness, "s3src", "ADA-USD", "csv.gz")
    listed = seaweedfs.client().list_objects_v2(Bucket=bucket, Prefix=job.job_id)
    assert sorted(o["Key"] for o in listed.get("Contents", [])) == stored_names(job)
    _, files = await download_all(orch.api_url, job.job_id)
    tables = [read_artifact(a.filename, files[a.filename]) for a in job.artifacts]
    assert table_rows(tables) == trade_rows(trades)
    assert not any(orch.settings.artifact_path.glob("*/*.csv.gz"))  # nothing left on local disk
    # the two hosts share nothing on disk: no history under the export host's data dir
    assert not (orch_dir / "history").exists() or not any((orch_dir / "history").rglob("*.parquet"))
