"""The invariants every contract type enforces, when built in Python and when decoded.

A field's type says what a consumer may rely on: ``ts_event: Nanos``, ``price: Price``,
``symbol: Token``. Each such type is ``Annotated[<python type>, Meta(...), <Rule>]``:

- the ``msgspec.Meta`` part (numeric bounds, lengths) is checked by msgspec while decoding, in C,
  and documents the field in the JSON Schemas (``make schemas``);
- the :class:`Rule` part is checked by a ``__post_init__`` generated for each class (see
  :func:`install_checks`); msgspec runs ``__post_init__`` after decoding as well as after
  ``__init__``, so an event built in Python is checked too (msgspec checks no types on
  ``__init__``). It covers what ``Meta`` cannot express (decimals, charsets, literals), and it
  gives every event, built or decoded, its decimals in canonical form (:func:`canonical_decimal`),
  so the codec's text of a decimal depends on its value alone. Where the C extension
  ``_checks`` is built (``make venv``, the Docker image), that ``__post_init__`` is compiled: the
  same checks, same messages, about a tenth of the cost (issue #12: validation costs < 20% of
  a trade's encode+decode); the generated Python stays the fallback (the ``make dist`` wheel).

A violation raises :class:`InvariantError` (a ``ValueError``) naming the class and the field,
e.g. ``Trade.price: must be a decimal > 0, got Decimal('-1')``; while decoding, msgspec turns it
into a ``msgspec.ValidationError`` with the same text.

Bounds (documented in the schemas too):

- timestamps (:data:`Nanos`): int ns since the epoch in ``[0, 2**63 - 1]``, i.e. 1970-01-01 to
  2262-04-11, what an int64 column (and every consumer's int64) holds;
- decimals: finite (no NaN, sNaN, Infinity), ``|x| < 10**18`` (so ``1e30`` is refused), at most
  38 significant digits, no non-zero ``|x| < 1e-30`` and no exponent below -67 (``0E-1000000``)
  (see :data:`DECIMAL_CONTEXT`):
  sums and products of a few of them stay exact in a 38-digit context and fit a PostgreSQL
  ``numeric`` and a Parquet decimal128(38). :data:`Price` is > 0 (``-0`` and ``0`` refused),
  :data:`Size` >= 0 (``-0`` refused), :data:`Amount` is signed (spreads, basis, P&L, balances);
  :data:`PriceText`, :data:`SizeText` and :data:`AmountText` are the same decimals carried as
  their canonical text (a ``str``; the same wire, schema and rules; see "decimals carried as text");
- tokens (:data:`Token`: source, venue, symbol, market, kind, service): 1..128 characters of
  ``[A-Za-z0-9_~-]``, the alphabet of :func:`subjects.normalize_symbol`, so they are always one
  NATS subject token and a header value. ``~`` is not a KV key character: a KV key built from a
  symbol must escape it;
- ids (:data:`Id`, :data:`ClientId`): 1..128 (client ids 1..64) characters of ``[-_=A-Za-z0-9]``,
  at once a subject token, a header value (``Nats-Msg-Id``) and a KV key;
- free texts are only bounded in length.
"""

from __future__ import annotations

import decimal
import os
import re
import types
import typing
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any

import msgspec

MIN_TS_NS = 0
MAX_TS_NS = 2**63 - 1  # 2262-04-11T23:47:16.854775807Z
MIN_INT64, MAX_INT64 = -(2**63), 2**63 - 1

DECIMAL_MAX_DIGITS = 38
DECIMAL_MAX_ADJUSTED = 17  # |x| < 10**18
DECIMAL_MIN_ADJUSTED = -30  # the smallest non-zero |x| is 1e-30
DECIMAL_CONTEXT = decimal.Context(
    prec=DECIMAL_MAX_DIGITS, Emax=DECIMAL_MAX_ADJUSTED, Emin=DECIMAL_MIN_ADJUSTED,
    traps=[decimal.InvalidOperation, decimal.Overflow, decimal.Underflow, decimal.Subnormal, decimal.Rounded,
           decimal.Clamped, decimal.Inexact, decimal.DivisionByZero],
)
"""``DECIMAL_CONTEXT.plus(x)`` raises for a decimal out of bounds (too many digits, too large, too
small, an exponent beyond reach); it is how the bounds are checked, in C."""

MAX_TOKEN = 128
MAX_ID = 128
MAX_CLIENT_ID = 64
MAX_LABEL = 1024  # short texts: names, codes, vendor references
MAX_TEXT = 1 << 20  # long texts (news content): a NATS payload's size

