"""Chaos: the whole chain (sandboxes -> ingestors -> JetStream -> history writer -> store) run
by `marketbus up` with default settings, while ingestors, the history writer and nats-server are
killed -9 at random (seeded) moments and `up` restarts them. Afterwards the stored ids are
compared with the sandboxes' ground truth: nothing lost, nothing twice, everything stored within
10 s of the last restart (plus the chain's own latency, measured before: ~1 s on a quiet host,
more on a loaded one, which stretches recovery as much).

Ground truth, from each sandbox's own record of what it emitted: FinX (every tick of BTC:USD,
/_sandbox/finx/ticks), Digitex (every trade of market 1, its tape), TickSupply (every trade of
datastream 101 inside the ingestor's subscription spans, /_sandbox/ticksupply/rows) and Sitagri
(every price of the EMAC01 delivery, /_sandbox/sitagri/ticks). ``MARKETBUS_CHAOS_SEED`` replays
a run.

TickSupply is a batch vendor: its data arrives in exported windows, every
``export_interval_s`` (60 s by default, 5 s here so a run stays short); it has that much longer
than the others to be stored.

A small run is part of the default suite; ``make chaos`` runs the soak (marker ``soak``): many more
kills, and the same on a 3-node JetStream cluster with the MD stream's leader killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from marketbus.contracts.ids import event_id
from marketbus.history.lakehouse import LakehouseSettings
from marketbus.history.reader import HistoryReader
from marketbus.history.selector import Selector
from services.ingest_finx import normalize as finx
from services.ingest_sitagri import normalize as sitagri
from tests.e2e.uptree import (
    children_of,
    expected_children,
    free_offset,
    names,
    start_up,
    stop,
    tree_of,
    up_env,
    wait_for_tree,
    wait_gone,
    wait_started,
)

pytestmark = pytest.mark.whole_system  # one whole system at a time (tests/conftest.py)

FINX_PAIR = "BTC:USD"
DIGITEX_MARKET = 1
TICKSUPPLY_DS = 101  # the ingestor's default datastream (binance BTCUSDT trades)
TICKSUPPLY_KEY = "ts_sandbox_key"  # the ingestor's default account
TICKSUPPLY_EXPORT_INTERVAL_S = 5.0
SITAGRI_QUOTE = "/market/sources/EURONEX/future/EMA/deliveries/EMAC01"  # a member of a default quote class
VICTIMS = ("ingest_finx", "ingest_digitex", "ingest_ticksupply", "ingest_sitagri", "history_writer", "nats-server")
STORED_WITHIN_S = 10.0
SEED = int(os.environ.get("MARKETBUS_CHAOS_SEED", "20261201"))


def chaos_env(offset: int, **extra: str) -> dict[str, str]:
    return up_env(
        offset,
        # slower synthetic markets: two cores run ten processes here (the chain is the same)
        MARKETBUS_SANDBOX_FINX_RATE="20", MARKETBUS_SANDBOX_DIGITEX_RATE="10",
        MARKETBUS_SANDBOX_TICKSUPPLY_RATE="10", MARKETBUS_SANDBOX_SITAGRI_RATE="10",
        MARKETBUS_LOG_LEVEL="WARNING",
        MARKETBUS_INGEST_TICKSUPPLY_EXPORT_INTERVAL_S=str(TICKSUPPLY_EXPORT_INTERVAL_S),
        **extra,
    )


def pid_of(up_pid: int, victim: str) -> int | None:
    for pid in children_of(up_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        except OSError:
            continue
        if (victim == "nats-server" and cmdline[0].endswith("nats-server")) or f"services.{victim}" in cmdline:
            return pid
    return None


@dataclass
class Chaos:
    up_pid: int
    data_dir: Path
    rng: random.Random
    victims: tuple[str, ...]
    kills: list[tuple[float, str]] = field(default_factory=list)

    def _starts(self, victim: str) -> int:
        """How often ``victim`` has finished starting (its log says so)."""
        if victim == "nats-server":
            logs, marker = list((self.data_dir / "nats").glob("nats-server-*.log")), "Server is ready"
        else:
            logs, marker = [self.data_dir / "logs" / f"{victim}.log"], f"{victim} started (health"
        return sum(log.read_text(errors="replace").count(marker) for log in logs if log.exists())

    def kill(self, victim: str) -> int:
        deadline = time.monotonic() + 60
        while (pid := pid_of(self.up_pid, victim)) is None and time.monotonic() < deadline:
            time.sleep(0.1)  # still being restarted after an earlier kill
        assert pid is not None, f"{victim} is not running under up (children: {names(children_of(self.up_pid))})"
        self._before = self._starts(victim)
        os.kill(pid, signal.SIGKILL)
        self.kills.append((time.time(), victim))
        return pid

    def back_up(self, victim: str, old_pid: int, timeout: float = 60) -> float:
        """Wait until `up` has restarted ``victim`` and it has started (a Python service takes a
        few seconds on a busy machine); returns when (epoch seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = pid_of(self.up_pid, victim)
            if pid is not None and pid != old_pid and self._starts(victim) > self._before:
                return time.time()
            time.sleep(0.1)
        raise AssertionError(f"{victim} was not restarted within {timeout}s")

    def run(self, rounds: int, pause: tuple[float, float]) -> float:
        """``rounds`` kills at random moments; returns when the last victim was back."""
        order = list(self.victims) if rounds <= len(self.victims) else []
        self.rng.shuffle(order)
        if "history_writer" in order:  # last: what it held must be stored with no later help
            order.append(order.pop(order.index("history_writer")))  # (a nats-server restart redelivers all)
        last_back = time.time()
        for i in range(rounds):
            victim = order[i] if i < len(order) else self.rng.choice(self.victims)
            time.sleep(self.rng.uniform(*pause))
            old = self.kill(victim)
            if i == rounds - 1 or self.rng.random() < 0.5:  # sometimes kill again before it is back
                last_back = self.back_up(victim, old)
        return last_back


async def finx_truth(sandbox: str, start_ns: int, end_ns: int) -> set[str]:
    async with httpx.AsyncClient(base_url=sandbox, timeout=30) as http:
        rows = (await http.get("/_sandbox/finx/ticks", params={"pair": FINX_PAIR, "start_ns": start_ns,
                                                                 "end_ns": end_ns})).json()["ticks"]
    return {finx.tick_id(FINX_PAIR, r["exchange"], r["ts_ns"], r["price"]) for r in rows}


async def digitex_truth(sandbox: str, start_ns: int, end_ns: int) -> set[str]:
    async with httpx.AsyncClient(base_url=sandbox, timeout=30) as http:
        ticks = (await http.get("/_sandbox/digitex/tape", params={"market_id": DIGITEX_MARKET,
                                                                  "count": 100_000})).json()["ticks"]
    return {event_id("digitex", "trade", DIGITEX_MARKET, t["index"]) for t in ticks
            if start_ns <= t["timestamp"] * 1000 < end_ns}


async def ticksupply_truth(sandbox: str, start_ns: int, end_ns: int) -> set[str]:
    async with httpx.AsyncClient(base_url=sandbox, timeout=30) as http:
        rows = (await http.get("/_sandbox/ticksupply/rows", params={
            "datastream_id": TICKSUPPLY_DS, "start_ns": start_ns, "end_ns": end_ns, "api_key": TICKSUPPLY_KEY,
            "limit": 1_000_000})).json()["rows"]
    return {event_id("ticksupply", "trade", TICKSUPPLY_DS, row[2]) for row in rows}


async def sitagri_truth(sandbox: str, start_ns: int, end_ns: int) -> set[str]:
    async with httpx.AsyncClient(base_url=sandbox, timeout=30) as http:
        ticks = (await http.get("/_sandbox/sitagri/ticks", params={
            "quote": SITAGRI_QUOTE, "start": start_ns / 1e9 - 0.001, "end": end_ns / 1e9 + 0.001})).json()
    out = set()
    for tick in ticks:
        ts = sitagri.to_ns(Decimal(str(tick["date"])))
        if start_ns <= ts < end_ns:
            out.add(sitagri.price_id("market_price", SITAGRI_QUOTE, ts))
    return out


async def stored_ids(
    reader: HistoryReader, kind: str, source: str, symbol: str, start_ns: int, end_ns: int
) -> list[str]:
    """The ids the history holds, read through its tables (the writer's default Iceberg store)."""
    selector = Selector(kind=kind, source=source, symbol=symbol)
    table = await asyncio.to_thread(reader.read_kind, kind, selector, start_ns, end_ns, columns=["id"])
    return table.column("id").to_pylist()


async def check_stored(data_dir: Path, offset: int, start_ns: int, end_ns: int, deadline: float,
                       last_back: float) -> dict[str, Any]:
    """Poll the store until it holds the sandboxes' truth of [start_ns, end_ns) or ``deadline``
    (epoch seconds) passes; then assert: nothing lost, nothing twice. ``last_back``: when the
    last victim was back (epoch seconds)."""
    truth = {
        ("tick", "finx", "BTC-USD"): await finx_truth(f"http://127.0.0.1:{8701 + offset}", start_ns, end_ns),
        ("trade", "digitex", "FS-BTCUSD"): await digitex_truth(f"http://127.0.0.1:{8703 + offset}", start_ns, end_ns),
        ("trade", "ticksupply", "BTCUSDT"): await ticksupply_truth(f"http://127.0.0.1:{8702 + offset}", start_ns,
                                                                     end_ns),
        ("market_price", "sitagri", "EMAC01"): await sitagri_truth(f"http://127.0.0.1:{8704 + offset}", start_ns,
                                                                     end_ns),
    }
    assert all(len(ids) > 50 for ids in truth.values()), {k: len(v) for k, v in truth.items()}
    # a batch vendor's data comes with its next export window
    deadlines = {key: deadline + (TICKSUPPLY_EXPORT_INTERVAL_S + 5 if key[1] == "ticksupply" else 0) for key in truth}
    reader = HistoryReader(LakehouseSettings.from_env(data_dir / "history"))
    got: dict[tuple[str, str, str], list[str]] = {}
    missing: dict[tuple[str, str, str], set[str]] = {}
    while True:
        for key in truth:
            if key not in got or (missing[key] and time.time() <= deadlines[key]):
                got[key] = await stored_ids(reader, *key, start_ns, end_ns)
                missing[key] = truth[key] - set(got[key])
        if all(not missing[key] or time.time() > deadlines[key] for key in truth):
            break
        await asyncio.sleep(0.5)
    late = time.time() - deadline
    for key, ids in got.items():
        if missing[key]:  # too late, or lost? (what a failure says; the test fails either way)
            later = time.time() + 60
            while (left := truth[key] - set(await stored_ids(reader, *key, start_ns, end_ns))) and time.time() < later:
                await asyncio.sleep(1.0)
            then = f"{len(left)} still missing {time.time() - last_back:.0f}s after it" if left else (
                f"all stored {time.time() - last_back:.0f}s after it")
            raise AssertionError(f"{len(missing[key])} of {len(truth[key])} {key} events not stored "
                                 f"{deadlines[key] - last_back:.0f}s after the last restart ({then})")
        assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} {key} events stored twice"
        assert set(ids) == truth[key], f"{len(set(ids) - truth[key])} {key} events the sandbox never made"
    return {"late_s": round(late, 1), **{f"{k[1]}_{k[0]}s": len(v) for k, v in truth.items()}}


