"""`marketbus up` (what `make run` runs), as a newcomer runs it: embedded NATS, the sandboxes and
every service come up, report healthy heartbeats with flowing feeds, and stop cleanly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from marketbus.cli.services import existing_services
from marketbus.runtime.http import port_is_free

MARKETBUS = str(Path(sys.executable).parent / "marketbus")
SANDBOX_PORTS = (8701, 8702, 8703, 8704)


def test_up_runs_the_whole_system_and_stops_cleanly(tmp_path: Path) -> None:
    busy = [p for p in SANDBOX_PORTS if not port_is_free(p)]
    if busy:
        pytest.fail(f"sandbox ports {busy} are in use: stop the other marketbus before running this test")
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    env["COLUMNS"] = "220"
    proc = subprocess.run(
        [MARKETBUS, "up", "--data-dir", str(tmp_path / "mb"), "--duration", "35"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
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
    assert all(port_is_free(p) for p in SANDBOX_PORTS)