TOKEN_CHARS = r"[A-Za-z0-9_~-]"
ID_CHARS = r"[-_=A-Za-z0-9]"
_TOKEN_RE = re.compile(f"{TOKEN_CHARS}{{1,{MAX_TOKEN}}}")
SELECTOR_CHARS = r"[A-Za-z0-9_~*?-]"  # a token, or an fnmatch pattern of one: BTC*, *USD, ?TC
_SELECTOR_RE = re.compile(f"{SELECTOR_CHARS}{{1,{MAX_TOKEN}}}")
_ID_RE = re.compile(f"{ID_CHARS}{{1,{MAX_ID}}}")
_CLIENT_ID_RE = re.compile(f"{ID_CHARS}{{1,{MAX_CLIENT_ID}}}")


class InvariantError(ValueError):
    """A contract invariant does not hold; the message names the class and the field."""


class Rule:
    """What a field's value must satisfy beyond its Python type.

    ``test`` is a Python expression over ``v`` (the value), true when the value is good (it may
    also raise when it is bad); ``fast`` a cheaper expression that is true only for good values
    (false or raising sends the event to ``test``, field by field); ``names`` what both use;
    ``describe`` the message of a refusal. ``in_c``: the field's ``msgspec`` type and ``Meta`` say
    all of it, so msgspec checks it in C when decoding and the rule runs only when an event is
    built in Python (where msgspec checks nothing); ``build``: the part of ``test`` that ``fast``
    leaves to msgspec's decoding (a type, a length), checked on built events only; ``canonical``:
    a decimal field, which built events carry in :func:`canonical_decimal` form; ``decimal_text``:
    that decimal is carried as its canonical text (a ``str``, see :data:`AmountText`), made
    canonical by :func:`decimal_text` instead. ``kernel``: the
    same test as the compiled checks run it (see :func:`install_checks`): ``("int", lo, hi)``,
    ``("text", limit)``, ``("chars", charset, min, max)``, ``("decimal", sign rule)``,
    ``("decimal_text", sign rule)``; a rule
    without one runs its ``fast`` (and ``build``) expressions there, as a Python function.
    """

    def __init__(self, name: str, describe: str, test: str, fast: str | None = None, *, in_c: bool = False,
                 build: str | None = None, canonical: bool = False, kernel: tuple[Any, ...] | None = None,
                 decimal_text: bool = False, **names: Any) -> None:
        self.name, self.describe, self.test, self.fast, self.names = name, describe, test, fast or test, names
        self.in_c = in_c
        self.build = build  # what msgspec checks when decoding but ``fast`` leaves out (built events only)
        self.canonical = canonical  # a decimal: built events carry its canonical form (canonical_decimal)
        self.kernel = kernel
        self.decimal_text = decimal_text  # a decimal carried as canonical text (str), not a Decimal

    def __repr__(self) -> str:
        return f"Rule({self.name})"


_token_cache: set[str] = set()
_selector_cache: set[str] = set()
_CACHE_MAX = 100_000


def _remember(cache: set[str], value: str) -> bool:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache.add(value)
    return True


def _is_token(v: Any) -> bool:
    return type(v) is str and _TOKEN_RE.fullmatch(v) is not None and _remember(_token_cache, v)


def _is_selector(v: Any) -> bool:
    return type(v) is str and _SELECTOR_RE.fullmatch(v) is not None and _remember(_selector_cache, v)


_DEC_BOUNDS = (f"finite, |x| < 1e{DECIMAL_MAX_ADJUSTED + 1}, at most {DECIMAL_MAX_DIGITS} digits, "
               f"no non-zero |x| < 1e{DECIMAL_MIN_ADJUSTED}")
_DEC_NAMES: dict[str, Any] = {"_Decimal": Decimal, "_fit": DECIMAL_CONTEXT.plus, "_ZERO": Decimal(0),
              "_HI": Decimal(10) ** (DECIMAL_MAX_ADJUSTED + 1)}
# ``_fit(v)`` raises for a finite value out of the bounds and returns it (``is not None``: a zero
# is falsy). Only a Decimal has ``is_finite``; the comparisons raise InvalidOperation for a NaN.
_FITS = "_fit(v) is not None"
_IS_DECIMAL = "v.__class__ is _Decimal"

NANOS = Rule("nanos", f"must be int ns in [{MIN_TS_NS}, {MAX_TS_NS}] (1970..2262)",
             "v.__class__ is int and _MIN_TS <= v <= _MAX_TS", in_c=True, kernel=("int", MIN_TS_NS, MAX_TS_NS),
             _MIN_TS=MIN_TS_NS, _MAX_TS=MAX_TS_NS)
INT64 = Rule("int64", "must be an int64", "v.__class__ is int and _MIN64 <= v <= _MAX64", in_c=True,
             kernel=("int", MIN_INT64, MAX_INT64), _MIN64=MIN_INT64, _MAX64=MAX_INT64)
COUNT = Rule("count", "must be an int in [0, 2**63 - 1]", "v.__class__ is int and 0 <= v <= _MAX64", in_c=True,
              kernel=("int", 0, MAX_INT64), _MAX64=MAX_INT64)
