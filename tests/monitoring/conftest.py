"""Fixtures of the monitoring tests: promtool/prometheus from Debian's package (installed by
tools/install_prometheus.sh when missing; a missing tool fails, never skips)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"



def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        result = subprocess.run(["sh", str(ROOT / "tools" / "install_prometheus.sh")],
                                capture_output=True, text=True, timeout=600, check=False)
        path = shutil.which(name)
        if path is None:
            pytest.fail(f"{name} is missing and tools/install_prometheus.sh could not install it:\n"
                        f"{result.stdout}{result.stderr}")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _tool("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return _tool("prometheus")
