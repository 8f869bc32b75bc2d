"""Django REST Framework cursor pagination, newest first.

The cursor is DRF's: base64 of a query string with ``p`` (position: the ordering field as
``str(datetime)``), ``r=1`` for a previous page and ``o`` (offset) only when several items share
the boundary position. ``next``/``previous`` carry the bare cursor, as the vendor's responses do.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar
from urllib.parse import parse_qs, urlencode

T = TypeVar("T")


class InvalidCursor(ValueError):
    pass


def _position(ts_us: int) -> str:
    return str(datetime.fromtimestamp(ts_us // 1_000_000, tz=UTC).replace(microsecond=ts_us % 1_000_000))


def _parse_position(text: str) -> int:
    dt = datetime.fromisoformat(text)
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def encode_cursor(position_us: int, reverse: bool = False, offset: int = 0) -> str:
    tokens: dict[str, object] = {}
    if offset:
        tokens["o"] = offset
    if reverse:
        tokens["r"] = 1
    tokens["p"] = _position(position_us)
    return base64.b64encode(urlencode(tokens).encode("ascii")).decode("ascii")


def decode_cursor(cursor: str) -> tuple[int, bool, int]:
    """-> (position µs, reverse, offset); InvalidCursor when it is not one of ours."""
    try:
        query = parse_qs(base64.b64decode(cursor.encode("ascii"), validate=True).decode("ascii"), strict_parsing=True)
        offset = int(query.get("o", ["0"])[0])
        reverse = bool(int(query.get("r", ["0"])[0]))
        position = _parse_position(query["p"][0])
    except (binascii.Error, UnicodeError, ValueError, KeyError) as exc:
        raise InvalidCursor(str(exc)) from exc
    if offset < 0:
        raise InvalidCursor("negative offset")
    return position, reverse, offset


def paginate(
    items: Sequence[T], key: Callable[[T], int], page_size: int, cursor: str | None
) -> tuple[list[T], str | None, str | None]:
    """``items`` newest first (key descending) -> (page, next cursor, previous cursor)."""
    if cursor is None:
        page, has_more = list(items[:page_size]), len(items) > page_size
        return page, _next(page, items, key, has_more), None
    position, reverse, offset = decode_cursor(cursor)
    if not reverse:
        # Items older than the boundary, plus those sharing it after the first `offset` of them.
        rest = [it for it in items if key(it) < position or (offset and key(it) == position)][offset:]
        page, has_more = rest[:page_size], len(rest) > page_size
        return page, _next(page, rest, key, has_more), _previous(page, key, have_newer=True)
    newer = [it for it in items if key(it) > position or (offset and key(it) == position)]
    newer = newer[: len(newer) - offset] if offset else newer
    page = newer[-page_size:]
    has_newer = len(newer) > page_size
    return page, _next(page, items, key, True) if page else None, _previous(page, key, has_newer)


def _boundary_offset(page: Sequence[T], key: Callable[[T], int], edge: int) -> int:
    """How many items at the page's edge share its position (DRF's ``o``)."""
    ref = key(page[edge])
    run = 0
    for it in page if edge == 0 else reversed(page):
        if key(it) != ref:
            break
        run += 1
    return run


def _next(page: Sequence[T], items: Sequence[T], key: Callable[[T], int], has_more: bool) -> str | None:
    if not page or not has_more:
        return None
    last = key(page[-1])
    # An offset is only needed when the following item shares the boundary position.
    idx = next((i for i, it in enumerate(items) if it is page[-1]), -1)
    shared = 0 < idx + 1 < len(items) and key(items[idx + 1]) == last
    return encode_cursor(last, offset=_boundary_offset(page, key, -1) if shared else 0)


def _previous(page: Sequence[T], key: Callable[[T], int], have_newer: bool) -> str | None:
    if not page or not have_newer:
        return None
    return encode_cursor(key(page[0]), reverse=True)