POSITIVE = Rule(
    "positive",
    f"must be a decimal > 0 ({_DEC_BOUNDS})",
    f"v.__class__ is _Decimal and _ZERO < v < _HI and {_FITS}",
    # a NaN raises in the comparison, an infinity fails it, _fit raises out of bounds
    "_ZERO < _fit(v) < _HI",
    build=_IS_DECIMAL,
    canonical=True,
    kernel=("decimal", "positive"),
    **_DEC_NAMES,
)
NON_NEGATIVE = Rule("non_negative", f"must be a decimal >= 0, not -0 ({_DEC_BOUNDS})",
                    f"v.__class__ is _Decimal and not v.is_signed() and v < _HI and {_FITS}",
                    "not v.is_signed() and _fit(v) < _HI", build=_IS_DECIMAL, canonical=True,
                    kernel=("decimal", "non_negative"), **_DEC_NAMES)
SIGNED = Rule("signed", f"must be a decimal ({_DEC_BOUNDS})", f"v.__class__ is _Decimal and -_HI < v < _HI and {_FITS}",
              "-_HI < _fit(v) < _HI", build=_IS_DECIMAL, canonical=True, kernel=("decimal", "signed"), **_DEC_NAMES)
TOKEN = Rule("token", f"must be 1..{MAX_TOKEN} characters of {TOKEN_CHARS} (one subject token)",
             "_is_token(v)", "v in _tokens", kernel=("chars", TOKEN_CHARS, 1, MAX_TOKEN), _tokens=_token_cache,
             _is_token=_is_token)
SELECTOR = Rule("selector", f"must be 1..{MAX_TOKEN} characters of {SELECTOR_CHARS} (a token or an fnmatch pattern)",
                "_is_selector(v)", "v in _selectors", kernel=("chars", SELECTOR_CHARS, 1, MAX_TOKEN),
                _selectors=_selector_cache, _is_selector=_is_selector)
ID = Rule("id", f"must be 1..{MAX_ID} characters of {ID_CHARS}", "v.__class__ is str and _id(v) is not None",
          # bytes.isalnum is ASCII-only, and much faster than str.isalnum (Unicode-aware)
          "v.encode().isalnum()", build="len(v) <= _MAX_ID", kernel=("chars", ID_CHARS, 1, MAX_ID), _MAX_ID=MAX_ID,
          _id=_ID_RE.fullmatch)
CLIENT_ID = Rule("client_id", f"must be 1..{MAX_CLIENT_ID} characters of {ID_CHARS}",
                 "v.__class__ is str and _client_id(v) is not None", kernel=("chars", ID_CHARS, 1, MAX_CLIENT_ID),
                 _client_id=_CLIENT_ID_RE.fullmatch)


def decimal_in_bounds(value: Decimal) -> bool:
    """Whether a decimal is finite and within the bounds every contract decimal keeps (its sign
    aside): normalizers check what they compute with before computing."""
    try:
        return value.is_finite() and DECIMAL_CONTEXT.plus(value) is not None
    except (ArithmeticError, AttributeError, TypeError):
        return False


def _text_rule(limit: int) -> Rule:
    return Rule(f"text{limit}", f"must be a string of at most {limit} characters",
                "v.__class__ is str and len(v) <= _limit", in_c=True, kernel=("text", limit), _limit=limit)


LABEL, TEXT = _text_rule(MAX_LABEL), _text_rule(MAX_TEXT)


def _decimal_meta(rule: Rule, sign: str) -> msgspec.Meta:
    return msgspec.Meta(
        description=f"A decimal string {sign}: {_DEC_BOUNDS}. marketbus publishes it in canonical text: "
        "plain, no trailing zeros, '0' for zero; the reduced scientific form ('1E-7') "
        "below 1e-6.",
        extra_json_schema={"x-invariant": rule.name},
    )


# --- the field types ---------------------------------------------------------------------------------
Nanos = Annotated[
    int, msgspec.Meta(ge=MIN_TS_NS, le=MAX_TS_NS, description="ns since the Unix epoch (UTC), int64"), NANOS
]
Int64 = Annotated[int, msgspec.Meta(ge=MIN_INT64, le=MAX_INT64), INT64]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT64), COUNT]
Price = Annotated[Decimal, _decimal_meta(POSITIVE, "> 0"), POSITIVE]
"""A price that is always positive: trades, ticks, quotes, book levels, fills, unit factors."""
Size = Annotated[Decimal, _decimal_meta(NON_NEGATIVE, ">= 0"), NON_NEGATIVE]
"""A size, volume, quantity or open interest; also a price where 0 means "none" (market orders)."""
Amount = Annotated[Decimal, _decimal_meta(SIGNED, "(may be negative)"), SIGNED]
"""A signed value: spread and basis quotes, premiums, performances, P&L, balances, coordinates."""
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOKEN,
                                    extra_json_schema={"pattern": f"^{TOKEN_CHARS}+$"}), TOKEN]
