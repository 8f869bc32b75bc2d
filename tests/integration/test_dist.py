"""The `marketbus` package outside the project: `make dist`'s wheel installs into a fresh venv of
the user's and the README's snippet runs there, as written, against the URL and the reader
identity a `make run` recorded; and the CLI prints its shell completion."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
import zipfile
from decimal import Decimal
from pathlib import Path

import nats

from marketbus.contracts import codec
from marketbus.contracts.ids import event_id
from marketbus.contracts.market import Trade
from marketbus.runtime.http import free_port
from marketbus.runtime.natsserver import NatsServer
from marketbus.security.credentials import CredentialStore

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def readme_snippet() -> str:
    """The Python block of the tour's step 5 ("Subscribe from your own code")."""
    readme = (ROOT / "README.md").read_text()
    step = readme[readme.index("5. Subscribe from your own code"):]
    block = re.search(r"```python\n(.*?)```", step, re.S)
    assert block is not None
    return textwrap.dedent(block.group(1))


def test_the_distribution_declares_what_the_project_does() -> None:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dist = tomllib.loads((ROOT / "shared" / "pyproject.toml").read_text())["project"]
    assert dist["name"] == "marketbus" and dist["version"] == root["version"]
    assert dist["dependencies"] == root["dependencies"]
    assert dist["scripts"] == root["scripts"]


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "src"  # a copy: the build leaves build/ and *.egg-info behind
    shutil.copytree(ROOT / "shared", source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    subprocess.run([str(BIN / "uv"), "build", "--quiet", "--wheel", "--out-dir", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("marketbus-*-py3-none-any.whl")
    return wheel


def _install(wheel: Path, venv: Path) -> Path:
    uv = str(BIN / "uv")
    subprocess.run(
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, capture_output=True, timeout=60
    )
    python = venv / "bin" / "python"
    install = [
        uv,
        "pip",
        "install",
        "--quiet",
        "--python",
        str(python),
        "-c",
        str(ROOT / "requirements.lock"),
        str(wheel),
    ]
    offline = subprocess.run([*install, "--offline"], capture_output=True, text=True, timeout=300, check=False)
    if offline.returncode != 0:  # a package not in uv's cache yet: from the index
        subprocess.run(install, check=True, capture_output=True, timeout=600)
    return python


async def _publish_trade(url: str, seed: Path) -> None:
    trade = Trade(id=event_id("finx", "trade", "BTC-USD", 1), source="finx", venue="COINBASE", symbol="BTC-USD",
                  ts_event=1_700_000_000_000_000_000, ts_recv=1_700_000_000_000_000_100,
                  price=Decimal("21865.5"), size=Decimal("0.25"), side="buy")
    nc = await nats.connect(url, nkeys_seed=str(seed), inbox_prefix="_INBOX.admin")
    try:
        await nc.publish("md.trade.finx.COINBASE.BTC-USD", codec.encode(trade))
        await nc.flush()
    finally:
        await nc.close()


def test_the_wheel_installs_into_its_own_venv_and_the_readme_snippet_runs_there(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "marketbus/contracts/codec.py" in names
    assert not [name for name in names if name.startswith("services/")], "the services are not part of the package"
    python = _install(wheel, tmp_path / "venv")

    # what `make run` leaves in .marketbus: the credentials, and the URL of a server on another port
    state = tmp_path / "user" / ".marketbus"
    store = CredentialStore(state / "credentials")
    store.ensure()
    server = NatsServer(data_dir=tmp_path / "nats", port=free_port(), config_file=store.auth_conf).start()
    try:
        (state / "nats.url").write_text(server.url + "\n")
        (tmp_path / "user" / "snippet.py").write_text(readme_snippet())
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "user")}  # nothing of the project's venv
        log = tmp_path / "snippet.out"
        with log.open("w") as out:
            snippet = subprocess.Popen([str(python), "snippet.py"], cwd=tmp_path / "user", env=env,
                                       stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "md.trade.finx.COINBASE.BTC-USD" not in log.read_text():
                assert snippet.poll() is None, log.read_text()
                time.sleep(0.5)  # until the snippet has subscribed: then (again) a trade
                asyncio.run(_publish_trade(server.url, store.seed_file("admin")))
            output = log.read_text()
            assert "md.trade.finx.COINBASE.BTC-USD" in output and "21865.5" in output, output
        finally:
            snippet.kill()
            snippet.wait()
    finally:
        server.cleanup()
    # the package's own command works there too
    cli = subprocess.run(
        [str(python.parent / "marketbus"), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert cli.returncode == 0 and "history" in cli.stdout, cli.stdout + cli.stderr


def test_the_cli_prints_its_shell_completion() -> None:
    script = subprocess.run([str(BIN / "marketbus"), "--show-completion", "bash"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert script.returncode == 0 and "_marketbus_completion" in script.stdout and "complete " in script.stdout
    completed = subprocess.run([str(BIN / "marketbus")], capture_output=True, text=True, timeout=60, check=False,
                               env=dict(os.environ, COMP_WORDS="marketbus hist", COMP_CWORD="1",
                                        _MARKETBUS_COMPLETE="complete_bash"))
    assert completed.stdout.split() == ["history"]
