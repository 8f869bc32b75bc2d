"""`marketbus up` (what `make run` runs), as a newcomer runs it: embedded NATS, the sandboxes and
every service come up, report healthy heartbeats with flowing feeds, and stop cleanly. On free
ports (MARKETBUS_UP_PORT_OFFSET), so it can run next to another `marketbus up`."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from marketbus.cli.services import existing_services
from marketbus.runtime.http import port_is_free

from .uptree import MARKETBUS, SANDBOX_BASE, free_offset, up_env


def test_up_runs_the_whole_system_and_stops_cleanly(tmp_path: Path) -> None:
    offset = free_offset()
    ports = [p + offset for p in SANDBOX_BASE]
    env = up_env(offset)
    env["COLUMNS"] = "220"
    data_dir = tmp_path / "mb"
    up = subprocess.Popen([MARKETBUS, "up", "--data-dir", str(data_dir), "--duration", "35"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # meanwhile, in "another terminal" (no NATS_URL; this machine kind runs its own NATS on
        # 4222, so the embedded server is elsewhere): the CLI finds the system through the data dir
        deadline = time.monotonic() + 30
        while not (data_dir / "nats.url").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(12)  # the router is up and has read the exchange's metadata
        placed = subprocess.run([MARKETBUS, "order", "place", "FS-BTCUSD", "buy", "1", "--price", "20000"],
                                env=env | {"MARKETBUS_DATA_DIR": str(data_dir)}, capture_output=True, text=True,
                                timeout=30, check=False)
        out, _ = up.communicate(timeout=120)
    finally:
        if up.poll() is None:
            up.kill()
    assert placed.returncode == 0 and "accepted" in placed.stdout, placed.stdout + placed.stderr
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
