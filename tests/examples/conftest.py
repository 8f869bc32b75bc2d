"""Fixtures for the example consumers: trades and quotes to publish, a running example app."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from marketbus.contracts.market import BookLevel, BookSnapshot, Quote, Trade

ROOT = Path(__file__).resolve().parents[2]
NS = 1_000_000_000
T0 = 1_767_225_600 * NS  # 2026-01-01T00:00:00Z, a minute boundary


def trade(i: int, price: str, size: str, seconds: float, symbol: str = "BTC-USD") -> Trade:
    ts = T0 + int(seconds * NS)
    return Trade(id=f"t-{symbol}-{i}", source="digitex", venue="_", symbol=symbol, ts_event=ts, ts_recv=ts,
                 price=Decimal(price), size=Decimal(size), trade_id=str(i))


def quote(i: int, bid: str, ask: str) -> Quote:
    ts = T0 + i * NS
    return Quote(id=f"q-{i}", source="ticksupply", venue="BINANCE", symbol="ETH-USD", ts_event=ts, ts_recv=ts,
                 bid_price=Decimal(bid), ask_price=Decimal(ask))


def book(i: int, bid: str, ask: str, symbol: str = "FS-BTCUSD") -> BookSnapshot:
    ts = T0 + i * NS
    return BookSnapshot(id=f"b-{i}", source="digitex", venue="_", symbol=symbol, ts_event=ts, ts_recv=ts,
                        bids=[BookLevel(price=Decimal(bid), size=Decimal(1))],
                        asks=[BookLevel(price=Decimal(ask), size=Decimal(1))])


@contextlib.contextmanager
def running_app(target: str, env: dict[str, str], log: Path, timeout: float = 20.0,
                unset: tuple[str, ...] = ()) -> Iterator[subprocess.Popen[bytes]]:
    """``faststream run <target>`` as a user runs it, from the repository root, without the
    variables ``unset``; yields once the app logs that it started, stops it with SIGTERM (the app's
    shutdown hooks run)."""
    child_env = {k: v for k, v in {**os.environ, **env}.items() if k not in unset}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "faststream", "run", target],
                                cwd=ROOT, env=child_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while "started successfully" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{target} did not start (rc={proc.poll()}):\n{log.read_text()}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
