"""``marketbus up``: the whole system in one terminal.

Starts the embedded nats-server (unless NATS_URL is set), the four vendor sandboxes and every
service as child processes, shows a live status table from their heartbeats, and stops
everything cleanly on Ctrl-C. Child logs go to ``<data-dir>/logs/<name>.log``.

It owns its data dir and its process tree:

- ``<data-dir>/up.lock`` is locked (``flock``) for as long as ``up`` or any process it started
  lives (the children inherit the locked file): a second ``up`` on the same data dir refuses,
  naming the running one. The nats-server store has a lock of its own (``<data-dir>/nats/store.lock``,
  held by nats-server itself): no second nats-server ever opens the same store.
- SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal closed) stop the whole tree; every child is
  started with ``PR_SET_PDEATHSIG`` (Linux), so it is stopped even when ``up`` is killed -9.
- It supervises: a child (nats-server included) that exits is started again with back-off; a
  service exits non-zero when it cannot repair its state (see ``marketbus.runtime.service``).
- ``MARKETBUS_UP_PORT_OFFSET`` moves the sandboxes (8701-8704), the export API (8710) and the
  services' HTTP ports (9101-9107, the replay's 8711) by an offset, and points the services at
  the moved sandboxes (several systems on one machine, tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
from rich.console import Console
from rich.live import Live

from marketbus.contracts import codec, subjects
from marketbus.contracts.status import ServiceHeartbeat
from marketbus.runtime.backoff import Backoff
from marketbus.runtime.http import port_is_free
from marketbus.runtime.natsserver import NatsServer, NatsServerError, _wait_for_port
from marketbus.security.credentials import CredentialStore

from .common import CREDENTIALS_DIR, URL_FILE
from .services import SANDBOX_MODULE, SANDBOX_PORTS, SERVICE_HTTP_PORTS, existing_services
from .statusview import render

LOCK_FILE = "up.lock"
STORE_LOCK_FILE = "store.lock"
PORT_OFFSET_ENV = "MARKETBUS_UP_PORT_OFFSET"
_PR_SET_PDEATHSIG = 1


class DataDirBusy(RuntimeError):
    """The data dir (or the NATS store) is locked by a live process."""


class DirLock:
    """An exclusive ``flock`` on a file, held by an open descriptor: released by the kernel when
    the last process holding the descriptor exits (no stale lock after a crash or a kill -9).
    The file says who took it, for the message a second taker gets."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, what: str, wait_for_orphans_s: float = 15.0) -> DirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_for_orphans_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
                pid = _pid_in(holder)
                if pid is not None and not _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.2)  # its children are stopping (they die with their parent)
                    continue
                os.close(fd)
                if pid is not None and not _alive(pid):
                    raise DataDirBusy(f"{what} is still held by processes a previous `marketbus up` "
                                      f"({holder}) started, though it is gone; find them with "
                                      f"`fuser -v {self.path}`") from None
                raise DataDirBusy(f"{what} is in use by a running `marketbus up` ({holder}); stop it "
                                  f"first (Ctrl-C in its terminal, or `kill {pid}`)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        os.set_inheritable(fd, True)  # children keep it locked while they live
        self.fd = fd
        return self

    def note(self, text: str) -> None:
        """Add ``text`` (e.g. the NATS URL) to what a second taker is told."""
        if self.fd is not None:
            current = os.pread(self.fd, 4096, 0).decode(errors="replace").strip()
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{current}, {text}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _pid_in(holder: str) -> int | None:
    parts = holder.split(",")[0].split()
    return int(parts[1]) if len(parts) == 2 and parts[0] == "pid" and parts[1].isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGTERM when ``up`` dies, however it dies
    (Linux ``prctl(PR_SET_PDEATHSIG)``; it survives exec, so it works for nats-server too)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl: nobody would tell us
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def port_offset() -> int:
    raw = os.environ.get(PORT_OFFSET_ENV, "0").strip() or "0"
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{PORT_OFFSET_ENV}={raw!r} is invalid: an integer") from None


def sandbox_ports(offset: int) -> dict[str, int]:
    return {name: port + offset for name, port in SANDBOX_PORTS.items()}


def moved_ports_env(offset: int) -> dict[str, str]:
    """The variables that move the sandboxes and the export API by ``offset`` and point the
    services at the moved sandboxes (empty for offset 0: the documented defaults)."""
    if not offset:
        return {}
    ports = sandbox_ports(offset)
    env = {f"MARKETBUS_SANDBOX_{name.upper()}_PORT": str(port) for name, port in ports.items()}
    env.update({
        "MARKETBUS_INGEST_FINX_WS_URL": f"ws://127.0.0.1:{ports['finx']}",
        "MARKETBUS_INGEST_TICKSUPPLY_BASE_URL": f"http://127.0.0.1:{ports['ticksupply']}/v1",
        "MARKETBUS_INGEST_DIGITEX_BASE_URL": f"http://127.0.0.1:{ports['digitex']}/dapi",
        "MARKETBUS_INGEST_SITAGRI_BASE_URL": f"http://127.0.0.1:{ports['sitagri']}",
        "MARKETBUS_ORDER_ROUTER_DIGITEX_URL": f"http://127.0.0.1:{ports['digitex']}",
        "MARKETBUS_EXPORT_API_PORT": str(8710 + offset),
    })
    env.update({var: str(port + offset) for var, port in SERVICE_HTTP_PORTS.values()})
    return env


class SupervisedNatsServer(NatsServer):
    """The embedded nats-server as a child of ``up``: it dies with ``up`` and holds the store lock."""

    keep_fds: tuple[int, ...] = ()  # the store lock (and the data dir's): held while it runs
    restart_at: float | None = None  # set when it exited: started again then (back-off)
    restart_backoff: Backoff | None = None

    def start(self, timeout: float = 10.0) -> SupervisedNatsServer:
        assert self.data_dir is not None
        if self.port is None:
            self.port = 4222 if port_is_free(4222, self.host) else _free_port(self.host)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / f"nats-server-{self.port}.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                self._args(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent(),  # noqa: PLW1509 - a prctl call, no locks taken
                pass_fds=self.keep_fds,
            )
        _wait_for_port(self.host, self.port, self.proc, timeout, log)
        return self


