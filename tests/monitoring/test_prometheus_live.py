"""Prometheus (Debian's binary) with deploy/monitoring's scrape config scrapes real services —
the history writer, the export orchestrator and the bus exporter, started as `python -m ...`
processes — and its HTTP API returns their metrics, the history writer's consumer lag included."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from marketbus.runtime.http import free_port

from .conftest import MONITORING, ROOT


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **env},
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"{url} not ready after {timeout} s:\n{log.read_text()}")


def _config_for(ports: dict[str, int], path: Path) -> Path:
    """deploy/monitoring/prometheus.yml with the running services' ports, scraping every second."""
    doc = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    doc["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    doc["rule_files"] = [str(MONITORING / "alerts.yml")]
    job = doc["scrape_configs"][0]
    job["static_configs"] = [
        {**target, "targets": [f"127.0.0.1:{ports[target['labels']['service']]}"]}
        for target in job["static_configs"] if target["labels"]["service"] in ports
    ]
    path.write_text(yaml.safe_dump(doc))
    return path


def _query(api: str, promql: str) -> list[dict]:
    reply = httpx.get(f"{api}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


def test_prometheus_scrapes_the_services_and_the_consumer_lag(
    nats_url: str, prometheus_bin: str, tmp_path: Path,
) -> None:
    durable = f"hw_{uuid.uuid4().hex[:8]}"
    ports = {"history_writer": free_port(), "bus_exporter": free_port(), "export_orchestrator": free_port()}
    writer_env = {"NATS_URL": nats_url, "MARKETBUS_HISTORY_WRITER_HTTP_PORT": str(ports["history_writer"]),
                  "MARKETBUS_HISTORY_WRITER_DATA_DIR": str(tmp_path / "history"),
                  "MARKETBUS_HISTORY_WRITER_DURABLE": durable, "MARKETBUS_HISTORY_WRITER_QUERY_QUEUE": durable}
    exporter_env = {"NATS_URL": nats_url, "MARKETBUS_BUS_EXPORTER_HTTP_PORT": str(ports["bus_exporter"]),
                    "MARKETBUS_BUS_EXPORTER_POLL_INTERVAL_S": "0.5"}
    export_env = {
        "NATS_URL": nats_url,
        "MARKETBUS_EXPORT_HTTP_PORT": str(ports["export_orchestrator"]),
        "MARKETBUS_EXPORT_API_PORT": str(free_port()),
        "MARKETBUS_EXPORT_DATA_DIR": str(tmp_path / "export"),
        # reads the history the writer keeps (there is no "nats" history backend any more)
        "MARKETBUS_EXPORT_HISTORY_BACKEND": "iceberg",
        "MARKETBUS_EXPORT_HISTORY_DIR": str(tmp_path / "history"),
    }
    web = free_port()
    api = f"http://127.0.0.1:{web}"
    config = _config_for(ports, tmp_path / "prometheus.yml")
    with (
        _process([sys.executable, "-m", "services.history_writer"], writer_env, tmp_path / "writer.log") as writer,
        _process([sys.executable, "-m", "marketbus.runtime.consumer_lag"], exporter_env,
                 tmp_path / "exporter.log") as exporter,
        _process([sys.executable, "-m", "services.export_orchestrator"], export_env,
                 tmp_path / "export.log") as orchestrator,
        _process([prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                  f"--web.listen-address=127.0.0.1:{web}"], {}, tmp_path / "prometheus.log") as prometheus,
    ):
        _wait_http(f"http://127.0.0.1:{ports['history_writer']}/healthz", writer, tmp_path / "writer.log")
        _wait_http(f"http://127.0.0.1:{ports['bus_exporter']}/healthz", exporter, tmp_path / "exporter.log")
        _wait_http(f"http://127.0.0.1:{ports['export_orchestrator']}/healthz", orchestrator, tmp_path / "export.log")
        _wait_http(f"{api}/-/ready", prometheus, tmp_path / "prometheus.log")
        lag_query = f'marketbus_jetstream_consumer_pending{{stream="MD", consumer="{durable}_md"}}'
        deadline = time.monotonic() + 30
        while True:
            up = {r["metric"]["service"]: r["value"][1] for r in _query(api, 'up{job="marketbus"}')}
            service_up = {r["metric"]["service"]: r["value"][1] for r in _query(api, "marketbus_up")}
            lag = _query(api, lag_query)
            if up == dict.fromkeys(ports, "1") and lag and set(ports) <= service_up.keys():
                break
            if time.monotonic() > deadline:
                pytest.fail(f"up={up} marketbus_up={service_up} lag={lag}\n"
                            + (tmp_path / "prometheus.log").read_text()[-3000:])
            time.sleep(0.5)
        rules = httpx.get(f"{api}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert {service_up[name] for name in ports} == {"1"}  # every service's own marketbus_up
    assert lag[0]["metric"]["job"] == "marketbus" and float(lag[0]["value"][1]) >= 0
    assert {g["name"] for g in rules} >= {"marketbus-services", "marketbus-feeds", "marketbus-jetstream"}
