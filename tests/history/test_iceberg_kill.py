"""Exactly once on Iceberg tables under kill -9, with two writer processes sharing the durable
consumer (``python -m services.history_writer`` with its default settings: batch sizes, ack wait,
maintenance; only the ports, names and a fault injection that holds acks 0.2 s after each commit
are set). Trades are published in slices; right after each slice one writer or the other is
SIGKILLed (a killed writer's unacked messages are redelivered to the other, which may have
committed later ones meanwhile) and started again. Each writer is killed only once it consumes
(``/healthz``): on a host at load 16-24 a start-up takes 30 s and more (the imports alone), and
a kill before it would prove nothing. Afterwards the tables hold exactly the published ids, and
every data file reads back with ``pyarrow.parquet.read_table`` and the table's schema. On the
embedded configuration (SQLite catalog, local warehouse) and on PostgreSQL catalog + SeaweedFS
warehouse, where the two writers have data dirs of their own, as on two hosts, and nothing of
the history lands in either."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from marketbus.contracts.consumers import HISTORY_MD
from marketbus.contracts.streams import MARKET_DATA
from marketbus.history.lakehouse import LakehouseSettings
from marketbus.history.reader import HistoryReader
from marketbus.history.selector import Selector
from marketbus.runtime.http import free_port
from marketbus.runtime.publisher import JetStreamPublisher
from tests.helpers import wait_for

from .common import trade, unique_symbol
from .seaweedfs import SeaweedFS, lakehouse_env
from .test_kill import wait_consuming

ROOT = Path(__file__).resolve().parents[2]
STALL_S = 120.0  # the stored count may not grow while both writers (re)start on a loaded host


def _spawn(env: dict[str, str], log: Path, data_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A writer on a free port of its own (its /healthz), with its data dir."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "services.history_writer"], cwd=ROOT,
                            env={**env, "MARKETBUS_HISTORY_WRITER_HTTP_PORT": str(port),
                                 "MARKETBUS_HISTORY_WRITER_DATA_DIR": str(data_dir)},
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    return proc, port


def _lake_env(config: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    if config == "embedded":
        return {}
    server: SeaweedFS = request.getfixturevalue("seaweedfs")
    return lakehouse_env(server, request.getfixturevalue("pg_dsn"), f"kill_{uuid.uuid4().hex[:8]}")


def _settings(env: dict[str, str], data_dir: Path) -> LakehouseSettings:
    from marketbus.runtime.settings import load_settings

    return load_settings(LakehouseSettings, env=env, history_dir=str(data_dir))


async def _until_ack_pending(js, durable: str, bound_s: float = 10.0) -> None:
    """Until the durable has messages delivered and not acked (or the bound: the kill then lands
    wherever the writers are)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    while loop.time() < deadline:
        if (await js.consumer_info(MARKET_DATA.name, durable)).num_ack_pending > 0:
            return
        await asyncio.sleep(0.005)


