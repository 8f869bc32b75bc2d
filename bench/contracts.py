"""Contracts benchmark: trade encode+decode and subject build+parse, one core.

Targets (issue #2): >= 1M events/s encode+decode through the contracts; >= 1M/s subject
build+parse. Reference measured in the same run: stdlib json on the same trade as a dict.
Issue #12: the cost of the contract invariants (``contracts/invariants.py``): the validated
trade round trip against the same round trip through an equivalent Struct without constraints
nor ``__post_init__``, measured interleaved in the same run (target ratio >= 0.8), with the
compiled checks (``contracts/_checks.c``, when built) and with the generated Python ones (their
fallback, switched with ``invariants.set_compiled_checks``), plus the cost of building a Trade
in Python both ways (vendor decimal text canonical already, or not: "0.01500000").
"""

from __future__ import annotations

import json
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

    validated_rate, unvalidated_rate, floor_rate, python_rate = interleaved_rates(
        [typed, unvalidated, empty_hook, python_checks], 2_000, rounds=300)

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
    typed_rate, union_rate, std_rate = rate(typed, n), rate(union, n), rate(stdlib, n // 3)
    subj_rate, sym_rate = rate(subject_roundtrip, n), rate(symbol_roundtrip, n)
    return [
        f"| contracts: trade encode+decode (typed decoder) | {typed_rate:,.0f}/s | >= 1,000,000/s | stdlib json "
        f"{std_rate:,.0f}/s | x{typed_rate / std_rate:.1f} |",
        f"| contracts: trade encode+decode (any-event decoder) | {union_rate:,.0f}/s | >= 1,000,000/s | stdlib json "
        f"{std_rate:,.0f}/s | x{union_rate / std_rate:.1f} |",
        f"| contracts: validated trade encode+decode vs no validation | {validated_rate:,.0f}/s | ratio >= 0.8 | "
        f"unvalidated {unvalidated_rate:,.0f}/s | x{validated_rate / unvalidated_rate:.2f} |",
        f"| contracts: the same round trip with an empty __post_init__ (the floor of any Python check) | "
        f"{floor_rate:,.0f}/s | - | unvalidated {unvalidated_rate:,.0f}/s | x{floor_rate / unvalidated_rate:.2f} |",
        f"| contracts: validated round trip, generated Python checks (compiled checks "
        f"{'on' if compiled else 'NOT BUILT'} in the first row) | {python_rate:,.0f}/s | - | unvalidated "
        f"{unvalidated_rate:,.0f}/s | x{python_rate / unvalidated_rate:.2f} |",
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
