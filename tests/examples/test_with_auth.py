"""The examples against a bus with auth on, as `make run` leaves it: a nats-server running the
generated authorization, its URL in ``<data dir>/nats.url`` and the identities' seeds in
``<data dir>/credentials``. A consumer started with nothing but ``MARKETBUS_DATA_DIR`` (the
Python examples) or ``NATS_NKEY_SEED_FILE`` (the Node one) connects as the ``consumer`` identity,
creates its durable on MD and publishes its derived events."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest

from marketbus.contracts import codec
from tests.security.conftest import SecureBus, provision_as_admin, start_secure
from tools.npm import NodeMissing, npm_ci, require

from .conftest import ROOT, running_app, trade

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def made_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecureBus, Path]]:
    """A data dir as `marketbus up` writes it: credentials/, nats.url; the streams provisioned."""
    data_dir = tmp_path_factory.mktemp("marketbus")
    bus = start_secure(data_dir)
    try:
        asyncio.run(provision_as_admin(bus))
        (data_dir / "nats.url").write_text(bus.url + "\n")
        yield bus, data_dir
    finally:
        bus.server.cleanup()


async def _publish_trades(bus: SecureBus, subject: str, events: list) -> None:
    nc = await nats.connect(bus.url, **bus.options("ingest_digitex"))  # as the ingestor that owns them
    try:
        js = nc.jetstream()
        for event in events:
            await js.publish(subject, codec.encode(event), headers=codec.headers_for(event))
    finally:
        await nc.drain()


async def test_a_python_example_finds_the_url_and_its_identity_in_the_data_dir(
    made_run: tuple[SecureBus, Path], tmp_path: Path,
) -> None:
    bus, data_dir = made_run
    symbol = f"AUTH{uuid.uuid4().hex[:6].upper()}"
    subject = f"md.trade.digitex._.{symbol}"
    await _publish_trades(bus, subject, [trade(1, "10", "2", 1, symbol), trade(2, "12", "2", 30, symbol)])
    watcher = await nats.connect(bus.url, **bus.options("consumer"))  # another consumer reads the bars
    bars: asyncio.Queue[dict] = asyncio.Queue()

    async def on_bar(msg) -> None:
        await bars.put(json.loads(msg.data))

    await watcher.subscribe(f"analytics.vwap.digitex._.{symbol}", cb=on_bar)
    since = (datetime.now(UTC) - timedelta(seconds=30)).isoformat()
    env = {"MARKETBUS_DATA_DIR": str(data_dir), "VWAP_DURABLE": f"vwap_{symbol.lower()}", "VWAP_REPLAY_FROM": since}
    log = tmp_path / "vwap.log"
    try:
        with running_app("examples.vwap_bars:app", env, log, unset=("NATS_URL", "MARKETBUS_CONSUMER_NATS_URL")):
            await _publish_trades(bus, subject, [trade(3, "20", "1", 65, symbol)])
            try:
                bar = await asyncio.wait_for(bars.get(), 15)
            except TimeoutError:
                pytest.fail(f"no bar within 15 s; the app's log:\n{log.read_text()[-3000:]}")
    finally:
        await watcher.drain()
    assert (bar["symbol"], bar["open"], bar["close"], bar["trades"]) == (symbol, "10", "12", 2)
    assert "Authorization Violation" not in log.read_text() and "Permissions Violation" not in log.read_text()


async def test_the_node_consumer_connects_with_an_nkey_seed(made_run: tuple[SecureBus, Path]) -> None:
    try:
        npm_ci(ROOT / "examples" / "node")
        node = require("node")
    except NodeMissing as exc:
        pytest.fail(str(exc))
    bus, data_dir = made_run
    symbol = f"NAUTH{uuid.uuid4().hex[:6].upper()}"
    subject = f"md.trade.digitex._.{symbol}"
    await _publish_trades(bus, subject, [trade(1, "1.5", "2", 1, symbol), trade(2, "2.5", "1", 2, symbol)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    env.update(NATS_URL=bus.url, NATS_NKEY_SEED_FILE=str(data_dir / "credentials" / "consumer.nk"),
               MARKETBUS_DURABLE=f"node_{symbol.lower()}", MAX_EVENTS="2",
               REPLAY_FROM=(datetime.now(UTC) - timedelta(seconds=30)).isoformat())
    proc = await asyncio.create_subprocess_exec(
        node,
        "consumer.js",
        f"md.trade.*.*.{symbol}",
        cwd=ROOT / "examples" / "node",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert [json.loads(line)["price"] for line in out.decode().splitlines()] == ["1.5", "2.5"]


def _guide_consumer() -> str:
    """The first consumer of docs/consumers.md (section 2), as a reader copies it."""
    text = (ROOT / "docs" / "consumers.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (code,) = [b for b in blocks if "app = FastStream(broker)" in b][:1]
    return code


async def test_the_guides_first_consumer_runs_against_make_run(
    made_run: tuple[SecureBus, Path], tmp_path: Path
) -> None:
    """docs/consumers.md, sections 1-2: my_consumer.py written as shown, `faststream docs gen` and
    `faststream run my_consumer:app` from its own directory, the bus found through the data dir."""
    bus, data_dir = made_run
    (tmp_path / "my_consumer.py").write_text(_guide_consumer())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "MARKETBUS_"))}
    env["MARKETBUS_DATA_DIR"] = str(data_dir)
    docs = subprocess.run([sys.executable, "-m", "faststream", "docs", "gen", "my_consumer:app", "--out", "doc.json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert docs.returncode == 0, docs.stdout + docs.stderr
    doc = json.loads((tmp_path / "doc.json").read_text())
    assert {c["address"] for c in doc["channels"].values()} == {"md.trade.>"}

    symbol = f"GUIDE{uuid.uuid4().hex[:6].upper()}"
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "faststream", "run", "my_consumer:app"], cwd=tmp_path,
                                env={**env, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT)
    try:
        for _ in range(200):  # deliver="new": publish once the durable exists
            if "started successfully" in log.read_text() or proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        for _ in range(100):
            await _publish_trades(bus, f"md.trade.digitex._.{symbol}", [trade(1, "42.5", "3", 1, symbol)])
            await asyncio.sleep(0.2)
            if f"digitex {symbol} 42.5 3" in log.read_text() or proc.poll() is not None:
                break
    finally:
        proc.terminate()
        proc.wait(10)
    assert f"digitex {symbol} 42.5 3" in log.read_text(), log.read_text()[-3000:]


async def test_the_replay_vwap_example_finds_the_url_and_its_identity_in_the_data_dir(
    made_run: tuple[SecureBus, Path],
) -> None:
    """README tour step 4: `python examples/replay_vwap.py` with no URL or credentials given (the
    bus of `make run` is not on 4222 when 4222 is taken, and has auth on)."""
    bus, data_dir = made_run
    symbol = f"RVWAP{uuid.uuid4().hex[:6].upper()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "MARKETBUS_"))}
    env.update(MARKETBUS_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "examples/replay_vwap.py", "--count", "1", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first_line = asyncio.create_task(proc.stdout.readline())
    try:
        for i in range(150):  # live trades: published until the example has subscribed and printed one
            await _publish_trades(bus, f"md.trade.digitex._.{symbol}", [trade(i, "10", "2", i, symbol)])
            await asyncio.wait([first_line], timeout=0.2)
            if first_line.done():
                break
        else:
            pytest.fail("examples/replay_vwap.py printed no trade")
        await asyncio.wait_for(proc.wait(), 10)  # --count 1: it ends by itself
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = await proc.stderr.read()
    assert proc.returncode == 0, err.decode()
    out = first_line.result()
    assert f"digitex._.{symbol} 10 x 2 vwap=10.000000" in out.decode(), out.decode() + err.decode()


async def test_the_node_consumer_finds_the_url_and_its_identity_in_the_data_dir(
    made_run: tuple[SecureBus, Path],
) -> None:
    """examples/README.md: `node consumer.js 'md.trade.>'` with no NATS_URL or seed given."""
    try:
        npm_ci(ROOT / "examples" / "node")
        node = require("node")
    except NodeMissing as exc:
        pytest.fail(str(exc))
    bus, data_dir = made_run
    symbol = f"NDIR{uuid.uuid4().hex[:6].upper()}"
    await _publish_trades(bus, f"md.trade.digitex._.{symbol}", [trade(1, "3.5", "2", 1, symbol)])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "MARKETBUS_"))}
    env.update(MARKETBUS_DATA_DIR=str(data_dir), MARKETBUS_DURABLE=f"node_{symbol.lower()}", MAX_EVENTS="1",
               REPLAY_FROM=(datetime.now(UTC) - timedelta(seconds=30)).isoformat())
    proc = await asyncio.create_subprocess_exec(
        node, "consumer.js", f"md.trade.*.*.{symbol}", cwd=ROOT / "examples" / "node", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert [json.loads(line)["price"] for line in out.decode().splitlines()] == ["3.5"]
