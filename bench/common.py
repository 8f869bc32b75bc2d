"""What several benchmarks share: a vendor sandbox in its own process (so its CPU is not the
benchmark's), started on a free port, and a wait until it answers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared")]

from marketbus.runtime.http import free_port  # noqa: E402


def start_sandbox(name: str, env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m services.sandbox <name>`` on a free port; returns (process, "host:port")."""
    port = free_port()
    env = os.environ | {f"MARKETBUS_SANDBOX_{name.upper()}_PORT": str(port), "PYTHONPATH": f"{ROOT}:{ROOT / 'shared'}"}
    env |= env_extra or {}
    proc = subprocess.Popen([sys.executable, "-m", "services.sandbox", name], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"127.0.0.1:{port}"


async def wait_ready(url: str, deadline_s: float = 20) -> None:
    """Poll the sandbox's admin health route until it answers."""
    deadline = time.monotonic() + deadline_s
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            try:
                if (await http.get(f"{url}/_sandbox/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"sandbox at {url} did not start within {deadline_s}s")
