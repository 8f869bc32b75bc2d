"""``marketbus up``: the whole system in one terminal.

Starts the embedded nats-server (unless NATS_URL is set), the four vendor sandboxes and every
service as child processes, shows a live status table from their heartbeats, and stops
everything cleanly on Ctrl-C. Child logs go to ``<data-dir>/logs/<name>.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
from rich.console import Console
from rich.live import Live

from marketbus.contracts import codec, subjects
from marketbus.contracts.status import ServiceHeartbeat
from marketbus.runtime.http import port_is_free
from marketbus.runtime.natsserver import NatsServer

from .common import URL_FILE
from .services import SANDBOX_MODULE, SANDBOX_PORTS, existing_services
from .statusview import render


class Child:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
                self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _wait_for_sandboxes(console: Console, timeout: float = 30.0) -> None:
    ports = list(SANDBOX_PORTS.values())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(not port_is_free(port) for port in ports):
            return
        await asyncio.sleep(0.2)
    console.print(f"[yellow]sandboxes not all listening after {timeout:.0f}s; starting the services anyway[/]")


async def run_up(data_dir: Path, sandboxes: bool, duration: float | None, console: Console) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    log_dir = data_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    server: NatsServer | None = None
    nats_url = os.environ.get("NATS_URL")
    if nats_url:
        console.print(f"using NATS at [bold]{nats_url}[/] (NATS_URL is set: nothing started)")
    else:
        server = NatsServer(data_dir=data_dir / "nats").start()
        nats_url = server.url
        (data_dir / URL_FILE).write_text(nats_url + "\n")  # how the other `marketbus` commands find it
        console.print(f"embedded nats-server with JetStream at [bold]{nats_url}[/] (data in {data_dir / 'nats'}; "
                      f"`marketbus tail|order|history|export` in another terminal find it there)")

    env = dict(os.environ, NATS_URL=nats_url, MARKETBUS_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    children: list[Child] = []
    if sandboxes:
        children.append(Child("sandboxes", [sys.executable, "-m", SANDBOX_MODULE, "all"], env, log_dir))
    for name, module in existing_services():
        children.append(Child(name, [sys.executable, "-m", module], env, log_dir))

    heartbeats: dict[str, ServiceHeartbeat] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    nc: Any = None
    try:
        for child in children:
            child.start()
            console.print(f"started {child.name} (log: {child.log_path})")
            if child.name == "sandboxes":
                await _wait_for_sandboxes(console)  # the ingestors and the router dial them at start
        nc = await nats.connect(nats_url.split(","))

        async def on_heartbeat(msg: Any) -> None:
            with contextlib.suppress(Exception):
                hb = codec.decode(msg.data)
                if isinstance(hb, ServiceHeartbeat):
                    heartbeats[f"{hb.service}/{hb.instance}"] = hb

        await nc.subscribe(subjects.ALL_HEARTBEATS, cb=on_heartbeat)
        deadline = time.monotonic() + duration if duration else None
        with Live(render(heartbeats), console=console, refresh_per_second=2, transient=False,
                  vertical_overflow="visible") as live:
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                live.update(render(heartbeats, title=f"marketbus — NATS {nats_url} — Ctrl-C to stop", max_feeds=6))
                for child in children:
                    if child.proc is not None and child.proc.poll() is not None and not stop.is_set():
                        console.print(f"[red]{child.name} exited with {child.proc.returncode}[/]; see {child.log_path}")
                        child.proc = None
                if deadline and time.monotonic() > deadline:
                    break
    finally:
        console.print("stopping...")
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.drain()
        for child in reversed(children):
            child.terminate()
        for child in reversed(children):
            child.wait(15)
        if server is not None:
            (data_dir / URL_FILE).unlink(missing_ok=True)
            server.stop()
        console.print("stopped.")
    return 0
