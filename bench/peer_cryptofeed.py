"""Peer benchmark (issue #16): marketbus's normalizers against cryptofeed's Binance handler.

One corpus of Binance aggTrades (seeded, realistic price variety: a random walk per symbol in
ticks, most prices distinct) is rendered in each vendor's wire format, and measured in alternating
rounds on the same machine at the same time:

- **cryptofeed** (the version pinned in ``bench/peer/requirements.txt``, installed by this script
  into its own venv ``.bench-venv/peer``, never into marketbus's dependencies): its Binance
  ``message_handler`` on the combined-stream JSON text, one message per trade, to its ``Trade``
  object and an (empty) callback; no serialization. It runs in a worker process of that venv,
  told by this one when to run a round.
- **marketbus**, per vendor, the main event path up to the publish call: the vendor's wire bytes
  -> the normalizer -> contract event -> subject + ``codec`` encode + NATS header block, by the
  publisher's own ``EventWire`` (what ``publish_group`` and ``publish_event`` send): Digitex
  ``recent_trades`` pages (1000 trades), FinX ``tickSnap`` frames (one per tick, ``publish_event``), Sitagri
  ``marketPrice`` pushes (one per trade), TickSupply CSV artifacts (parsed rows -> single events).
  Also each vendor's batch form (normalize + one batch envelope per page, encoded).

Ratios are paired: in each round cryptofeed runs right before each marketbus path (the host is
shared, and the load changes within seconds), and each pair gives one ratio (of wall-clock rates,
and in the last column of CPU-time rates: each side's own process CPU time, which a loaded host
inflates less than the wall clock); the table shows
their min / median / max and the ratio of the best rounds. Two references of the same rounds show
the ceiling of any msgspec normalizer: a bare Binance frame -> Struct -> JSON round, with Decimal
fields and with decimals kept as text. It also prints the top-3 hot spots of each single-event
path (cProfile, by own time; ``--no-profile`` skips them).

Run: ``.venv/bin/python bench/peer_cryptofeed.py [--rounds 5] [--trades 100000] [--no-profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import hashlib
import io
import json
import pstats
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared")]

from marketbus.contracts import codec, subjects  # noqa: E402
from marketbus.runtime.publisher import EventWire, header_block  # noqa: E402
from services.ingest_digitex import normalize as digitex  # noqa: E402
from services.ingest_finx import normalize as finx  # noqa: E402
from services.ingest_sitagri import normalize as sitagri  # noqa: E402
from services.ingest_ticksupply import normalize as ticksupply  # noqa: E402

PEER_DIR = ROOT / "bench" / "peer"
PEER_VENV = ROOT / ".bench-venv" / "peer"
SEED = 16
# symbol: (start price, tick, lot, price step in ticks (std dev))
SYMBOLS = {"BTCUSDT": (Decimal("64000"), Decimal("0.01"), Decimal("0.00001"), 400),
           "ETHUSDT": (Decimal("3100"), Decimal("0.01"), Decimal("0.0001"), 150),
           "SOLUSDT": (Decimal("140"), Decimal("0.001"), Decimal("0.001"), 200)}
PAGE = 1000


# --- the peer's venv ---------------------------------------------------------------------------
def peer_python() -> Path:
    """The peer venv's python, created (with uv, from bench/peer/requirements.txt) when missing or
    when the requirements changed."""
    python = PEER_VENV / "bin" / "python"
    wanted = (PEER_DIR / "requirements.txt").read_text()
    stamp = PEER_VENV / ".requirements"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    uv = Path(sys.executable).parent / "uv"
    subprocess.run([str(uv), "venv", "-q", "--allow-existing", "--python", sys.executable, str(PEER_VENV)], check=True)
    subprocess.run([str(uv), "pip", "install", "-q", "--python", str(python), "-r", str(PEER_DIR / "requirements.txt")],
                   check=True)
    stamp.write_text(wanted)
    return python


# --- the corpus ----------------------------------------------------------------------------------
def corpus(n: int) -> list[dict[str, Any]]:
    """n aggTrades over the symbols, interleaved, oldest first (seeded)."""
    rng = random.Random(SEED)
    state = {s: start for s, (start, *_rest) in SYMBOLS.items()}
    names = list(SYMBOLS)
    out = []
    t_ms = 1_764_547_200_000  # 2025-12-01
    for i in range(n):
        sym = names[rng.randrange(len(names))]
        _start, tick, lot, step = SYMBOLS[sym]
        price = max(tick, state[sym] + tick * round(rng.gauss(0, step)))
        state[sym] = price
        qty = lot * rng.randint(1, 200_000)
        t_ms += rng.randint(0, 3)
        out.append({"s": sym, "a": 100_000_000 + i, "p": price, "q": qty, "T": t_ms, "m": rng.random() < 0.5})
    return out


def binance_frames(trades: list[dict[str, Any]]) -> list[str]:
    """Combined-stream aggTrade messages as Binance sends them (decimals with 8 places)."""
    return [json.dumps({"stream": f"{t['s'].lower()}@aggTrade", "data": {
        "e": "aggTrade", "E": t["T"] + 1, "s": t["s"], "a": t["a"], "p": f"{t['p']:.8f}", "q": f"{t['q']:.8f}",
        "f": t["a"] * 2, "l": t["a"] * 2 + 1, "T": t["T"], "m": t["m"], "M": True}}, separators=(",", ":"))
        for t in trades]


DIGITEX_MARKETS = {"BTCUSDT": 1, "ETHUSDT": 2, "SOLUSDT": 3}


def digitex_pages(trades: list[dict[str, Any]]) -> list[tuple[bytes, str]]:
    """recent_trades pages of PAGE trades of one market, newest first, decimals with 18 places."""
    by_market: dict[str, list[dict[str, Any]]] = {}
    for t in trades:
        by_market.setdefault(t["s"], []).append(t)
    pages = []
    for sym, rows in by_market.items():
        for i in range(0, len(rows), PAGE):
            chunk = rows[i:i + PAGE]
            body = {"market_id": DIGITEX_MARKETS[sym], "timestamp": chunk[-1]["T"] * 1000, "recent_trades": [
                {"trade_id": t["a"], "timestamp": t["T"] * 1000, "price": f"{t['p']:.18f}",
                 "base_volume": f"{t['q']:.18f}", "quote_volume": f"{t['p'] * t['q']:.18f}", "side": 2 if t["m"] else 1}
                for t in reversed(chunk)]}
            pages.append((json.dumps(body, separators=(",", ":")).encode(), f"FS-{sym}"))
    return pages


def _finx_row(t: dict[str, Any]) -> dict[str, Any]:
    secs, ms = divmod(t["T"], 1000)
    day, sod = divmod(secs, 86400)
    date = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
    return {"pair": f"{t['s'][:-4]}:USDT", "date": date,
            "time": f"{sod // 3600:02d}:{sod % 3600 // 60:02d}:{sod % 60:02d}.{ms:03d}Z",
            "exchange": "BINANCE", "price": str(t["p"])}


def finx_frames(trades: list[dict[str, Any]]) -> list[bytes]:
    """tickSnap reply frames, one tick each (the websocket's live path)."""
    return [json.dumps(_finx_row(t) | {"unix_time": t["T"] / 1000}, separators=(",", ":")).encode() for t in trades]


def finx_pages(trades: list[dict[str, Any]]) -> list[bytes]:
    """tickHistory pages (``{"0": row, "1": row, ...}``) of PAGE ticks."""
    return [json.dumps({str(k): _finx_row(t) for k, t in enumerate(trades[i:i + PAGE])}, separators=(",", ":")).encode()
            for i in range(0, len(trades), PAGE)]


def sitagri_pushes(trades: list[dict[str, Any]]) -> list[bytes]:
    """marketPrice pushes (decimals as JSON numbers, dates in epoch seconds), one per trade."""
    out = []
    for t in trades:
        d = Decimal(t["T"]) / 1000
        out.append((
            '{"code":"marketPrice","quote":"/market/sources/BINANCE/spot/%s/deliveries/%s","quality":"REALTIME",'
            '"last":{"date":%s,"value":%s,"volume":%s,"totalVolume":%s,"orders":1},'
            '"ask":{"date":%s,"value":%s,"volume":1},"bid":{"date":%s,"value":%s,"volume":1}}'
            % (t["s"][:-4], t["s"], d, t["p"], t["q"], t["a"], d, t["p"], d, t["p"])).encode())
    return out


TICKSUPPLY_DS = {"BTCUSDT": 101, "ETHUSDT": 102, "SOLUSDT": 103}


def ticksupply_artifacts(trades: list[dict[str, Any]]) -> list[tuple[bytes, Any]]:
    """Gzipped CSV artifacts of the raw trade schema, PAGE * 10 rows each, one datastream each."""
    by_sym: dict[str, list[dict[str, Any]]] = {}
    for t in trades:
        by_sym.setdefault(t["s"], []).append(t)
    out = []
    for sym, rows in by_sym.items():
        ds = ticksupply.DatastreamRef(datastream_id=TICKSUPPLY_DS[sym], exchange="binance", instrument=sym,
                                      stream_type="trade")
        for i in range(0, len(rows), PAGE * 10):
            text = io.StringIO()
            text.write(",".join(ticksupply.TRADE_COLUMNS) + "\n")
            for t in rows[i:i + PAGE * 10]:
                ns = t["T"] * 1_000_000
                text.write(f"{ns},{ns + 700_000},{t['a']},{t['p']},{t['q']},{'sell' if t['m'] else 'buy'}\n")
            out.append((gzip.compress(text.getvalue().encode(), 1), ds))
    return out


# --- marketbus's paths ---------------------------------------------------------------------------
class Wire:
    """What the publisher sends for an event: subject, payload (``codec``'s encoder) and header
    block, from the publisher's own ``EventWire`` (what ``JetStreamPublisher.publish_group`` and
    ``publish_event`` send: subject and header head cached per instrument)."""

    def __init__(self) -> None:
        self.wire = EventWire()
        self.encode = codec._encoder.encode
        self.bytes = 0

    def send(self, events: list[Any]) -> None:
        total = 0
        for _subject, payload, block in self.wire.messages(events):
            total += len(payload) + len(block)
        self.bytes += total

    def send_one(self, event: Any) -> None:
        """One event, as ``publish_event`` sends it."""
        _subject, payload, block = self.wire.message(event)
        self.bytes += len(payload) + len(block)

    def send_batch(self, events: list[Any]) -> None:
        batch = codec.make_batch(events)
        self.bytes += len(self.encode(batch)) + len(header_block(batch, batch.id)) + len(subjects.for_event(events[0]))


def digitex_single(pages: list[tuple[bytes, str]], wire: Wire) -> int:
    n, ts = 0, time.time_ns()
    for body, symbol in pages:
        trades, _bad, _oldest = digitex.recent_trades(body, symbol, "DIGITEX", ts)
        wire.send(trades)
        n += len(trades)
    return n


def digitex_batch(pages: list[tuple[bytes, str]], wire: Wire) -> int:
    n, ts = 0, time.time_ns()
    for body, symbol in pages:
        trades, _bad, _oldest = digitex.recent_trades(body, symbol, "DIGITEX", ts)
        wire.send_batch(trades)
        n += len(trades)
    return n


def finx_single(frames: list[bytes], wire: Wire) -> int:
    ts, snap, send = time.time_ns(), finx.snap, wire.send_one
    for frame in frames:  # the live path publishes each snap with ``publish_event``
        send(snap(frame, ts))
    return len(frames)


def finx_batch(pages: list[bytes], wire: Wire) -> int:
    n, ts = 0, time.time_ns()
    for page in pages:
        ticks, _bad = finx.history(page, ts)
        by_instrument: dict[tuple[str, str], list[Any]] = {}
        for t in ticks:
            by_instrument.setdefault((t.venue, t.symbol), []).append(t)
        for group in by_instrument.values():
            wire.send_batch(group)
        n += len(ticks)
    return n


def sitagri_single(pushes: list[bytes], wire: Wire) -> int:
    # the live path: ``live_push`` (wire bytes -> event, as ``LiveFeed.on_push`` calls it), and each
    # push's event published with ``publish_event``
    ts, live_push, send = time.time_ns(), sitagri.live_push, wire.send_one
    for raw in pushes:
        send(live_push(raw, ts)[2])
    return len(pushes)


def sitagri_batch(pushes: list[bytes], wire: Wire) -> int:
    """The history/long-polling form: PAGE pushes of one quote normalized, then one envelope."""
    ts, live_push = time.time_ns(), sitagri.live_push
    by_quote: dict[str, list[Any]] = {}
    for raw in pushes:
        event = live_push(raw, ts)[2]
        group = by_quote.get(event.symbol)
        if group is None:  # (setdefault would build an empty list for every event)
            group = by_quote[event.symbol] = []
        group.append(event)
        if len(group) == PAGE:
            wire.send_batch(group)
            del by_quote[event.symbol]
    for group in by_quote.values():
        if group:
            wire.send_batch(group)
    return len(pushes)


def ticksupply_single(artifacts: list[tuple[bytes, Any]], wire: Wire) -> int:
    n, ts = 0, time.time_ns()
    for data, ds in artifacts:
        events = ticksupply.trades(ds, ticksupply.parse_artifact(data).rows, ts)
        wire.send(events)
        n += len(events)
    return n


def ticksupply_batch(artifacts: list[tuple[bytes, Any]], wire: Wire) -> int:
    n, ts = 0, time.time_ns()
    for data, ds in artifacts:
        events = ticksupply.trades(ds, ticksupply.parse_artifact(data).rows, ts, replay=True)
        for i in range(0, len(events), PAGE):
            wire.send_batch(events[i:i + PAGE])
        n += len(events)
    return n


# --- the bus's own limit: bare msgspec, no contract -------------------------------------------------
class _BareAggTrade(msgspec.Struct, gc=False):
    s: str
    a: int
    p: Decimal
    q: Decimal
    T: int
    m: bool


class _BareAggTradeText(msgspec.Struct, gc=False):
    s: str
    a: int
    p: str
    q: str
    T: int
    m: bool


class _BareFrame(msgspec.Struct, gc=False):
    stream: str
    data: _BareAggTrade


class _BareFrameText(msgspec.Struct, gc=False):
    stream: str
    data: _BareAggTradeText


def bare_msgspec(shape: type) -> Callable[[list[bytes], Wire], int]:
    """Binance frame -> typed Struct -> JSON bytes, nothing else (no ids, no checks, no headers):
    the ceiling of any normalizer written on msgspec, measured in the same rounds."""
    decode, encode = msgspec.json.Decoder(shape).decode, msgspec.json.Encoder(decimal_format="string").encode

    def run(frames: list[bytes], wire: Wire) -> int:
        total = 0
        for frame in frames:
            total += len(encode(decode(frame).data))
        wire.bytes += total
        return len(frames)

    return run


# --- cryptofeed's worker ---------------------------------------------------------------------------
WORKER = r'''
import asyncio, sys, time
from cryptofeed.defines import BINANCE, TRADES
from cryptofeed.exchanges import Binance
from cryptofeed.symbols import Symbols

frames = open(sys.argv[1]).read().splitlines()
syms = sys.argv[2].split(",")
Symbols.set(BINANCE, *Binance._parse_symbol_data({"symbols": [
    {"symbol": s, "baseAsset": s[:-4], "quoteAsset": s[-4:], "status": "TRADING",
     "filters": [{"tickSize": "0.01"}]} for s in syms]}))
seen = []

async def on_trade(trade, receipt):
    seen.append(trade)

feed = Binance(symbols=[f"{s[:-4]}-{s[-4:]}" for s in syms], channels=[TRADES], callbacks={TRADES: on_trade})

async def round_():
    handler, now = feed.message_handler, time.time()
    seen.clear()
    began, cpu = time.perf_counter(), time.process_time()
    for frame in frames:
        await handler(frame, None, now)
    return time.perf_counter() - began, time.process_time() - cpu

loop = asyncio.new_event_loop()
import cryptofeed
from importlib.metadata import version
print(f"ready {version('cryptofeed')}", flush=True)
for line in sys.stdin:
    elapsed, cpu = loop.run_until_complete(round_())
    assert len(seen) == len(frames), (len(seen), len(frames))
    t = seen[-1]
    print(f"{elapsed} {cpu} {t.symbol} {t.price} {t.amount}", flush=True)
'''


class Peer:
    """cryptofeed in its own venv and process; ``round()`` runs its handler over the corpus once."""

    def __init__(self, frames: list[str], workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "frames.jsonl").write_text("\n".join(frames))
        (workdir / "worker.py").write_text(WORKER)
        self.n = len(frames)
        self.proc = subprocess.Popen(
            [str(peer_python()), str(workdir / "worker.py"), str(workdir / "frames.jsonl"), ",".join(SYMBOLS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.version = self._line().split()[1]

    def _line(self) -> str:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"cryptofeed worker exited ({self.proc.wait()})")
        return line

    def round(self) -> tuple[float, float]:
        """One round: (messages per second of wall time, per second of the worker's CPU time)."""
        self.proc.stdin.write("go\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        wall, cpu = self._line().split()[:2]
        return self.n / float(wall), self.n / max(float(cpu), 1e-9)

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(timeout=30)


def measure(fn: Callable[[Any, Wire], int], data: Any) -> tuple[float, float]:
    """(events per second of wall time, per second of this process's CPU time)."""
    wire = Wire()
    began, cpu = time.perf_counter(), time.process_time()
    n = fn(data, wire)
    return n / (time.perf_counter() - began), n / max(time.process_time() - cpu, 1e-9)


def hot_spots(fn: Callable[[Any, Wire], int], data: Any, top: int = 3) -> list[str]:
    """The top functions of a path by own time (cProfile), as ``name (file:line) share%``."""
    prof = cProfile.Profile()
    prof.runcall(fn, data, Wire())
    stats = pstats.Stats(prof)
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    out = []
    for (path, line, name), (_cc, _nc, tt, _ct, _callers) in rows:
        where = f"{Path(path).name}:{line}" if line else "builtin"
        out.append(f"{name} ({where}) {100 * tt / total:.0f}%")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--trades", type=int, default=100_000)
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the hot-spot rows (cProfile of each single-event path)")
    args = parser.parse_args()

    trades = corpus(args.trades)
    distinct = len({(t["s"], t["p"]) for t in trades})
    data = {"digitex": digitex_pages(trades), "finx": finx_frames(trades), "sitagri": sitagri_pushes(trades),
            "ticksupply": ticksupply_artifacts(trades), "finx_pages": finx_pages(trades)}
    singles = {"Digitex recent_trades pages -> single events": (digitex_single, data["digitex"]),
               "FinX tickSnap frames": (finx_single, data["finx"]),
               "Sitagri marketPrice pushes": (sitagri_single, data["sitagri"]),
               "TickSupply CSV artifacts -> single events": (ticksupply_single, data["ticksupply"])}
    batches = {"Digitex recent_trades pages": (digitex_batch, data["digitex"]),
               "FinX tickHistory pages": (finx_batch, data["finx_pages"]),
               "Sitagri pushes, 1000 per envelope": (sitagri_batch, data["sitagri"]),
               "TickSupply CSV artifacts": (ticksupply_batch, data["ticksupply"])}
    raw_frames = [f.encode() for f in binance_frames(trades)]
    references = {
        "bare msgspec, Decimal fields (Binance frame -> Struct -> JSON)": (bare_msgspec(_BareFrame), raw_frames),
        "bare msgspec, decimals kept as text": (bare_msgspec(_BareFrameText), raw_frames),
    }
    # warm the caches and the code once
    for fn, payload in (*singles.values(), *batches.values(), *references.values()):
        fn(payload, Wire())

    peer = Peer(binance_frames(trades), ROOT / ".bench-venv" / "peer-data")
    paths = {**singles, **batches, **references}
    # cryptofeed runs right before each path in each round: a pair sees the same load (the host is
    # shared), and a ratio per pair is what the issue asks for
    cf_rates: dict[str, list[float]] = {k: [] for k in paths}
    rates: dict[str, list[float]] = {k: [] for k in paths}
    cf_cpu: dict[str, list[float]] = {k: [] for k in paths}
    cpu: dict[str, list[float]] = {k: [] for k in paths}
    try:
        peer.round()
        for _ in range(args.rounds):
            for name, (fn, payload) in paths.items():
                wall, on_cpu = peer.round()
                cf_rates[name].append(wall)
                cf_cpu[name].append(on_cpu)
                wall, on_cpu = measure(fn, payload)
                rates[name].append(wall)
                cpu[name].append(on_cpu)
    finally:
        peer.close()

    print(
        "| path (wire bytes -> event -> subject + encode + headers) | marketbus median | cryptofeed median (its paired "
        "rounds) | ratio per paired round min / median / max; ratio of the best rounds | target | CPU time: marketbus "
        "median ev/CPU-s; ratio per paired round min / median / max |"
    )
    print("|---|---|---|---|---|---|")
    targets = {**dict.fromkeys(singles, ">= 2.0"), **dict.fromkeys(batches, ">= 300,000 ev/s"),
               **dict.fromkeys(references, "(a ceiling)")}
    for name in paths:
        ratios = [m / c for m, c in zip(rates[name], cf_rates[name])]
        cpu_ratios = [m / c for m, c in zip(cpu[name], cf_cpu[name])]
        label = (
            f"{name} as batch envelopes" if name in batches else f"reference: {name}" if name in references else name
        )
        print(
            f"| {label} | {statistics.median(rates[name]):,.0f} ev/s | {statistics.median(cf_rates[name]):,.0f} msg/s "
            f"| {min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f}; "
            f"{max(rates[name]) / max(cf_rates[name]):.2f} | {targets[name]} | {statistics.median(cpu[name]):,.0f}; "
            f"{min(cpu_ratios):.2f} / {statistics.median(cpu_ratios):.2f} / {max(cpu_ratios):.2f} |"
        )
    digest = hashlib.sha256("".join(f"{t['p']}{t['q']}" for t in trades).encode()).hexdigest()[:12]
    print(f"| corpus: {len(trades):,} Binance aggTrades over {len(SYMBOLS)} symbols, {distinct:,} distinct prices "
          f"(seed {SEED}, digest {digest}); {args.rounds} alternating rounds; cryptofeed {peer.version} in its own "
          "venv and process | | | | | |")
    if args.profile:
        for name, (fn, payload) in singles.items():
            print(f"| hot spots (cProfile, own time): {name} | {'; '.join(hot_spots(fn, payload))} | | | | |")


if __name__ == "__main__":
    main()
