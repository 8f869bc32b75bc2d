"""The compiled plain-decimal reader (``_checks.c``'s ``dec_read``) against the Python rules, for each of
its callers: the accept test of a decimal text field (``decimal_text_ok``), a vendor's JSON number
(``decimal_text_of_json``, Sitagri), ``decimal_of_text`` (Digitex), the TickSupply CSV's decimals
(``csv_decimal``) and the history scanner's decimal columns (``plain_decimal``).

One differential test: whatever the text (more than 38 digits, exponents, signs, leading zeros,
empty, whitespace, ``.5``, ``5.``, NaN, Infinity, non-ASCII digits), each reader takes exactly the
texts of its documented plain form that the Python contract rules accept, and what it gives is the
Python value and canonical text (``invariants.decimal_text``, ``decimal_value``)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from marketbus.contracts import invariants
from marketbus.contracts.invariants import decimal_in_bounds, decimal_text, decimal_text_fits
from marketbus.history import schema

CHECKS = invariants._checks
pytestmark = pytest.mark.skipif(CHECKS is None or not hasattr(CHECKS, "read_plain_decimal")
                                or invariants.DECIMAL_ACCEPTS is None, reason="the compiled checks are not built")

SIGNS = {"positive": invariants.POSITIVE, "non_negative": invariants.NON_NEGATIVE, "signed": invariants.SIGNED}

EDGES = ["", " ", " 1", "1 ", "\t1", "1\n", ".", "-", "-.", ".5", "5.", "-.5", "-5.", "+1", "+0", "-0", "0", "00",
         "-00", "007.50", "0.0", "-0.0", "0.000", "1.50", "100.", "100.00", "1e5", "1E5", "1E+5", "1E-7", "1E-07",
         "1.0E-7", "1.5E-8", "0E-7", "0.5E-7", "0.01E-29", "0.1E-29", "1E-29", "1E-30", "1E-31", "9E-30", "1E-",
         "1E--7", "E-7", "-1E-7", "1.E-7", "NaN", "nan", "-NaN", "sNaN", "Infinity", "-Infinity", "inf", "1_000",
         "1.2.3", "--1", "-+1", "1" * 38, "1" * 39, "1" * 40, "9" * 18, "1" + "0" * 18, "9" * 18 + ".5",
         "0." + "0" * 29 + "1", "0." + "0" * 30 + "1", "0.000001", "0.0000001", "-0.000001", "1." + "0" * 37,
         "1." + "0" * 38, "1." + "0" * 40, "0." + "0" * 39, "0." + "1" * 39, "1." + "1" * 37, "1." + "1" * 20,
         "1." + "1" * 21, "\u0661", "\uff11.0", "1.5\u0660", "12345678901234567890.123"]

_digits = st.text("0123456789", max_size=45)
structured = st.builds(
    lambda sign, whole, dot, frac, exp: sign + whole + dot + frac + exp,
    st.sampled_from(["", "", "-", "+"]),
    st.one_of(_digits, st.text("0", max_size=3).map(lambda zeros: zeros + "1")),
    st.sampled_from([".", ".", ""]),
    st.one_of(_digits, st.text("0", max_size=40).map(lambda zeros: zeros + "1"),
              _digits.map(lambda d: d + "000")),
    st.one_of(st.just(""), st.just(""), st.builds(lambda e, n: e + str(n), st.sampled_from(["E-", "e-", "E+", "E"]),
                                                  st.integers(0, 40))),
)
texts = st.one_of(
    st.sampled_from(EDGES),
    structured,
    st.decimals(allow_nan=True, allow_infinity=True).map(str),  # Python's own forms, canonical or not
    st.text("0123456789.-+Ee ", max_size=12),
)

_JSON_PLAIN = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")
_TEXT_PLAIN = re.compile(r"-?[0-9]*\.[0-9]*")
_CSV_PLAIN = re.compile(r"[0-9]+(\.[0-9]+)?")


def _python_canonical(text: str) -> str | None:
    try:
        return decimal_text(text)
    except (ArithmeticError, ValueError):
        return None


def _stripped(text: str) -> str:
    """The text without its fraction's trailing zeros (and a point left alone): the same value."""
    if "." not in text:
        return text
    text = text.rstrip("0")
    return text[:-1] if text.endswith(".") else text