def _free_port(host: str) -> int:
    from marketbus.runtime.http import free_port

    return free_port(host)


class Child:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path,
                 keep_fds: tuple[int, ...] = ()) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.keep_fds = keep_fds
        self.proc: subprocess.Popen[bytes] | None = None
        self.backoff = Backoff(1.0, 30.0)
        self.restart_at: float | None = None
        self.started_at = 0.0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
                preexec_fn=_die_with_parent(),  # noqa: PLW1509 - a prctl call, no locks taken
                pass_fds=self.keep_fds,
            )
        self.started_at = time.monotonic()
        self.restart_at = None

    def exited(self) -> bool:
        """True once, when the child has exited: a restart is then scheduled with back-off."""
        if self.proc is None or self.proc.poll() is None:
            return False
        if time.monotonic() - self.started_at > 60:
            self.backoff.reset()  # it ran fine for a while: this is a new failure, not a loop
        self.restart_at = time.monotonic() + self.backoff.next_delay()
        return True

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
    ports = list(sandbox_ports(port_offset()).values())
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
        console.print(report.summary())
    finally:
        await nc.drain()


async def _ignore(_: Exception) -> None:
    return None


def _say(console: Console, message: str) -> None:
    """Print, unless the terminal is gone (SIGHUP): stopping must not fail on a closed tty."""
    with contextlib.suppress(OSError, ValueError):
        console.print(message)


