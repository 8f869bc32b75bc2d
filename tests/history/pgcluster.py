"""A private PostgreSQL cluster for tests that stop and start the server (the machine's shared
server is never touched): ``initdb`` in a temp dir, ``pg_ctl`` on a free port. As root, the
cluster runs as the ``postgres`` user (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from marketbus.runtime.http import free_port


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    """``start()`` / ``stop()`` a throw-away cluster; ``dsn`` reaches it while it runs."""

    def __init__(self) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            raise FileNotFoundError("no initdb/pg_ctl on this machine")
        self.bin = bin_dir
        # directly under the temp dir: pytest's own dirs are private to the (root) user
        self.root = root = Path(tempfile.mkdtemp(prefix="marketbus-pg-"))
        self.data = root / "pgdata"
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            user = pwd.getpwnam("postgres")
            os.chown(root, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as, str(self.bin / tool), *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        """Start the server; its log is in the error when it does not come up."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=16MB"
        try:
            self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "pg.log"), "-w", "-t",
                      "60", "start")
        except subprocess.CalledProcessError as exc:
            log = (self.root / "pg.log").read_text(errors="replace")[-3000:] if (self.root / "pg.log").exists() else ""
            raise RuntimeError(f"private PostgreSQL on port {self.port} did not start: "
                               f"{exc.stderr.decode(errors='replace') if exc.stderr else ''}\n{log}") from exc

    def stop(self) -> None:
        """Fast shutdown: open connections are terminated, as in a crash of the server."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return subprocess.run([*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "status"],
                              capture_output=True).returncode == 0

    def cleanup(self) -> None:
        if self.running():
            subprocess.run([*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                           capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