SelectorToken = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOKEN,
                                            extra_json_schema={"pattern": f"^{SELECTOR_CHARS}+$"}), SELECTOR]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID, extra_json_schema={"pattern": f"^{ID_CHARS}+$"}), ID]
ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CLIENT_ID,
                                       extra_json_schema={"pattern": f"^{ID_CHARS}+$"}), CLIENT_ID]
Label = Annotated[str, msgspec.Meta(max_length=MAX_LABEL), LABEL]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT), TEXT]


# --- the generated __post_init__ ----------------------------------------------------------------------
_V = re.compile(r"\bv\b")  # the value in a rule's expressions


def _rule_of(tp: Any) -> tuple[Rule | None, bool, bool, Any]:
    """(rule, optional, is a list of it, literal values) of an annotation."""
    optional = many = False
    while True:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(tp))
            if len(args) != 1:
                return None, optional, many, None
            tp = args[0]
        elif origin is Annotated:
            for extra in tp.__metadata__:
                if isinstance(extra, Rule):
                    return extra, optional, many, None
            tp = tp.__origin__
        elif origin is list and not many:
            (tp,) = typing.get_args(tp)
            many = True
        elif origin is typing.Literal:
            return None, optional, many, frozenset(typing.get_args(tp))
        else:
            return None, optional, many, None


def rule_of(tp: Any) -> tuple[Rule | None, bool, bool, Any]:
    """``(rule, optional, is a list of it, literal values)`` of a field's annotation: what other
    checkers of the same invariants (the history's vectorized Arrow checks) derive theirs from."""
    return _rule_of(tp)


def _fail(cls_name: str, field: str, describe: str, value: Any, exc: BaseException | None = None) -> InvariantError:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    why = f" ({type(exc).__name__})" if exc is not None and not isinstance(exc, (_Bad, InvariantError)) else ""
    return InvariantError(f"{cls_name}.{field}: {describe}, got {text}{why}")


# --- canonical decimals ------------------------------------------------------------------------------
_ONE = Decimal(1)
_CANON_ZERO = Decimal(0)
_normalize = DECIMAL_CONTEXT.normalize


_CANONICAL_FAST = '((s := str(v))[-1] != "0" and "+" not in s and "0E" not in s)'
"""True only for a canonical decimal (the test of :func:`canonical_decimal`, inlined)."""
_CANONICAL_TEXT_FAST = "_is_canon_text(v) is not None"
"""True only for a canonical decimal text (of a value the field's test accepted)."""


def canonical_decimal(value: Decimal) -> Decimal:
    """The canonical form of a contract decimal: the one every contract event carries (built or decoded), so
    the text marketbus publishes is a function of the value alone (see :data:`CANONICAL_DECIMAL`).

    ``Decimal("100.50")`` -> ``Decimal("100.5")``, ``Decimal("1E+2")`` -> ``Decimal("100")``,
    ``Decimal("-0.00")`` -> ``Decimal("0")``; ``value`` itself when it is canonical already.
    ``value`` must be a finite decimal within the contract bounds (raises ``ArithmeticError``
    otherwise).
    """
    text = str(value)
    # the text of a canonical value never ends with a 0 after a point, never shows an exponent with
    # a sign "+" nor a mantissa ending with 0 ("1.0E-7", "0E-8"), and is "0" for zero: only texts
    # that could break one of these rules go on
    if text[-1] != "0" and "+" not in text and "0E" not in text:
        return value
    if not value:
        return _CANON_ZERO
    reduced = _normalize(value)
    out = str(reduced)
    if "E+" in out:  # an integer: no exponent ("1E+2" -> "100")
        return reduced.quantize(_ONE, context=DECIMAL_CONTEXT)
    return value if out == text else reduced


CANONICAL_DECIMAL = (
    "The canonical text of a decimal: Python's str() of the reduced value with no positive exponent, "
    "which is plain notation without trailing zeros ('100.5', '100', '0.015', '0' for zero and for -0) for every "
    "|x| >= 1e-6, and the scientific form of the reduced value ('1E-7', '1.5E-8') below."
)
"""What :func:`canonical_decimal` gives, in words (schemas and docs)."""


def canonical_decimal_text(text: str) -> str:
    """The canonical text of any exact decimal text (``"100.50"`` -> ``"100.5"``,
    ``"0.0000001"`` -> ``"1E-7"``): how a reader of stored values (a ``numeric`` column, a
    ``decimal(38, 18)`` one) gives back the text marketbus published."""
    value = Decimal(text)
    if not value.is_finite():
        return text
    if not value:
        return "0"
    reduced = value.normalize(_TEXT_CONTEXT)
    if reduced.as_tuple().exponent > 0:  # type: ignore[operator]
        reduced = reduced.quantize(_ONE, context=_TEXT_CONTEXT)
    return str(reduced)


_TEXT_CONTEXT = decimal.Context(prec=200, Emax=999_999, Emin=-999_999)


