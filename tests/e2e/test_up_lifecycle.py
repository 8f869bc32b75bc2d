"""`marketbus up` owns its data dir and its process tree: a second `up` refuses naming the
running one; closing its terminal (SIGHUP) or killing it -9 leaves no process behind, and a new
`up` then starts cleanly on the same data dir. Free ports (MARKETBUS_UP_PORT_OFFSET): these tests
can run next to another `marketbus up`."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from marketbus.runtime.http import port_is_free

from .uptree import (
    MARKETBUS,
    SANDBOX_BASE,
    expected_children,
    free_offset,
    names,
    start_up,
    stop,
    up_env,
    wait_for_tree,
    wait_gone,
    wait_started,
)

pytestmark = pytest.mark.whole_system  # one whole system at a time (tests/conftest.py)


def _clean_start(data_dir: Path, env: dict[str, str]) -> None:
    """A new `up` on the same data dir comes up whole and stops cleanly (exit code 0)."""
    up = start_up(data_dir, env, "--duration", "12")
    out, _ = up.communicate(timeout=90)
    assert up.returncode == 0, out[-3000:]
    assert "embedded nats-server with JetStream" in out and "stopped." in out
    assert " exited with " not in out, out[-3000:]


def test_a_second_up_refuses_and_sighup_stops_the_whole_tree(tmp_path: Path) -> None:
    offset = free_offset()
    env = up_env(offset)
    data_dir = tmp_path / "mb"
    up = start_up(data_dir, env)
    try:
        tree = wait_for_tree(up, expected_children())
        second = subprocess.run([MARKETBUS, "up", "--data-dir", str(data_dir)], env=env, capture_output=True,
                                text=True, timeout=30, check=False)
        assert second.returncode == 1
        message = " ".join((second.stdout + second.stderr).split())
        assert f"in use by a running `marketbus up` (pid {up.pid}" in message, message
        assert "NATS nats://" in message  # which system it is

        up.send_signal(signal.SIGHUP)  # the terminal was closed
        up.wait(60)
        left = wait_gone(tree)
        assert not left, f"left running after SIGHUP: {names(left)}"
        assert all(port_is_free(p + offset) for p in SANDBOX_BASE[:4])
    finally:
        stop(up)
    _clean_start(data_dir, env)


def test_kill_9_of_up_takes_its_children_with_it(tmp_path: Path) -> None:
    offset = free_offset()
    env = up_env(offset)
    data_dir = tmp_path / "mb"
    up = start_up(data_dir, env)
    try:
        tree = wait_for_tree(up, expected_children())
        wait_started(data_dir, timeout=120)  # the services are past their start-up
        up.kill()
        up.wait(10)
        left = wait_gone(tree)
        assert not left, f"left running after kill -9 of up: {names(left)}"
    finally:
        stop(up)
    _clean_start(data_dir, env)


def test_up_never_starts_a_second_nats_server_on_a_store_in_use(tmp_path: Path) -> None:
    from marketbus.cli.up import STORE_LOCK_FILE, DirLock

    data_dir = tmp_path / "mb"
    held = DirLock(data_dir / "nats" / STORE_LOCK_FILE).acquire("the store")  # e.g. a nats-server left over
    try:
        up = subprocess.run([MARKETBUS, "up", "--data-dir", str(data_dir)], env=up_env(free_offset()),
                            capture_output=True, text=True, timeout=30, check=False)
        assert up.returncode == 1
        message = " ".join((up.stdout + up.stderr).split())
        assert f"the NATS store {data_dir / 'nats'} is in use" in message, message
        assert not list((data_dir / "nats").glob("nats-server-*.log"))  # nothing was started
    finally:
        held.release()
