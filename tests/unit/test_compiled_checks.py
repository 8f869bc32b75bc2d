"""The compiled contract checks (``contracts/_checks.c``) and the generated Python ones agree: on
any values, an event is refused with the same message, or accepted with the same field values
(decimals in the same canonical form), whether built in Python or decoded.

tests/unit/test_invariants.py runs its cases on both; these are the property tests."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketbus.contracts import codec, invariants
from marketbus.contracts.invariants import NON_NEGATIVE, POSITIVE, SIGNED, Rule
from marketbus.contracts.market import BookLevel, BookSnapshot, MarketPrice, Trade
from marketbus.contracts.orders import CancelOrders, PlaceOrder
from tests.unit.test_invariants import BASE, GOOD, using_checks

CHECKS = invariants._checks


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    assert CHECKS is not None and invariants.compiled_checks(), (
        "the compiled checks (marketbus.contracts._checks) are not built: `make venv` builds them")


# decimals of every shape: specials, -0, zeros with any exponent, up to 45 digits, exponents
# around every bound (|x| < 1e18, 1e-30, the 38 digits, the exponent -67, the scientific form)
_special = st.sampled_from(["NaN", "-NaN", "sNaN", "Infinity", "-Infinity", "0", "-0", "0E-67", "0E-68", "0E+17",
                            "0E+18", "1E-30", "1E-31", "1E+17", "9" * 18, "1" + "0" * 18, "0.015", "100.50",
                            "1E-7", "1.0E-7", "1E-10", "1E-11", "1.5E-20", "-21865.01"]).map(Decimal)
_shaped = st.builds(lambda sign, digits, exp: Decimal((sign, digits, exp)), st.integers(0, 1),
                    st.lists(st.integers(0, 9), min_size=1, max_size=45).map(tuple), st.integers(-80, 30))
decimals = st.one_of(_special, _shaped, st.decimals(allow_nan=True, allow_infinity=True))

_alphabet = st.sampled_from(list("aZ09_~-=*?. >\r\né中"))
texts = st.one_of(st.text(_alphabet, max_size=12), st.text(st.sampled_from("ab_-"), min_size=62, max_size=66),
                  st.text(st.sampled_from("ab_-"), min_size=126, max_size=130), st.sampled_from(["buy", "unknown", ""]))
ints = st.one_of(st.integers(-5, 5), st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10_000, 10_001]),
                 st.integers(), st.booleans(), st.floats(allow_nan=False, max_value=1e19, min_value=-1e19))
# decimal texts (MarketPrice's decimals are str): every decimal's str() and plain form, and texts
# Decimal() reads that are not canonical or not numbers at all
_NUMBER = re.compile(r"-?[0-9.]+")
decimal_texts = st.one_of(decimals.map(str), decimals.map(lambda d: format(d, "f")),
                          st.sampled_from(["100.50", "-0", "-0.0", "1.5E+2", "1e2", " 1", "1_000", "+1", "0.0000001",
                                           "1.0E-7", "-", ".", "1.", ".5", "", "NaN", "Infinity", "٣", "1E-31",
                                           "1" * 19, "-" + "9" * 18 + ".5"]),
                          texts)
anything = st.one_of(decimals, texts, decimal_texts, ints, st.none(),
                     st.lists(st.one_of(texts, decimals), max_size=3), st.tuples(texts, texts))


def _values_of(good: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The good fields, each kept or replaced by any value (of its own kind, more often)."""
    def kind(value: Any) -> st.SearchStrategy[Any]:
        if isinstance(value, Decimal):
            return decimals
        if isinstance(value, str) and _NUMBER.fullmatch(value):  # a decimal carried as text, or may be one
            return decimal_texts
        if isinstance(value, str):
            return texts
        if isinstance(value, bool | int):
            return ints
        if isinstance(value, list):
            return st.lists(texts, max_size=3)
        return anything
    return st.fixed_dictionaries({name: st.one_of(st.just(value), st.just(value), kind(value), anything)
                                  for name, value in good.items()})


def outcome(make: Callable[[], Any]) -> tuple[Any, ...]:
    """What a user sees: the error (type and message), or each field's type and exact repr."""
    try:
        event = make()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return "ok", [(name, type(value), repr(value)) for name, value in msgspec.structs.asdict(event).items()]


