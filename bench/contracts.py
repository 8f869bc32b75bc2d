"""Contracts benchmark: trade encode+decode and subject build+parse, one core.

Codec target (issue #16, instead of issue #2's absolute 1M/s, which moves with the machine): the
validated ``Trade`` encode + typed decode >= 0.8 of a bare msgspec Struct round trip of the same
message (``UncheckedTrade``: same fields, same wire bytes, asserted; no constraints, no
``__post_init__``). Measured in paired rounds (``paired_rounds``): each round interleaves short
runs of every variant, so a round's variants see the same host; the ratio is taken per round, and
the table gives the median, min and max of the rounds' ratios, wall (best short run of the round)
and CPU time (the round's calls over the process CPU time spent in them), then each round's.
Also against the bare Struct: the any-event decoder, the floor of a Python ``__post_init__``
(empty hook) and the generated Python checks (the compiled checks' fallback, switched with
``invariants.set_compiled_checks``); the cost of building a Trade in Python (vendor decimal text
canonical already, or not: "0.01500000"); stdlib json on the same trade as a dict (issue #2's
reference, informative). Subject build+parse keeps issue #2's >= 1M/s.
"""

from __future__ import annotations

import json
import statistics
import time
from decimal import Decimal

import msgspec

from marketbus.contracts import codec, invariants, subjects
from marketbus.contracts.ids import event_id
from marketbus.contracts.market import Trade


def rate(fn, n: int) -> float:
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        fn(n)
        best = max(best, n / (time.perf_counter() - start))
    return best


class UncheckedTrade(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="trade", gc=False):
    """``Trade`` with the same fields and wire form, without the invariants."""

    id: str
    source: str
    venue: str
    symbol: str
    ts_event: int
    ts_recv: int
    replay: bool = False
    price: Decimal
    size: Decimal
    side: str = "unknown"
    trade_id: str | None = None


class FloorTrade(UncheckedTrade, frozen=True, kw_only=True, tag_field="type", tag="trade", gc=False):
    """``UncheckedTrade`` with an empty ``__post_init__``: the floor of any check written in
    Python (msgspec calling a Python function once per decoded struct)."""

    def __post_init__(self) -> None:
        pass


