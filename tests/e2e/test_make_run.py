"""`marketbus up` (what `make run` runs), as a newcomer runs it: embedded NATS, the sandboxes and
every service come up, report healthy heartbeats with flowing feeds, and stop cleanly. On free
ports (MARKETBUS_UP_PORT_OFFSET), so it can run next to another `marketbus up`. While it runs,
Prometheus scrapes every service at the health/metrics URL its heartbeat announces and its HTTP
API returns a marketbus metric of each (issue #17: monitoring you can open)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from marketbus.cli.services import existing_services
from marketbus.runtime.http import free_port, port_is_free
from tests.monitoring.conftest import _tool as monitoring_tool

from .uptree import MARKETBUS, SANDBOX_BASE, announced_urls, free_offset, up_env

pytestmark = pytest.mark.whole_system  # one whole system at a time (tests/conftest.py)


@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    """Debian's prometheus (tools/install_prometheus.sh installs it when missing)."""
    return monitoring_tool("prometheus")


def _prometheus_sees_every_service(prometheus_bin: str, urls: dict[str, str], tmp_path: Path) -> dict[str, list[str]]:
    """Prometheus scraping each service's announced URL every second: returns, per service, its
    ``up`` value and the marketbus metrics with a sample, read through the HTTP API."""
    config = {"global": {"scrape_interval": "1s"},
              "scrape_configs": [{"job_name": "marketbus", "static_configs": [
                  {"targets": [url.split("://", 1)[1].rstrip("/")], "labels": {"service": name}}
                  for name, url in sorted(urls.items())]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    log = (tmp_path / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def query(promql: str) -> list[dict]:
        response = httpx.get(f"{api}/api/v1/query", params={"query": promql}, timeout=5)
        response.raise_for_status()  # 503 "Service Unavailable" until Prometheus is ready: polled again
        reply = response.json()
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    seen: dict[str, list[str]] = {}
    try:
        deadline = time.monotonic() + 60  # a bound, not a wait: it ends when every target is up
        while time.monotonic() < deadline and prometheus.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                up = {r["metric"]["service"]: r["value"][1] for r in query('up{job="marketbus"}')}
                metrics = query('count by (service, __name__) ({job="marketbus", __name__=~"marketbus_.+"})')
                seen = {name: [up.get(name, "absent"), *sorted({r["metric"]["__name__"] for r in metrics
                                                                if r["metric"]["service"] == name})]
                        for name in urls}
                if all(v[0] == "1" and len(v) > 1 for v in seen.values()):
                    break
            time.sleep(0.3)
    finally:
        prometheus.terminate()
        prometheus.wait(10)
        log.close()
    assert seen, (tmp_path / "prometheus.log").read_text()[-3000:]
    return seen


def test_up_runs_the_whole_system_and_stops_cleanly(tmp_path: Path, prometheus_bin: str) -> None:
    offset = free_offset()
    ports = [p + offset for p in SANDBOX_BASE]
    env = up_env(offset)
    env["COLUMNS"] = "220"
    # tests/ephemeral_ports.py does not cover the replay service (fixed 8711): a free port here too
    env.setdefault("MARKETBUS_REPLAY_HTTP_PORT", "0")
    data_dir = tmp_path / "mb"
    # --duration: only a safety net; the test stops `up` with Ctrl-C once it has seen what it needs
    up = subprocess.Popen([MARKETBUS, "up", "--data-dir", str(data_dir), "--duration", "600"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # meanwhile, in "another terminal" (no NATS_URL; this machine kind runs its own NATS on
        # 4222, so the embedded server is elsewhere): the CLI finds the system through the data dir
        deadline = time.monotonic() + 90
        while not (data_dir / "nats.url").exists() and time.monotonic() < deadline and up.poll() is None:
            time.sleep(0.2)
        assert (data_dir / "nats.url").exists(), up.communicate(timeout=60)[0][-3000:]
        # every service has started (the router among them: it has read the exchange's metadata)
        names = {name for name, _module in existing_services()}
        urls = asyncio.run(announced_urls(data_dir, names))
        placed = subprocess.run([MARKETBUS, "order", "place", "FS-BTCUSD", "buy", "1", "--price", "20000"],
                                env=env | {"MARKETBUS_DATA_DIR": str(data_dir)}, capture_output=True, text=True,
                                timeout=60, check=False)
        scraped = _prometheus_sees_every_service(prometheus_bin, urls, tmp_path)
        up.send_signal(signal.SIGINT)  # Ctrl-C, as after `make run`: everything stops cleanly
        out, _ = up.communicate(timeout=120)
    finally:
        if up.poll() is None:
            up.kill()
    assert placed.returncode == 0 and "accepted" in placed.stdout, placed.stdout + placed.stderr
    assert set(urls) == names, f"heartbeats without an http_url: {names - set(urls)}"
    # every target up, and each service's own marketbus metrics have samples in Prometheus
    assert {name: v[0] for name, v in scraped.items()} == dict.fromkeys(names, "1"), scraped
    assert all("marketbus_up" in v for v in scraped.values()), scraped
    assert up.returncode == 0, out[-4000:]
    assert not (data_dir / "nats.url").exists()  # removed on stop
    assert "embedded nats-server with JetStream" in out
    assert "started sandboxes" in out
    final_table = out[out.rfind("marketbus"):]
    for name, _module in existing_services():
        assert f"started {name}" in out, out[-3000:]
        assert name in final_table, f"{name} never reported a heartbeat:\n{final_table}"
        assert f"{name} exited" not in out, (tmp_path / "mb" / "logs" / f"{name}.log").read_text()[-3000:]
    assert "stopped." in out
    # data flowed: at least one feed shows events
    assert re.search(r"connected\s+│\s+[\d,.]+\s+│\s+[1-9][\d,]*", final_table), final_table
    # nothing left behind: every port is free again
    assert all(port_is_free(p) for p in ports)