# --- decimals carried as text ------------------------------------------------------------------------
# A vendor's decimal that nothing computes with on the way (a Sitagri market price's last, bid, ask...)
# can be carried as its canonical text: the event holds the ``str`` marketbus publishes, so no Decimal
# is built when it is normalized or decoded, and none is formatted when it is encoded (issue #16:
# those were about a third of a Sitagri push's cost). The wire is the same: a JSON string of the
# canonical text, the same bytes as a Decimal field of that value gives. The invariants are the
# Decimal types' (same rule names, bounds, signs and messages); a consumer that computes asks for the
# value: :func:`decimal_value`, or the event's ``decimal(field)`` (``MarketPrice.decimal``).
_CANONICAL_TEXT = re.compile(
    r"0|-?[1-9][0-9]*(\.[0-9]*[1-9])?|-?0\.0{0,5}[1-9]([0-9]*[1-9])?|-?[1-9](\.[0-9]*[1-9])?E-([7-9]|[1-9][0-9]+)"
)
"""The shape of the canonical text (:data:`CANONICAL_DECIMAL`); the bounds are checked apart."""
_DECIMAL_TESTS: dict[str, Callable[[Decimal], Any]] = {
    rule.kernel[1]: eval(f"lambda v: {rule.test}", dict(rule.names))  # the Decimal rule's own test
    for rule in (POSITIVE, NON_NEGATIVE, SIGNED) if rule.kernel is not None
}


def _canonical_text_match(value: Any) -> re.Match[str] | None:
    """The canonical-form test of a decimal text field's value: a ``Decimal`` given to the
    constructor is not canonical text yet (it gets its text), anything else is matched."""
    return _CANONICAL_TEXT.fullmatch(value) if value.__class__ is str else None


def decimal_text_fits(text: Any, sign: str) -> bool:
    """Whether ``text`` is a ``str`` that ``Decimal()`` reads as a decimal the contracts accept with
    that sign (``"positive"``, ``"non_negative"``, ``"signed"``): the test of the decimal text
    types, canonical or not (``"100.50"`` fits; the contract then carries ``"100.5"``). A
    ``Decimal`` fits too: Python code that builds an event from ``Decimal`` values keeps working,
    and the event carries their canonical text."""
    if text.__class__ is not str and text.__class__ is not Decimal:
        return False
    try:
        return bool(_DECIMAL_TESTS[sign](text if text.__class__ is Decimal else Decimal(text)))
    except (ArithmeticError, ValueError, TypeError):
        return False


def decimal_text(value: Decimal | str) -> str:
    """The canonical text of a decimal (a ``Decimal``, or any text ``Decimal()`` reads):
    ``str(canonical_decimal(value))``, what a decimal text field carries and the codec writes
    (``Decimal("100.50")`` -> ``"100.5"``, ``"1.5E+2"`` -> ``"150"``, ``"-0.00"`` -> ``"0"``). A value
    out of the contract bounds (``1E+30``, ``NaN``) gives its own ``str()``, which the contracts
    refuse, naming it. Raises ``decimal.InvalidOperation`` for a text that is not a number."""
    number = value if value.__class__ is Decimal else Decimal(value)
    if not decimal_in_bounds(number):
        return str(number)
    return str(canonical_decimal(number))


def decimal_text_of(value: Decimal) -> str:
    """What a normalizer builds a decimal text field from: :func:`decimal_text`, except that a
    negative zero stays ``"-0"``, so the field's rule judges it as it judges ``Decimal("-0")``
    (a :data:`SizeText` refuses it, an :data:`AmountText` carries ``"0"``)."""
    if not value and value.is_signed() and value.is_finite():
        return "-0"
    return decimal_text(value)


def _decimal_text_of_json(raw: Any) -> str | None:
    value = _json_decimal.decode(raw)
    return None if value is None else decimal_text_of(value)


_json_decimal: msgspec.json.Decoder[Decimal | None] = msgspec.json.Decoder(Decimal | None)


def decimal_value(text: str | None) -> Decimal | None:
    """The exact ``Decimal`` of a decimal text field (``None`` for ``None``): how a consumer that
    computes reads ``MarketPrice.last`` and its like. A contract's text is canonical and within
    the bounds, so the value is exact, and ``decimal_text(decimal_value(t)) == t``."""
    return None if text is None else decimal_of_text(text)


def is_decimal_text(tp: Any) -> bool:
    """Whether a field's annotation is a decimal carried as text (:data:`AmountText`...): storage
    and other readers of the contracts treat it as the decimal it is (``numeric``, ``decimal(38, 18)``)."""
    rule = _rule_of(tp)[0]
    return rule is not None and rule.decimal_text