async def chain_latency(data_dir: Path, timeout: float) -> float:
    """How long the undisturbed chain takes, on this host and now, to store what the sandboxes
    make: from a mark until the store holds events made after it, of every source (TickSupply
    excepted: a batch vendor, its window is fixed). Replaces a fixed wait for the ingestors to be
    past their start, and is the allowance a loaded host adds to :data:`STORED_WITHIN_S`."""
    reader = HistoryReader(LakehouseSettings.from_env(data_dir / "history"))
    keys = [("tick", "finx", "BTC-USD"), ("trade", "digitex", "FS-BTCUSD"), ("market_price", "sitagri", "EMAC01")]
    mark = time.time_ns()
    started = time.monotonic()
    waiting = list(keys)
    while waiting:
        assert time.monotonic() - started < timeout, f"nothing made after the mark stored within {timeout}s: {waiting}"
        await asyncio.sleep(0.5)
        waiting = [key for key in waiting if not await stored_ids(reader, *key, mark, time.time_ns())]
    return time.monotonic() - started


def run_chaos(tmp_path: Path, rounds: int, pause: tuple[float, float], victims: tuple[str, ...] = VICTIMS,
              nats_url: str | None = None, cluster: Any = None) -> None:
    rng = random.Random(SEED)
    print(f"chaos seed {SEED} (MARKETBUS_CHAOS_SEED replays it)")
    offset = free_offset()
    extra = {"NATS_URL": nats_url, "MARKETBUS_STREAM_REPLICAS": "3"} if nats_url else {}
    data_dir = tmp_path / "mb"
    up = start_up(data_dir, chaos_env(offset, **extra))
    tree: list[int] = []
    try:
        tree = wait_for_tree(up, expected_children() - (1 if nats_url else 0), timeout=90)
        wait_started(data_dir, timeout=90)
        asyncio.run(chain_latency(data_dir, timeout=120))  # the chain flows end to end: past its start-up
        latency = asyncio.run(chain_latency(data_dir, timeout=120))  # and takes this long, undisturbed
        start_ns = time.time_ns()
        chaos = Chaos(up.pid, data_dir, rng, victims)
        if cluster is not None:
            last_back = kill_cluster_leader(cluster, rng, chaos, rounds, pause)
        else:
            last_back = chaos.run(rounds, pause)
        end_ns = int(last_back * 1e9)
        # within STORED_WITHIN_S of the last restart, plus the chain's own latency on this host
        # (~1 s on a quiet one; a loaded host stretches the whole chain, recovery included)
        summary = asyncio.run(check_stored(data_dir, offset, start_ns, end_ns,
                                                last_back + STORED_WITHIN_S + latency, last_back))
        print(f"chaos: kills {[v for _, v in chaos.kills]}; chain latency {latency:.1f}s; {summary}")
        assert up.poll() is None, "marketbus up itself must ride it out"
    finally:
        out = stop(up)
        left = wait_gone(tree + tree_of(up.pid), timeout=30)
        assert not left, f"left running: {names(left)}"
    assert up.returncode == 0, out[-3000:]