def _stop_on_signals(stop: asyncio.Event, console: Console) -> None:
    """SIGINT, SIGTERM and SIGHUP stop everything. After SIGHUP the terminal is gone: output goes
    to /dev/null from then on (writing to a hung-up tty fails)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def hangup() -> None:
        console.file = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        stop.set()

    loop.add_signal_handler(signal.SIGHUP, hangup)


def _take_data_dir(data_dir: Path, console: Console) -> DirLock | None:
    try:
        return DirLock(data_dir / LOCK_FILE).acquire(f"the data dir {data_dir}")
    except DataDirBusy as exc:
        _say(console, f"[red]marketbus up: {exc}[/]")
        return None


def _start_nats(data_dir: Path, data_lock: DirLock, config_file: Path | None = None,
                ) -> tuple[SupervisedNatsServer, DirLock]:
    """The embedded nats-server on ``<data-dir>/nats``, once its store lock is ours."""
    store = data_dir / "nats"
    store_lock = DirLock(store / STORE_LOCK_FILE).acquire(f"the NATS store {store}", wait_for_orphans_s=0)
    server = SupervisedNatsServer(data_dir=store, config_file=config_file)
    server.keep_fds = tuple(fd for fd in (store_lock.fd, data_lock.fd) if fd is not None)
    try:
        server.start()
    except NatsServerError:
        store_lock.release()
        raise
    return server, store_lock


def _supervise_nats(server: SupervisedNatsServer, now: float, console: Console) -> None:
    backoff = server.restart_backoff = server.restart_backoff or Backoff(0.2, 10.0)
    if server.restart_at is None and server.proc is not None and server.proc.poll() is not None:
        server.restart_at = now + backoff.next_delay()
        _say(console, f"[red]nats-server exited with {server.proc.returncode}[/]; starting it again in "
                      f"{server.restart_at - now:.1f}s")
    if server.restart_at is not None and now >= server.restart_at:
        server.restart_at = None
        try:
            server.start()
            _say(console, "restarted nats-server")
        except NatsServerError as exc:
            _say(console, f"[red]nats-server did not start: {exc}[/]")
            server.restart_at = time.monotonic() + backoff.next_delay()


def _supervise(children: list[Child], server: SupervisedNatsServer | None, console: Console) -> None:
    """Start again, with back-off, whatever exited."""
    now = time.monotonic()
    if server is not None:
        _supervise_nats(server, now, console)
    for child in children:
        if child.exited():
            assert child.proc is not None
            _say(console, f"[red]{child.name} exited with {child.proc.returncode}[/]; restarting it in "
                          f"{child.restart_at - now:.1f}s (log: {child.log_path})")  # type: ignore[operator]
            child.proc = None
        elif child.proc is None and child.restart_at is not None and now >= child.restart_at:
            child.start()
            _say(console, f"restarted {child.name}")


async def run_up(data_dir: Path, sandboxes: bool, duration: float | None, console: Console) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    data_lock = _take_data_dir(data_dir, console)
    if data_lock is None:
        return 1
    try:
        return await _run_locked(data_dir, data_lock, sandboxes, duration, console)
    except DataDirBusy as exc:
        _say(console, f"[red]marketbus up: {exc}[/]")
        return 1
    finally:
        data_lock.release()


async def _run_locked(data_dir: Path, data_lock: DirLock, sandboxes: bool, duration: float | None,
                      console: Console) -> int:
    log_dir = data_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    server: SupervisedNatsServer | None = None
    store_lock: DirLock | None = None
    store: CredentialStore | None = None
    nats_url = os.environ.get("NATS_URL")
    if nats_url:
        console.print(f"using NATS at [bold]{nats_url}[/] (NATS_URL is set: nothing started)")
    else:
        store = credentials(data_dir)
        server, store_lock = _start_nats(data_dir, data_lock, store.auth_conf)
        nats_url = server.url
        (data_dir / URL_FILE).write_text(nats_url + "\n")  # how the other `marketbus` commands find it
        console.print(f"embedded nats-server with JetStream at [bold]{nats_url}[/] (data in {data_dir / 'nats'}; "
                      f"`marketbus tail|order|history|export` in another terminal find it there)")
        console.print(f"auth on: one nkey identity per service, seeds in {store.directory} (0600)")
    try:
        await provision_embedded(nats_url, store, console)
    except Exception as exc:
        if server is not None:  # our own server: nothing can run without provisioning
            (data_dir / URL_FILE).unlink(missing_ok=True)
            server.stop()
            if store_lock is not None:
                store_lock.release()
            raise
        console.print(f"[yellow]could not provision {nats_url} ({exc!r}); the services wait until "
                      "`marketbus provision` has run there[/]")
    data_lock.note(f"NATS {nats_url}")

    env = dict(os.environ, NATS_URL=nats_url, MARKETBUS_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    env.update({k: v for k, v in moved_ports_env(port_offset()).items() if k not in os.environ})
    keep = (data_lock.fd,) if data_lock.fd is not None else ()
    children: list[Child] = []
    if sandboxes:
        children.append(Child("sandboxes", [sys.executable, "-m", SANDBOX_MODULE, "all"], env, log_dir, keep))
    for name, module in existing_services():
        children.append(Child(name, [sys.executable, "-m", module], {**env, **identity_env(store, name)}, log_dir,
                              keep))

    heartbeats: dict[str, ServiceHeartbeat] = {}
    stop = asyncio.Event()
    _stop_on_signals(stop, console)

    nc: Any = None
    try:
        for child in children:
            child.start()
            console.print(f"started {child.name} (log: {child.log_path})")
            if child.name == "sandboxes":
                await _wait_for_sandboxes(console)  # the ingestors and the router dial them at start
        nc = await nats.connect(nats_url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=1,
                                error_cb=_ignore,  # the table shows the outage; no traceback a second
                                **connect_as(store, "reader"))

        async def on_heartbeat(msg: Any) -> None:
            with contextlib.suppress(Exception):
                hb = codec.decode(msg.data)
                if isinstance(hb, ServiceHeartbeat) and subjects.published_by(msg.subject, hb.service):
                    heartbeats[f"{hb.service}/{hb.instance}"] = hb

        await nc.subscribe(subjects.ALL_HEARTBEATS, cb=on_heartbeat)
        deadline = time.monotonic() + duration if duration else None
        with Live(render(heartbeats), console=console, refresh_per_second=2, transient=False,
                  vertical_overflow="visible") as live:
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                with contextlib.suppress(OSError, ValueError):
                    live.update(render(heartbeats, title=f"marketbus — NATS {nats_url} — Ctrl-C to stop", max_feeds=6))
                if not stop.is_set():
                    _supervise(children, server, console)
                if deadline and time.monotonic() > deadline:
                    break
    finally:
        _say(console, "stopping...")
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        for child in reversed(children):
            child.terminate()
        for child in reversed(children):
            child.wait(15)
        if server is not None:
            (data_dir / URL_FILE).unlink(missing_ok=True)
            server.stop()
        if store_lock is not None:
            store_lock.release()
        _say(console, "stopped.")
    return 0