def decimal_text_fields(cls: type) -> tuple[str, ...]:
    """The names of a contract class's decimal text fields, in order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return tuple(name for name in getattr(cls, "__struct_fields__", ()) if is_decimal_text(hints[name]))


def _decimal_text_rule(rule: Rule) -> Rule:
    assert rule.kernel is not None
    sign = rule.kernel[1]
    return Rule(rule.name, rule.describe, f"_text_fits(v, {sign!r})", canonical=True, decimal_text=True,
                kernel=("decimal_text", sign), _text_fits=decimal_text_fits)


POSITIVE_TEXT, NON_NEGATIVE_TEXT, SIGNED_TEXT = map(_decimal_text_rule, (POSITIVE, NON_NEGATIVE, SIGNED))


def _decimal_text_meta(rule: Rule, sign: str) -> msgspec.Meta:
    # the JSON Schema of a Decimal field of the same rule, key for key: other-language consumers see
    # one type, whatever Python carries
    meta = _decimal_meta(rule, sign)
    return msgspec.Meta(description=meta.description,
                        extra_json_schema={"x-invariant": rule.name, "type": "string", "format": "decimal"})


PriceText = Annotated[str, _decimal_text_meta(POSITIVE_TEXT, "> 0"), POSITIVE_TEXT]
"""A :data:`Price` carried as its canonical text (``"100.5"``); its value: :func:`decimal_value`."""
SizeText = Annotated[str, _decimal_text_meta(NON_NEGATIVE_TEXT, ">= 0"), NON_NEGATIVE_TEXT]
"""A :data:`Size` carried as its canonical text; its value: :func:`decimal_value`."""
AmountText = Annotated[str, _decimal_text_meta(SIGNED_TEXT, "(may be negative)"), SIGNED_TEXT]
"""An :data:`Amount` carried as its canonical text; its value: :func:`decimal_value`."""


# --- the generated checks ----------------------------------------------------------------------------
def install_checks(cls: type) -> None:
    """Give ``cls`` a ``__post_init__`` that checks every field annotated with a :class:`Rule` (and
    every ``Literal`` field) and makes its decimals canonical.

    It runs for every decoded message, so it is generated code: one boolean expression of every
    field's ``fast`` test (about 20 ns a field), the ones msgspec cannot check in C first, then
    whether each decimal is canonical already. Only when it is not true does the field-by-field
    ``test`` run, which raises :class:`InvariantError` naming the first bad field; a good event
    then gets the canonical form of its decimals.

    When the C extension ``_checks`` is built (``make venv``, the Docker image), the class gets a
    compiled ``__post_init__`` instead (a ``_checks.Plan``: about 10x cheaper, see
    bench/RESULTS.md), which runs each field's ``Rule.kernel``. It only accepts: a value it does
    not accept, and a decimal it does not see as canonical, go to the same generated Python
    (``_explain``, ``_canonize``), so the errors and the results are those of the Python path.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    names: dict[str, Any] = {"_fail": _fail, "_cls_name": cls.__name__, "_Bad": _Bad, "_canon": canonical_decimal,
                             "_canon_text": decimal_text, "_is_canon_text": _canonical_text_match,
                             "_set": msgspec.structs.force_setattr}
    decode_fast: list[str] = []
    build_fast: list[str] = []
    canon: list[str] = []
    canon_fast: list[str] = []
    slow: list[str] = []
    describe: dict[str, str] = {}
    kernels: list[tuple[Any, ...]] | None = [] if _checks is not None else None  # the compiled plan's fields
    for field in (name for name in hints if not name.startswith("__")):
        rule, optional, many, literal = _rule_of(hints[field])
        if rule is None and literal is None:
            continue
        value = f"self.{field}"
        if rule is not None:
            names.update(rule.names)
            test, quick, describe[field] = rule.test, rule.fast, rule.describe
            in_c, build = rule.in_c, rule.build
        else:
            key = f"_lit_{field}"
            names[key] = literal
            test = quick = f"v in {key}"
            describe[field] = f"must be one of {sorted(map(str, literal))}"
            in_c, build = True, None

        def expr(e: str, many: bool = many, optional: bool = optional, value: str = value) -> str:
            if many:
                return f"all({e} for v in {value} or ())"
            inline = _V.sub(value, e)
            return f"({value} is None or {inline})" if optional else f"({inline})"

        (build_fast if in_c else decode_fast).append(expr(quick))
        if build is not None:
            build_fast.append(expr(build))
        if rule is not None and rule.canonical:
            # a Decimal: canonical_decimal (the same object when canonical); a text: decimal_text
            canon_of, canon_test = (
                ("_canon_text", _CANONICAL_TEXT_FAST) if rule.decimal_text else ("_canon", _CANONICAL_FAST))
            canon_fast.append(f"all({canon_of}(v) == v for v in {value} or ())" if many else expr(canon_test))
            if many:
                canon += [f"if {value}:", f"    _set(self, {field!r}, [{canon_of}(v) for v in {value}])"]
            else:
                canon += [f"v = {value}", *(["if v is not None:"] if optional else ["if True:"]),
                          f"    c = {canon_of}(v)", "    if c is not v:", f"        _set(self, {field!r}, c)"]
        if kernels is not None:
            kernels.append(_kernel_of(field, rule, literal, optional, many, quick, build))
        slow.append(f"f = {field!r}")
        loop = f"for v in {value} or ():" if many else f"for v in ({value},):"
        slow += [loop, *(["    if v is None: continue"] if optional else []), f"    if not ({test}): raise _Bad"]
    if not slow:
        return
    names["_describe"] = describe
    explain = "\n".join([
        "def _explain(self):",
        "    f = v = None",
        "    try:",
        *[f"        {line}" for line in slow],
        "    except Exception as exc:",
        "        raise _fail(_cls_name, f, _describe.get(f, 'is invalid'), v, exc) from None",
    ])
    # the checks msgspec leaves to Python when decoding first, then those it does in C (types,
    # bounds, literals: for built events), then whether the decimals are canonical
    fast = decode_fast + build_fast
    post_init = "\n".join([
        "def __post_init__(self):",
        "    try:",
        f"        ok = {' and '.join(fast) or 'True'}",
        "    except Exception:",
        "        ok = False",
        "    if not ok:",
        "        _explain(self)",
        *([f"    if not ({' and '.join(canon_fast)}):", *[f"        {line}" for line in canon]] if canon else []),
    ])
    canonize = "\n".join(["def _canonize(self):", *[f"    {line}" for line in canon or ["pass"]]])
    for source in (explain, post_init, canonize):
        exec(compile(source, f"<invariants of {cls.__qualname__}>", "exec"), names)
    names["_explain"].source = explain
    names["__post_init__"].source = post_init  # what was generated, for reading
    cls.__post_init__ = names["__post_init__"]  # type: ignore[attr-defined]
    if _checks is not None and kernels is not None and (_DECIMALS_IN_C or not canon):
        cls.__post_init__ = _checks.Plan(  # type: ignore[attr-defined]
            cls, kernels, names["_explain"], names["_canonize"] if canon else None, names["__post_init__"])