def both(make: Callable[[], Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    results = []
    for implementation in ("compiled", "python"):
        for _ in using_checks(implementation):
            results.append(outcome(make))
    return results[0], results[1]


TYPES = [Trade, PlaceOrder, CancelOrders, MarketPrice]
GOODS = {**GOOD, MarketPrice: {**BASE, "last": "-3.25", "bid": None, "perf": "0.02", "ask_size": "1.5"}}


@pytest.mark.parametrize("event_type", TYPES, ids=lambda t: t.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_built_events_are_checked_alike(event_type: type, data: st.DataObject) -> None:
    fields = data.draw(_values_of(GOODS[event_type]))
    compiled, python = both(lambda: event_type(**fields))
    assert compiled == python


@pytest.mark.parametrize("event_type", TYPES, ids=lambda t: t.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decoded_events_are_checked_alike(event_type: type, data: st.DataObject) -> None:
    fields = data.draw(_values_of(GOODS[event_type]))
    wire = msgspec.to_builtins(event_type(**GOODS[event_type]))
    wire.update({name: str(value) if isinstance(value, Decimal) else value for name, value in fields.items()})
    payload = msgspec.json.encode(wire)
    for decode in (codec.decode, lambda d: codec.decode_as(d, event_type)):
        compiled, python = both(lambda decode=decode: decode(payload))
        assert compiled == python


@settings(max_examples=150, deadline=None)
@given(
    bids=st.lists(st.tuples(decimals, decimals), max_size=3), asks=st.lists(st.tuples(decimals, decimals), max_size=3)
)
def test_books_and_their_levels_are_checked_alike(
    bids: list[tuple[Decimal, Decimal]], asks: list[tuple[Decimal, Decimal]]
) -> None:
    def book() -> BookSnapshot:
        return BookSnapshot(**BASE, bids=[BookLevel(p, s) for p, s in bids], asks=[BookLevel(p, s) for p, s in asks])
    compiled, python = both(book)
    assert compiled == python
    if compiled[0] == "ok":
        payload = codec.encode(book())
        assert both(lambda: codec.decode(payload)) == (compiled, compiled)


def _python_test(rule: Rule) -> Callable[[Any], bool]:
    test = eval(f"lambda v: {rule.test}", dict(rule.names))

    def run(value: Any) -> bool:
        try:
            return bool(test(value))
        except Exception:
            return False
    return run


@settings(max_examples=600, deadline=None)
@given(value=decimals)
def test_the_compiled_decimal_tests_are_the_python_ones(value: Decimal) -> None:
    assert CHECKS is not None
    for rule, sign in ((POSITIVE, CHECKS.SIGN_POSITIVE), (NON_NEGATIVE, CHECKS.SIGN_NON_NEGATIVE),
                       (SIGNED, CHECKS.SIGN_SIGNED)):
        assert CHECKS.decimal_fits(value, sign) == _python_test(rule)(value), (rule, value)
    if value.is_finite():  # the canonical test: the one on str(v) that install_checks generates
        text = str(value)
        assert CHECKS.is_canonical(value) == (text[-1] != "0" and "+" not in text and "0E" not in text), value


@settings(max_examples=600, deadline=None)
@given(value=decimals)
def test_the_compiled_canonical_decimal_is_the_python_one(value: Decimal) -> None:
    assert CHECKS is not None
    if not CHECKS.decimal_fits(value, CHECKS.SIGN_SIGNED):  # canonical_decimal's domain: contract decimals
        return
    compiled, python = CHECKS.canonical_decimal(value), invariants.canonical_decimal(value)
    assert repr(compiled) == repr(python) and (compiled is value) == (python is value), value


def test_a_foreign_object_and_a_direct_call_go_through_the_python_checks() -> None:
    trade = Trade(**GOOD[Trade])
    assert trade.__post_init__() is None  # type: ignore[attr-defined]
    with pytest.raises(invariants.InvariantError, match=r"Trade\.id: .*\(AttributeError\)"):
        Trade.__post_init__(object())  # type: ignore[attr-defined]


def test_both_name_the_field_and_the_rule() -> None:
    bad = {**GOOD[Trade], "price": Decimal(-1)}
    for implementation in ("compiled", "python"):
        for _ in using_checks(implementation):
            with pytest.raises(invariants.InvariantError, match=r"Trade\.price: must be a decimal > 0"):
                Trade(**bad)


def test_without_the_extension_the_python_checks_run_alone() -> None:
    # what a `make dist` wheel (no extension) or an install without a C compiler runs
    script = """
import sys
sys.modules["marketbus.contracts._checks"] = None  # the import fails as when it is not built
from decimal import Decimal
from marketbus.contracts import codec, invariants
from marketbus.contracts.market import Trade
assert not invariants.compiled_checks() and type(Trade.__dict__["__post_init__"]).__name__ == "function"
good = dict(id="a1", source="finx", venue="X", symbol="BTC-USD", ts_event=1, ts_recv=2, price=Decimal("1.50"),
            size=Decimal(0))
assert str(Trade(**good).price) == "1.5" and codec.decode(codec.encode(Trade(**good))) == Trade(**good)
try:
    Trade(**{**good, "price": Decimal(-1)})
except invariants.InvariantError as exc:
    print(exc)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Trade.price: must be a decimal > 0"), run.stdout