@pytest.mark.timeout(1800)  # against a hang; ~1 min on a quiet host, six start-ups of minutes on a loaded one
@pytest.mark.parametrize("config", ["embedded", "seaweedfs_pg"])
async def test_two_writers_sigkilled_store_everything_once(nc, js, nats_url, tmp_path, config, request) -> None:
    sym = unique_symbol("I")
    durable = f"i{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path / "history"  # the embedded catalog and warehouse, shared by both writers
    # PostgreSQL catalog + SeaweedFS: as on two hosts, each writer has a data dir of its own and
    # they share only the catalog and the object store
    dirs = [data_dir] * 2 if config == "embedded" else [tmp_path / f"host-{h}" / "history" for h in "ab"]
    lake = _lake_env(config, tmp_path, request)
    env = dict(os.environ, **lake, **{
        "MARKETBUS_HISTORY_WRITER_NATS_URL": nats_url,
        "MARKETBUS_HISTORY_WRITER_DURABLE": durable,
        "MARKETBUS_HISTORY_WRITER_QUERY_QUEUE": durable,
        # hold each batch's acks 0.2 s after its commit: many kills land between commit and ack
        "MARKETBUS_HISTORY_WRITER_DEBUG_ACK_DELAY_S": "0.2",
        "MARKETBUS_HISTORY_WRITER_LOG_LEVEL": "WARNING",
    })
    settings = _settings(env, data_dir)
    reader = HistoryReader(settings)
    total, slices = 4_000, 5
    events = [trade(sym, i) for i in range(total)]
    rng = random.Random(11)
    logs = [tmp_path / "writer-a.log", tmp_path / "writer-b.log"]

    async def publish(part: list) -> None:
        pub = await JetStreamPublisher(nc).start()
        i = 0
        while i < len(part):
            n = rng.randint(50, 400)
            if rng.random() < 0.3:  # a batch envelope now and then
                await pub.publish_batch(part[i:i + n])
            else:
                for e in part[i:i + n]:
                    await pub.publish_event(e)
            i += n
            await asyncio.sleep(0.03)
        await pub.flush()
        await pub.close()

    async def consuming(i: int) -> None:
        await wait_consuming(ports[i], f"writer {i} consuming (logs: {logs})")

    procs, ports = [], []
    for log, home in zip(logs, dirs, strict=True):
        proc, port = _spawn(env, log, home)
        procs.append(proc)
        ports.append(port)
    held = []  # messages delivered and not acked right after each kill
    step = total // slices
    try:
        await asyncio.gather(consuming(0), consuming(1))
        for k in range(slices):
            await publish(events[k * step:(k + 1) * step if k < slices - 1 else total])
            if k == slices - 1:
                break
            if k % 2 == 0:  # the moment the writers hold delivered, unacked messages (a fast host may
                # otherwise store and ack a whole slice before any random moment comes)
                await _until_ack_pending(js, f"{durable}_md")
            else:
                await asyncio.sleep(rng.uniform(0.0, 0.8))  # mid-flush, mid-commit or between commit and ack
            victim = rng.randrange(2)
            procs[victim].send_signal(signal.SIGKILL)
            await asyncio.to_thread(procs[victim].wait)
            held.append((await js.consumer_info(MARKET_DATA.name, f"{durable}_md")).num_ack_pending)
            procs[victim], ports[victim] = _spawn(env, logs[victim], dirs[victim])
            await consuming(victim)  # the other one meanwhile stores the redelivered messages
        assert max(held) > 0, f"no kill landed while messages were held ({held}): the test would prove nothing"

        def stored_ids() -> list[str]:
            return (
                reader.read_kind("trade", Selector(symbol=sym), 0, 2**63 - 1, columns=["id"]).column("id").to_pylist()
            )

        # no fixed time for the trades to be stored: respawned writers take seconds to start on a
        # quiet host and a minute on a loaded one (the imports alone), and then read the MD stream
        # from its start. What fails is a store that stops growing short of every trade.
        seen, last_growth = -1, time.monotonic()
        while (count := len(await asyncio.to_thread(stored_ids))) < total:
            if count > seen:
                seen, last_growth = count, time.monotonic()
            assert time.monotonic() - last_growth < STALL_S, (
                f"{count} of {total} trades stored, none more for {STALL_S:.0f}s; writers' exit codes "
                f"{[p.poll() for p in procs]} (logs: {logs})")
            await asyncio.sleep(0.3)

        async def all_acked() -> bool:  # nothing left to deliver or redeliver
            info = await js.consumer_info(MARKET_DATA.name, f"{durable}_md")  # the writers' MD consumer
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_for(all_acked, timeout=STALL_S, interval=0.3, what=f"every message acked (logs: {logs})")
        await asyncio.sleep(HISTORY_MD.ack_wait_s + 1)  # past the default ack wait: a duplicate would land now
        ids = await asyncio.to_thread(stored_ids)
        assert len(ids) == total, f"{len(ids) - len(set(ids))} duplicates"
        assert set(ids) == {e.id for e in events}

        # every data file reads back with pyarrow.parquet and the table's own schema (the durable
        # consumer starts at the beginning of the MD stream: other tests' trades are there too)
        table = reader.tables.get("trade", refresh=True)
        schema = table.schema().as_arrow()
        files = [task.file for task in table.scan().plan_files()]
        assert files and len({f.file_path for f in files}) == len(files)
        mine = []
        for file in files:
            with table.io.new_input(file.file_path).open() as f:
                data = pq.read_table(f, schema=schema)
            assert data.num_rows == file.record_count and data.schema == schema, file.file_path
            mine += data.filter(pc.equal(data.column("symbol"), sym)).column("id").to_pylist()
        assert sorted(mine) == sorted(ids)
        if config != "embedded":  # nothing of the history on either writer's disk
            kept = [p for home in dirs if home.exists() for p in home.rglob("*")
                    if p.name == "catalog.db" or p.suffix in (".parquet", ".avro") or p.name.endswith(".metadata.json")]
            assert not kept, kept
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), 10)
            except TimeoutError:
                proc.kill()
