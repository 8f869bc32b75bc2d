"""One set of time parsers: every vendor time becomes integer nanoseconds since the epoch (UTC),
sub-second digits kept (down to the nanosecond: ``datetime`` alone stops at microseconds).

- :func:`iso_ns` — ISO 8601 / RFC 3339 (``2026-01-02T03:04:05.123456789Z``, ``+01:00``, no zone
  = UTC; a space instead of ``T`` too).
- :func:`epoch_ns` — a number in seconds / ms / µs / ns (fractions kept).
- :func:`time_or_offset_ns` — a setting: an ISO time, or ``-<seconds>`` before ``now_ns``.

And the way back, the one formatter every part of marketbus writes times with:

- :func:`ns_iso` — ns -> ISO 8601 text (UTC), to as many sub-second digits as the reader needs.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_FRACTION = re.compile(r"^(?P<whole>[^.,]+)[.,](?P<frac>\d+)(?P<zone>Z|z|[+-]\d{2}(?::?\d{2})?)?$")
_UNITS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def iso_ns(text: str) -> int:
    """ISO 8601 -> ns. Raises ``ValueError`` on anything else."""
    text = text.strip()
    if not text or not text.isascii():  # fromisoformat accepts non-ASCII digits; vendors do not
        raise ValueError(f"not an ISO time: {text!r}")
    nanos = 0
    match = _FRACTION.match(text)
    if match:
        frac = match.group("frac")
        nanos = int(frac[:9].ljust(9, "0"))
        text = match.group("whole") + (match.group("zone") or "")
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    when = dt.datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    whole_us = (when - _EPOCH) // dt.timedelta(microseconds=1)
    return whole_us * 1000 + nanos


def epoch_ns(value: int | float | str | Decimal, unit: str = "s") -> int:
    """A number of ``unit`` (s, ms, us, ns) since the epoch -> ns, exactly for decimal strings."""
    try:
        scale = _UNITS[unit]
    except KeyError:
        raise ValueError(f"unknown time unit {unit!r}; one of {sorted(_UNITS)}") from None
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, int):
        return value * scale
    try:
        number = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise ValueError(f"not a number of {unit}: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"not a finite time: {value!r}")
    return int(number * scale)


def time_or_offset_ns(text: str, now_ns: int) -> int | None:
    """A time setting: empty -> ``None``; ``-<seconds>`` -> that long before ``now_ns``; else ISO."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("-"):
        return now_ns - epoch_ns(text[1:], "s")
    return iso_ns(text)


def ns_iso(ns: int, digits: int | None = 9, *, sep: str = "T", zone: str = "Z") -> str:
    """ns since the epoch -> ISO 8601 in UTC: ``2024-01-01T00:00:00.123456789Z`` by default.

    ``digits``: the sub-second digits kept, 0 to 9, truncated (a time is never shown later than
    it was); ``None``: all nine, or none on a whole second. ``sep`` goes between date and time
    (a space reads better in a table) and ``zone`` after it ("" for none). :func:`iso_ns` reads
    every form back (``digits`` 9 or ``None``: exactly)."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    whole = (_EPOCH + dt.timedelta(seconds=seconds)).strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if digits is None:
        digits = 9 if fraction else 0
    elif not 0 <= digits <= 9:
        raise ValueError(f"digits must be 0 to 9 (or None), not {digits}")
    if digits == 0:
        return f"{whole}{zone}"
    return f"{whole}.{fraction // 10 ** (9 - digits):0{digits}d}{zone}"
