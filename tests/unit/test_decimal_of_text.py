"""``invariants.decimal_of_text`` (compiled): the value of ``Decimal(text)``, and the same
accept/refuse outcome in every contract, whatever the text."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import pytest

from marketbus.contracts.invariants import InvariantError, canonical_decimal, compiled_checks, decimal_of_text
from marketbus.contracts.market import Trade

TEXTS = ["64000.010000000000000000", "100.00", "0.000", "-0.000", "-1.000000000000000000", ".50", "00.10", "5",
         "-5.50", "1E5", "1.50E+3", " 1.0", "0.000000100000000000", "1." + "0" * 37, "1." + "0" * 38,
         "-1." + "0" * 37, "0." + "0" * 70, "9" * 18 + ".000", "1" * 19 + ".0", "NaN", "-Infinity", "１.0"]
BAD = [".", "-.", "abc", "", "1.2.3", "--1", "1.0x"]


@pytest.mark.parametrize("text", TEXTS)
def test_same_value_and_same_contract_outcome_as_decimal(text: str) -> None:
    ours, theirs = decimal_of_text(text), Decimal(text)
    assert type(ours) is Decimal
    assert str(ours) == str(theirs) if not ours.is_finite() else ours == theirs

    def outcome(value: Decimal) -> str:
        try:
            return str(Trade(id="x", source="s", venue="v", symbol="y", ts_event=0, ts_recv=0, price=value,
                             size=value).price)
        except InvariantError:
            return "refused"

    assert outcome(ours) == outcome(theirs)


@pytest.mark.parametrize("text", BAD)
def test_what_decimal_refuses_it_refuses(text: str) -> None:
    with pytest.raises(InvalidOperation):
        Decimal(text)
    with pytest.raises(InvalidOperation):
        decimal_of_text(text)


def test_a_plain_text_parses_to_its_canonical_form() -> None:
    if not compiled_checks():
        pytest.skip("the compiled checks are not built")
    for text in ("64000.010000000000000000", "0.000000100000000000", "0.50", "3.000"):
        value = decimal_of_text(text)
        assert canonical_decimal(value) is value  # the contract keeps it as it is
    assert str(decimal_of_text("100.00")) == str(canonical_decimal(Decimal("100.00"))) == "100"