def _kernel_of(field: str, rule: Rule | None, literal: Any, optional: bool, many: bool, fast: str,
               build: str | None) -> tuple[Any, ...]:
    """A field of a compiled plan: ``(name, kind, optional, many, canonical, lo, hi, extra)``."""
    assert _checks is not None
    head = (field, optional, many, rule is not None and rule.canonical)

    def entry(kind: int, lo: int = 0, hi: int = 0, extra: Any = None) -> tuple[Any, ...]:
        return (head[0], kind, *head[1:], lo, hi, extra)

    kernel = rule.kernel if rule is not None else ("literal", literal)
    match kernel:
        case ("int", lo, hi):
            return entry(_checks.KIND_INT, lo, hi)
        case ("text", limit):
            return entry(_checks.KIND_TEXT, 0, limit)
        case ("chars", chars, least, most):
            return entry(_checks.KIND_CHARS, least, most, _charset(chars))
        case ("decimal", sign):
            return entry(_checks.KIND_DECIMAL, extra=_SIGNS[sign])
        case ("decimal_text", sign):
            return entry(_checks.KIND_DECIMAL_TEXT, extra=_SIGNS[sign])
        case ("literal", values):
            return entry(_checks.KIND_LITERAL, extra=values)
    assert rule is not None
    source = f"lambda v: ({fast}) and ({build})" if build else f"lambda v: ({fast})"
    return entry(_checks.KIND_PYTHON, extra=eval(source, dict(rule.names)))


def _charset(pattern: str) -> str:
    """The ASCII characters a regex character class (``TOKEN_CHARS``...) matches: no other does."""
    return "".join(c for c in map(chr, range(128)) if re.fullmatch(pattern, c))


def set_compiled_checks(enabled: bool) -> bool:
    """Run the compiled checks (True, the default when built) or the generated Python ones in every
    class; returns the previous setting. ``MARKETBUS_PYTHON_CHECKS=1`` in the environment starts
    with the Python ones. Raises ``RuntimeError`` when the extension is not built."""
    if _checks is None:
        raise RuntimeError("marketbus.contracts._checks is not built (pip install -e . builds it)")
    return _checks.set_enabled(enabled)


def compiled_checks() -> bool:
    """Whether the contract classes run the compiled checks (the extension is built and enabled)."""
    if _checks is None:
        return False
    previous = _checks.set_enabled(True)
    _checks.set_enabled(previous)
    return previous


try:
    import marketbus.contracts._checks as _checks  # a module of the package, not the package's __init__
except ImportError:  # not built (the `make dist` wheel): the generated Python checks alone
    _checks = None  # type: ignore[assignment]
# what this module and ids.py call; a build older than the source (a pull without `make venv`)
# lacks some, and then the Python checks run instead of failing at import
COMPILED_API = ("Plan", "KIND_INT", "KIND_TEXT", "KIND_CHARS", "KIND_DECIMAL", "KIND_LITERAL", "KIND_PYTHON",
                "SIGN_POSITIVE", "SIGN_NON_NEGATIVE", "SIGN_SIGNED", "configure_decimal", "configure_canonical",
                "set_enabled", "decimal_fits", "decimal_of_text", "event_id_hex", "KIND_DECIMAL_TEXT",
                "decimal_text_of_json", "configure_decimal_text", "seconds_ns")
