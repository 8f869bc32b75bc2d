"""The whole system with auth on (what `marketbus up` runs by default): every service under its
own identity, the CLI as the operator; data flows, history answers, an export completes, an order
is accepted, and no permission was ever refused. Binds the sandbox ports 8701-8704 like tests/e2e."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from marketbus.cli.services import existing_services
from marketbus.runtime.http import port_is_free
from tests.e2e.uptree import announced_urls

MARKETBUS = str(Path(sys.executable).parent / "marketbus")
SANDBOX_PORTS = (8701, 8702, 8703, 8704, 8710)

pytestmark = pytest.mark.whole_system


def _cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MARKETBUS, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_the_whole_system_runs_with_auth_on(tmp_path: Path) -> None:
    deadline = time.monotonic() + 120  # tests/e2e may hold the ports: wait for them
    while any(not port_is_free(p) for p in SANDBOX_PORTS) and time.monotonic() < deadline:
        time.sleep(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_") and k != "MARKETBUS_DATA_DIR"}
    env["COLUMNS"] = "220"
    data_dir = tmp_path / "mb"
    # --duration: only a safety net (the test stops it with Ctrl-C); on a loaded machine the steps
    # below take minutes, and `up` must not end (and remove nats.url) before the last CLI call
    up = subprocess.Popen([MARKETBUS, "up", "--data-dir", str(data_dir), "--duration", "600"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cli_env = env | {"MARKETBUS_DATA_DIR": str(data_dir)}
    try:
        deadline = time.monotonic() + 60
        while not (data_dir / "nats.url").exists() and time.monotonic() < deadline and up.poll() is None:
            time.sleep(0.2)
        assert (data_dir / "nats.url").exists(), up.communicate(timeout=60)[0][-3000:]
        url = (data_dir / "nats.url").read_text().strip()
        # ready: every service has sent its first heartbeat (sent only once its start-up is over, the
        # router's included: it has read the exchange's metadata) and some feed has counted events
        names = {name for name, _module in existing_services()}
        announced = asyncio.run(announced_urls(data_dir, names))
        placed = _cli(cli_env, "order", "place", "FS-BTCUSD", "buy", "1", "--price", "20000")
        deadline = time.monotonic() + 45
        history = _cli(cli_env, "history", "coverage", "*.*.*.*")
        while not re.search(r"[1-9]", history.stdout) and time.monotonic() < deadline:  # data stored yet?
            time.sleep(1)
            history = _cli(cli_env, "history", "coverage", "*.*.*.*")
        export = _cli(cli_env, "export", "create", "trade.digitex.*.*", "--start", "-10m", "--format", "csv.gz",
                      "--wait", timeout=90)
        listed = _cli(cli_env, "order", "list")
        router = _cli(cli_env, "order", "status")
        tail = _cli(cli_env, "tail", "ref.>", "--last", "-n", "1", "--json")
        status = _cli(cli_env, "status", "--json")
        # feed control through every ingestor, as the operator
        feed_changes = [_cli(cli_env, "feed", *args) for args in (
            ("add", "finx", "ETH:USD"), ("add", "ticksupply", "104"), ("pause", "digitex", "FS:ETHUSD"),
            ("remove", "sitagri", "/market/sources/SITSISALMONI/index/SISALMONI"))]
        feed_refused = _cli(cli_env, "feed", "add", "digitex", "FS:NOPE")
        feeds = _cli(cli_env, "feed", "list", "--all", "--json")
        anonymous = _cli(env | {"NATS_URL": url,
                                "MARKETBUS_DATA_DIR": str(tmp_path / "elsewhere")}, "status")
        up.send_signal(signal.SIGINT)  # Ctrl-C: everything stops cleanly
        out, _ = up.communicate(timeout=120)
    finally:
        if up.poll() is None:
            up.kill()
    creds = data_dir / "credentials"
    logs = {p.name: p.read_text() for p in (data_dir / "logs").glob("*.log")}
    assert up.returncode == 0, out[-4000:]
    assert "auth on" in out
    assert set(announced) == names, f"no heartbeat with an http_url from {names - set(announced)}"
    assert placed.returncode == 0 and "accepted" in placed.stdout, placed.stdout + placed.stderr
    assert "as identity operator" in placed.stderr  # the CLI says whom it talks to, and as whom
    assert history.returncode == 0 and re.search(r"[1-9]", history.stdout), history.stdout + history.stderr
    assert export.returncode == 0 and "succeeded" in export.stdout, export.stdout + export.stderr
    for name, result in (("order list", listed), ("order status", router), ("tail --last", tail), ("status", status)):
        assert result.returncode == 0, f"{name}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    assert "FS-BTCUSD" in listed.stdout and tail.stdout.strip() and "ingest_finx" in status.stdout
    for result in feed_changes:
        assert result.returncode == 0, result.stdout + result.stderr
    assert feed_refused.returncode == 1 and "unknown instrument 'FS:NOPE'" in feed_refused.stderr
    states = {(f["vendor"], f["instrument"]): f["state"] for f in map(json.loads, feeds.stdout.splitlines())}
    assert {states[("finx", "ETH:USD")], states[("ticksupply", "104")]} == {"active"}
    assert states[("digitex", "FS:ETHUSD")] == "paused"
    assert states[("sitagri", "/market/sources/SITSISALMONI/index/SISALMONI")] == "removed"
    assert states[("finx", "BTC:USD")] == states[("ticksupply", "101")] == "active"  # seeded from the settings
    assert anonymous.returncode != 0 and "AuthorizationViolation" in re.sub(r"[\s│]", "", anonymous.stderr)
    for name, _module in existing_services():
        assert f"started {name}" in out
        assert f"{name} exited" not in out, logs.get(f"{name}.log", "")[-3000:]
    assert re.search(r"connected\s+│\s+[\d,.]+\s+│\s+[1-9][\d,]*", out[out.rfind("marketbus"):])
    violations = {n: t for n, t in logs.items() if "ermissions violation" in t}
    assert not violations, {n: re.findall(r".*ermissions violation.*", t)[:5] for n, t in violations.items()}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in creds.glob("*.nk"))
    assert stat.S_IMODE((data_dir / "export-signing.key").stat().st_mode) == 0o600
