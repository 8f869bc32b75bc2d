"""Running `marketbus up` as a user does, on free ports, and looking at its process tree (/proc)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats

from marketbus.cli.services import existing_services
from marketbus.contracts import codec, subjects
from marketbus.contracts.status import ServiceHeartbeat
from marketbus.runtime.http import port_is_free
from marketbus.security.identities import inbox_prefix

MARKETBUS = str(Path(sys.executable).parent / "marketbus")
SANDBOX_BASE = (8701, 8702, 8703, 8704, 8710)


def free_offset() -> int:
    """An offset that moves the sandbox and export ports (8701-8704, 8710) onto free ones."""
    rng = random.Random()
    for _ in range(200):
        offset = rng.randrange(20_000, 50_000, 20)
        if all(port_is_free(p + offset) for p in SANDBOX_BASE):
            return offset
    raise RuntimeError("no free port range for the sandboxes")


def up_env(offset: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "MARKETBUS_DATA_DIR")}
    env.update(COLUMNS="200", MARKETBUS_UP_PORT_OFFSET=str(offset), **extra)
    return env


def start_up(data_dir: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([MARKETBUS, "up", "--data-dir", str(data_dir), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def tree_of(pid: int) -> list[int]:
    """Every descendant of ``pid``."""
    found, todo = [], [pid]
    while todo:
        for child in children_of(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def expected_children(sandboxes: bool = True) -> int:
    """nats-server + the sandboxes + every service."""
    return 1 + int(sandboxes) + len(existing_services())


def wait_for_tree(up: subprocess.Popen[str], n: int, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert up.poll() is None, up.stdout.read() if up.stdout else ""
        tree = tree_of(up.pid)
        if len(children_of(up.pid)) >= n:
            return tree
        time.sleep(0.2)
    raise AssertionError(f"`marketbus up` did not start {n} children within {timeout}s")


def wait_started(data_dir: Path, timeout: float) -> None:
    """Every service has logged the end of its start-up (a JetStream cluster may still be electing
    its leaders when they first try: they exit and `up` restarts them)."""
    deadline = time.monotonic() + timeout
    waiting = [name for name, _ in existing_services()]
    while waiting and time.monotonic() < deadline:
        logs = {n: data_dir / "logs" / f"{n}.log" for n in waiting}
        waiting = [n for n in waiting if not logs[n].exists()
                   or f"{n} started (health" not in logs[n].read_text(errors="replace")]
        time.sleep(0.2)
    assert not waiting, f"not started within {timeout}s: {waiting}"


def wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in left if alive(p)]
    return left


def names(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:120])
        except OSError:
            out.append(str(pid))
    return out


def stop(up: subprocess.Popen[str]) -> str:
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
    try:
        out, _ = up.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        up.kill()
        out, _ = up.communicate()
    return out


async def announced_urls(data_dir: Path, names: set[str], timeout: float = 180.0) -> dict[str, str]:
    """service -> the health/metrics URL its heartbeat carries, read as the ``reader`` identity
    with the credentials `up` generated, as a user's dashboard would. Returns once every service
    of ``names`` has announced one and some feed has counted events, or after ``timeout``.

    A service sends its first heartbeat only when its start-up is over (the order router has read
    the exchange's metadata and bound its command consumer): this is the readiness the test waits
    for, however long a loaded host takes to get there."""
    nc = await nats.connect((data_dir / "nats.url").read_text().strip(), max_reconnect_attempts=0,
                            nkeys_seed=str(data_dir / "credentials" / "reader.nk"), inbox_prefix=inbox_prefix("reader"))
    urls: dict[str, str] = {}
    flowed: set[str] = set()  # feeds that are connected and have counted events (`up`'s table shows them)
    every = asyncio.Event()

    async def on_heartbeat(msg) -> None:
        event = codec.decode(msg.data, codec.schema_version_of(msg.headers))
        if isinstance(event, ServiceHeartbeat) and event.http_url:
            urls[event.service] = event.http_url
            flowed.update(f.feed for f in event.feeds if f.state == "connected" and f.events_total > 0)
        if names <= urls.keys() and flowed:
            every.set()

    try:
        await nc.subscribe(subjects.ALL_HEARTBEATS, cb=on_heartbeat)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(every.wait(), timeout)
    finally:
        await nc.close()
    return urls