if _checks is not None and (_missing := [name for name in COMPILED_API if not hasattr(_checks, name)]):
    import warnings

    warnings.warn(f"marketbus.contracts._checks is an older build than its source (no {', '.join(_missing)}): "
                  "the Python contract checks run instead; `make venv` rebuilds it", RuntimeWarning, stacklevel=1)
    _checks = None  # type: ignore[assignment]
_SIGNS = {} if _checks is None else {"positive": _checks.SIGN_POSITIVE, "non_negative": _checks.SIGN_NON_NEGATIVE,
                                     "signed": _checks.SIGN_SIGNED}
# the compiled checks read a Decimal in place: only when its layout is the one they know
_DECIMALS_IN_C = _checks is not None and _checks.configure_decimal(
    Decimal, DECIMAL_MAX_DIGITS, DECIMAL_MAX_ADJUSTED, DECIMAL_MIN_ADJUSTED)
if _DECIMALS_IN_C:  # canonical_decimal's steps, for the compiled one
    _checks.configure_canonical(
        _CANON_ZERO, _normalize, lambda reduced: reduced.quantize(_ONE, context=DECIMAL_CONTEXT)
    )
if _checks is not None and os.environ.get("MARKETBUS_PYTHON_CHECKS", "") not in ("", "0"):
    _checks.set_enabled(False)

DECIMAL_ACCEPTS: Any = _checks.decimal_fits if _DECIMALS_IN_C else None
"""``DECIMAL_ACCEPTS(v, SIGNS["positive"])`` (``"non_negative"``, ``"signed"``): the compiled
checks' accept test of a contract decimal, read in place (no new Decimal, unlike
:func:`decimal_in_bounds`). True only for a decimal every contract accepts with that sign; False
when not known to be good (the caller then runs the careful test). None when not compiled."""
SIGNS: dict[str, int] = _SIGNS


def _decimal_of_text(text: str) -> Decimal:
    return Decimal(text)


decimal_of_text: Callable[[str], Decimal] = _checks.decimal_of_text if _DECIMALS_IN_C else _decimal_of_text
"""``Decimal(text)`` (same value, same errors), compiled: a plain text's trailing fraction zeros
are left out, so an 18-place vendor text parses straight to the canonical form a contract gives
it (``"64000.010000000000000000"`` -> ``Decimal("64000.01")``), and the contract makes no second
Decimal. Its exponent may differ from ``Decimal(text)``'s: where the text matters (an error
message quoting the value), use ``Decimal(text)``."""

if _checks is not None:
    _checks.configure_decimal_text(
        _decimal_text_of_json, DECIMAL_MAX_DIGITS, DECIMAL_MAX_ADJUSTED, DECIMAL_MIN_ADJUSTED)


def _seconds_ns(raw: Any) -> int | None:
    whole, dot, frac = bytes(raw).partition(b".")
    if not (whole.isdigit() and len(whole) <= 10 and int(whole) < MAX_TS_NS // 10**9 and (
            not dot or (frac.isdigit() and len(frac) <= 9))):
        return None
    return int(whole) * 10**9 + (int(frac.ljust(9, b"0")) if dot else 0)


seconds_ns: Callable[[Any], int | None] = _checks.seconds_ns if _checks is not None else _seconds_ns
"""A vendor date in unix seconds, as the raw JSON text of a plain number (``1700000000`` or
``1700000000.25``, at most 9 places, below 2**63 ns) -> its exact int ns; ``None`` for any other
text (an exponent, a sign, a string, more places, out of range), which the caller reads the
careful way (``Decimal``, with its own range check and refusals). Compiled when built."""
decimal_text_of_json: Callable[[Any], str | None] = (
    _checks.decimal_text_of_json if _checks is not None else _decimal_text_of_json)
"""A JSON value (``msgspec.Raw`` or bytes: a number, a decimal string or ``null``) -> the text a
decimal text field is built from (:func:`decimal_text_of` of its exact value), ``None`` for ``null``:
how a normalizer carries a vendor's JSON number through without building a ``Decimal``. It accepts
and refuses what a ``msgspec`` ``Decimal | None`` field decodes (raises ``msgspec.DecodeError``
for anything else: ``true``, ``{}``, ``"abc"``). Compiled, a plain number (``-152.250``,
``0.00000012``) is turned into its text in C; any other goes to the Python steps."""


class _Bad(Exception):
    """Raised inside the generated checks; turned into an InvariantError naming the field."""


class Checked(msgspec.Struct, frozen=True):  # every contract is frozen (and type checkers need the base to say so)
    """Base of every contract struct: subclasses get their invariant checks installed."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        install_checks(cls)