def interleaved_rates(fns: list, n: int, rounds: int = 15) -> list[float]:
    """Best rate of each function over ``rounds`` short interleaved runs: on a shared host the
    load changes between runs, and both sides of a ratio must see the same. The shorter the runs
    (a few ms) and the more of them, the likelier each function gets a quiet slice of a core."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn(n)
            best[i] = min(best[i], time.perf_counter() - start)
    return [n / t for t in best]


def paired_rounds(fns: list, n: int = 2_000, rounds: int = 9,
                  runs: int = 30) -> tuple[list[list[float]], list[list[float]]]:
    """Per round and per function: (wall rate, CPU-time rate). A round is ``runs`` short runs of
    ``n`` calls of each function, interleaved; its wall rate is the best short run (the one that
    got a quiet slice of a core), its CPU-time rate the whole round's calls over the process's CPU
    time spent in them (``time.process_time``: what a busy host's preemption does not inflate)."""
    wall: list[list[float]] = []
    cpu: list[list[float]] = []
    for _ in range(rounds):
        best = [float("inf")] * len(fns)
        spent = [0.0] * len(fns)
        for _ in range(runs):
            for i, fn in enumerate(fns):
                c0, t0 = time.process_time(), time.perf_counter()
                fn(n)
                t1, c1 = time.perf_counter(), time.process_time()
                best[i] = min(best[i], t1 - t0)
                spent[i] += c1 - c0
        wall.append([n / t for t in best])
        cpu.append([n * runs / c if c > 0 else float("nan") for c in spent])
    return wall, cpu


def ratio_cell(wall: list[list[float]], cpu: list[list[float]], i: int, ref: int) -> str:
    """``median (min-max)`` of the paired per-round ratios of function ``i`` to function ``ref``,
    wall and CPU time, then every round's wall ratio."""
    w = [r[i] / r[ref] for r in wall]
    c = [r[i] / r[ref] for r in cpu]
    ws, cs = sorted(w), sorted(c)
    return (f"x{statistics.median(w):.2f} (min {ws[0]:.2f}, max {ws[-1]:.2f}); CPU time x{statistics.median(c):.2f} "
            f"(min {cs[0]:.2f}, max {cs[-1]:.2f}); per round: {' '.join(f'{x:.2f}' for x in w)}")


def main() -> list[str]:
    trade = Trade(
        id=event_id("finx", "trade", "BTC:USD", 1), source="finx", venue="COINBASE", symbol="BTC-USD",
        ts_event=1_700_000_000_123_000_000, ts_recv=1_700_000_000_124_000_000,
        price=Decimal("21865.01"), size=Decimal("0.015"), side="buy", trade_id="123456",
    )
    encode = codec._encoder.encode
    decode_trade = codec.decoder_for(Trade).decode
    decode_any = codec._decoder.decode

    def typed(n: int) -> None:
        for _ in range(n):
            decode_trade(encode(trade))

    def union(n: int) -> None:
        for _ in range(n):
            decode_any(encode(trade))

    as_dict = {"id": trade.id, "source": "finx", "venue": "COINBASE", "symbol": "BTC-USD", "ts_event": trade.ts_event,
               "ts_recv": trade.ts_recv, "price": "21865.01", "size": "0.015", "side": "buy", "trade_id": "123456"}

    def stdlib(n: int) -> None:
        for _ in range(n):
            json.loads(json.dumps(as_dict))

    def subject_roundtrip(n: int) -> None:
        for _ in range(n):
            subjects.parse(subjects.for_event(trade))

    def symbol_roundtrip(n: int) -> None:
        for _ in range(n):
            subjects.denormalize_symbol(subjects.normalize_symbol("BTC:USD"))

    unchecked = UncheckedTrade(**msgspec.structs.asdict(trade))
    decode_unchecked = msgspec.json.Decoder(UncheckedTrade).decode
    assert decode_unchecked(encode(unchecked)) == unchecked and encode(unchecked) == encode(trade)

    def unvalidated(n: int) -> None:
        for _ in range(n):
            decode_unchecked(encode(unchecked))

    floor = FloorTrade(**msgspec.structs.asdict(trade))
    decode_floor = msgspec.json.Decoder(FloorTrade).decode

    def empty_hook(n: int) -> None:
        for _ in range(n):
            decode_floor(encode(floor))

    compiled = invariants.compiled_checks()

    def python_checks(n: int) -> None:  # the same as ``typed``, with the generated Python checks
        previous = invariants.set_compiled_checks(False) if compiled else False
        try:
            typed(n)
        finally:
            if compiled:
                invariants.set_compiled_checks(previous)

    # issue #16: the codec against a bare msgspec Struct round trip of the same message, paired
    # per round (0: the bare reference; 1: typed decoder; 2: any-event decoder; 3: empty hook;
    # 4: generated Python checks)
    wall, cpu = paired_rounds([unvalidated, typed, union, empty_hook, python_checks])
    med = [statistics.median(r[i] for r in wall) for i in range(5)]
    unvalidated_rate, validated_rate, union_rate, floor_rate, python_rate = med

    fields = msgspec.structs.asdict(trade)

    def build(size: Decimal, python: bool):
        def run(n: int) -> None:
            previous = invariants.set_compiled_checks(False) if python and compiled else False
            try:
                for _ in range(n):
                    Trade(**{**fields, "size": size})
            finally:
                if python and compiled:
                    invariants.set_compiled_checks(previous)
        return run

    def build_unchecked(n: int) -> None:
        for _ in range(n):
            UncheckedTrade(**fields)

    build_rates = interleaved_rates([build(Decimal("0.015"), False), build(Decimal("0.015"), True),
                                     build(Decimal("0.01500000"), False), build(Decimal("0.01500000"), True),
                                     build_unchecked], 2_000, rounds=150)
    ns = [1e9 / r for r in build_rates]

    n = 300_000
    std_rate = rate(stdlib, n // 3)
    subj_rate, sym_rate = rate(subject_roundtrip, n), rate(symbol_roundtrip, n)
    bare = f"bare msgspec Struct round trip of the same message (UncheckedTrade) {unvalidated_rate:,.0f}/s"
    return [
        f"| contracts: trade encode+decode (typed decoder, compiled checks "
        f"{'on' if compiled else 'NOT BUILT'}) | {validated_rate:,.0f}/s | >= 0.8 of the bare Struct | {bare} | "
        f"{ratio_cell(wall, cpu, 1, 0)} |",
        f"| contracts: trade encode+decode (any-event decoder) | {union_rate:,.0f}/s | >= 0.8 of the bare Struct | "
        f"{bare} | {ratio_cell(wall, cpu, 2, 0)} |",
        f"| contracts: the same round trip with an empty __post_init__ (the floor of any Python check) | "
        f"{floor_rate:,.0f}/s | - | {bare} | {ratio_cell(wall, cpu, 3, 0)} |",
        f"| contracts: validated round trip, generated Python checks (the fallback) | {python_rate:,.0f}/s | - | "
        f"{bare} | {ratio_cell(wall, cpu, 4, 0)} |",
        f"| contracts: trade encode+decode against stdlib json of the same trade as a dict (issue #2's reference) "
        f"| {validated_rate:,.0f}/s | - | stdlib json {std_rate:,.0f}/s | x{validated_rate / std_rate:.1f} |",
        f"| contracts: Trade(...) build, canonical decimals: compiled / Python checks / no checks | {ns[0]:,.0f} ns / "
        f"{ns[1]:,.0f} ns / {ns[4]:,.0f} ns | - | Python checks | x{ns[1] / ns[0]:.2f} faster |",
        f"| contracts: Trade(...) build, size 0.01500000 (made canonical): compiled / Python checks | {ns[2]:,.0f} ns "
        f"/ {ns[3]:,.0f} ns | - | Python checks | x{ns[3] / ns[2]:.2f} faster |",
        f"| contracts: subject build+parse | {subj_rate:,.0f}/s | >= 1,000,000/s | | |",
        f"| contracts: symbol normalize+denormalize (BTC:USD) | {sym_rate:,.0f}/s | | | |",
    ]


if __name__ == "__main__":
    print("| benchmark | result | target | reference (same run) | ratio |")
    print("|---|---|---|---|---|")
    print("\n".join(main()))