def kill_cluster_leader(cluster: Any, rng: random.Random, chaos: Chaos, rounds: int,
                        pause: tuple[float, float]) -> float:
    """Kill -9 the node leading the MD stream (and sometimes a service too), restart it, repeat."""
    import nats as nats_py

    async def md_leader() -> str:
        nc = await nats_py.connect(cluster.urls)
        try:
            for _ in range(60):  # a leader may be being elected (after the previous round)
                with contextlib.suppress(Exception):
                    info = await nc.jetstream().stream_info("MD")
                    if info.cluster and info.cluster.leader:
                        return info.cluster.leader
                await asyncio.sleep(0.5)
            raise AssertionError("the MD stream has no leader")
        finally:
            await nc.close()

    last_back = time.time()
    for _ in range(rounds):
        time.sleep(rng.uniform(*pause))
        leader = asyncio.run(md_leader())
        node = next(n for n in cluster.nodes if n.name == leader)
        node.kill()
        chaos.kills.append((time.time(), f"node {node.name}"))
        if rng.random() < 0.5:
            victim = rng.choice([v for v in chaos.victims if v != "nats-server"])
            old = chaos.kill(victim)
            chaos.back_up(victim, old)
        time.sleep(rng.uniform(*pause))
        node.start()
        last_back = time.time()
    return last_back


def test_chaos_small(tmp_path: Path) -> None:
    """Each victim killed -9 once, in a random order, 2-4 s apart."""
    run_chaos(tmp_path, rounds=len(VICTIMS), pause=(2.0, 4.0))


@pytest.mark.soak
def test_chaos_soak(tmp_path: Path) -> None:
    run_chaos(tmp_path, rounds=int(os.environ.get("MARKETBUS_CHAOS_ROUNDS", "40")), pause=(0.5, 6.0))


@pytest.mark.soak
@pytest.mark.cluster
def test_chaos_soak_on_a_cluster(tmp_path: Path, nats_cluster: Any) -> None:
    run_chaos(tmp_path, rounds=int(os.environ.get("MARKETBUS_CHAOS_ROUNDS", "6")), pause=(2.0, 6.0),
              victims=VICTIMS[:-1], nats_url=nats_cluster.url, cluster=nats_cluster)
