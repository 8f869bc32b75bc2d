"""examples/replay_vwap.py stopped by Ctrl-C (SIGINT) while it waits for trades: it exits with
130 (the marketbus CLI's code for Ctrl-C) and prints no traceback."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import nats

from marketbus.contracts import codec, subjects

from .conftest import T0, trade, unique_symbol

ROOT = Path(__file__).resolve().parents[2]


async def test_vwap_example_exits_quietly_on_ctrl_c(nats_url: str) -> None:
    prefix = f"replay.int{uuid.uuid4().hex[:8]}"  # a playback prefix: outside every stream
    nc = await nats.connect(nats_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "examples" / "replay_vwap.py"), "--nats-url", nats_url, "--prefix", prefix,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        event = trade(unique_symbol("I"), 1, T0)
        subject = subjects.playback_data(prefix, subjects.for_event(event))
        line = b""
        for _ in range(600):  # until it prints the trade's line: it runs and waits for more
            await nc.publish(subject, codec.encode(event), headers=codec.headers_for(event))
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), 0.2)
            except TimeoutError:
                continue
            break
        assert b"vwap=" in line, (line, proc.returncode)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await nc.close()
    assert proc.returncode == 130, (proc.returncode, err.decode()[-2000:])
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err.decode()[-2000:]
