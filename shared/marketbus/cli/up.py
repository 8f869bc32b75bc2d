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
from marketbus.security.credentials import CredentialStore

from .common import CREDENTIALS_DIR, URL_FILE
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


def credentials(data_dir: Path) -> CredentialStore:
    """Auth on by default: an nkey seed per identity in <data dir>/credentials (0600, kept across
    runs) and the nats-server authorization generated from the identities' declarations."""
    store = CredentialStore(data_dir / CREDENTIALS_DIR)
    store.ensure()
    return store


def identity_env(store: CredentialStore | None, identity: str) -> dict[str, str]:
    """The environment that makes a child connect as ``identity`` (nothing without credentials)."""
    if store is None:
        return {}
    from marketbus.security.identities import inbox_prefix

    return {"NATS_NKEY_SEED_FILE": str(store.seed_file(identity)), "NATS_INBOX_PREFIX": inbox_prefix(identity)}


def connect_as(store: CredentialStore | None, identity: str) -> dict[str, Any]:
    """nats.connect options for ``identity``."""
    env = identity_env(store, identity)
    return {"nkeys_seed": env["NATS_NKEY_SEED_FILE"], "inbox_prefix": env["NATS_INBOX_PREFIX"]} if env else {}


async def provision_embedded(nats_url: str, store: CredentialStore | None, console: Console) -> None:
    """Provision as the admin identity before the services start (they wait for it otherwise)."""
    from marketbus.runtime.provision import provision

    nc = await nats.connect(nats_url.split(","), **connect_as(store, "admin"))
    try:
        report = await provision(nc.jetstream(), int(os.environ.get("MARKETBUS_STREAM_REPLICAS", "1") or 1))
        console.print(f"provisioned: {report.summary()}")
    finally:
        await nc.drain()


async def run_up(data_dir: Path, sandboxes: bool, duration: float | None, console: Console) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    log_dir = data_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    server: NatsServer | None = None
    store: CredentialStore | None = None
    nats_url = os.environ.get("NATS_URL")
    if nats_url:
        console.print(f"using NATS at [bold]{nats_url}[/] (NATS_URL is set: nothing started)")
    else:
        store = credentials(data_dir)
        server = NatsServer(data_dir=data_dir / "nats", config_file=store.auth_conf).start()
        nats_url = server.url
        (data_dir / URL_FILE).write_text(nats_url + "\n")  # how the other `marketbus` commands find it
        console.print(f"embedded nats-server with JetStream at [bold]{nats_url}[/] (data in {data_dir / 'nats'}; "
                      f"`marketbus tail|order|history|export` in another terminal find it there)")
        console.print(f"auth on: one nkey identity per service, seeds in {store.directory} (0600)")
    try:
        await provision_embedded(nats_url, store, console)
    except Exception as exc:  # noqa: BLE001 - an external server may be provisioned by its operator
        if server is not None:  # our own server: nothing can run without provisioning
            (data_dir / URL_FILE).unlink(missing_ok=True)
            server.stop()
            raise
        console.print(f"[yellow]could not provision {nats_url} ({exc!r}); the services wait until "
                      "`marketbus provision` has run there[/]")

    env = dict(os.environ, NATS_URL=nats_url, MARKETBUS_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    children: list[Child] = []
    if sandboxes:
        children.append(Child("sandboxes", [sys.executable, "-m", SANDBOX_MODULE, "all"], env, log_dir))
    for name, module in existing_services():
        children.append(Child(name, [sys.executable, "-m", module], {**env, **identity_env(store, name)}, log_dir))

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
        nc = await nats.connect(nats_url.split(","), **connect_as(store, "reader"))

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