def _digit_count(text: str) -> int:
    return sum(c.isdigit() for c in text)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
@example("0.01E-29")  # the history reader took it (1e-31, beyond the bounds) before [1-9] was required
@example("0" * 39 + "1")  # 40 digits with leading zeros: the CSV reader leaves it to Python
def test_each_reader_takes_its_plain_form_of_what_python_accepts_and_gives_its_value(text: str) -> None:
    read = CHECKS.read_plain_decimal
    canonical = _python_canonical(text)
    for sign_name, rule in SIGNS.items():
        sign = invariants.SIGNS[sign_name]
        fits = decimal_text_fits(text, sign_name)  # Decimal(text) reads it, in the bounds, with the sign

        # a decimal text field's accept test: exactly the canonical texts Python accepts
        assert (read(text, "canonical", sign) is not None) == (fits and canonical == text), (sign_name, text)

        # TickSupply's CSV decimals: [0-9]+(.[0-9]+)?, at most 38 digits, that the contract accepts,
        # as the Decimal of the text without its trailing fraction zeros
        got = read(text, "csv", sign)
        assert (got is not None) == (_CSV_PLAIN.fullmatch(text) is not None and _digit_count(text) <= 38 and fits), \
            (sign_name, text)
        if got is not None:
            assert got.as_tuple() == Decimal(_stripped(text)).as_tuple()
            assert decimal_text(got) == canonical

        # the history's fast path: schema.ARROW_CHECKS (pyarrow's regex) is its Python rule, and it
        # takes only what the contracts accept
        bad = schema.ARROW_CHECKS[rule.name]
        assert bad is not None
        arrow_ok = not bad(pa.array([text], pa.string())).to_pylist()[0]
        took = read(text, "history", sign)
        assert (took is not None) == arrow_ok, (sign_name, text)
        if took is not None:
            assert fits, (sign_name, text)

    # a vendor's JSON number (Sitagri): its plain form within the digits it can carry, as the Python
    # steps' canonical text ("-0" kept for the sign rule); anything else goes to the Python steps
    got = read(text, "json", 0)
    plain = _JSON_PLAIN.fullmatch(text)
    frac = len(plain.group(2) or ".") - 1 if plain else 0
    takes = plain is not None and frac <= 38 and (not Decimal(text) or decimal_in_bounds(Decimal(text)))
    assert (got is not None) == takes, text
    if got is not None:
        assert got == invariants._decimal_text_of_json(text.encode())
        assert got == (canonical if got != "-0" else "-0")

    # decimal_of_text (Digitex): a plain text with fraction zeros to leave out, at most 38 digits,
    # parsed without them; every other text is given to Decimal as it is
    got = read(text, "text", 0)
    cut = (_TEXT_PLAIN.fullmatch(text) is not None and _digit_count(text) <= 38 and text != _stripped(text)
           and _digit_count(_stripped(text)) > 0)
    assert (got is not None) == cut, text
    if got is not None:
        assert got.as_tuple() == Decimal(_stripped(text)).as_tuple()
        assert got == Decimal(text)
        if decimal_in_bounds(got):  # (out of them, decimal_text gives the value's own str: no canonical form)
            assert decimal_text(got) == canonical
    try:
        theirs: Any = Decimal(text)
    except InvalidOperation:
        theirs = "refused"
    try:
        ours: Any = invariants.decimal_of_text(text)
    except InvalidOperation:
        ours = "refused"
    if isinstance(theirs, Decimal) and not theirs.is_finite():
        assert str(ours) == str(theirs)
    else:
        assert ours == theirs
        if isinstance(ours, Decimal):
            assert ours.is_signed() == theirs.is_signed()
            assert decimal_in_bounds(ours) == decimal_in_bounds(theirs)
