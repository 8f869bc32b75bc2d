"""Stream selectors from text, checked before they reach a server.

A selector names streams as ``kind.source.venue.symbol``; each part is an fnmatch pattern (``*``
any, ``BTC*``) and missing trailing parts mean ``*``. The subject form of the same streams
(``md.trade.digitex.>``, ``ref.instrument.finx.*.*``) is accepted too: the ``md.``/``ref.``
prefix is dropped and a final ``>`` stands for every remaining part.
"""

from __future__ import annotations

import fnmatch

from marketbus.contracts.jobs import StreamSelector
from marketbus.contracts.market import MARKET_TYPES
from marketbus.contracts.reference import REFERENCE_TYPES
from marketbus.contracts.status import FeedStatus

KINDS: tuple[str, ...] = tuple(str(t.__struct_config__.tag) for t in (*MARKET_TYPES, *REFERENCE_TYPES, FeedStatus))
"""Every kind stored in history: market and reference event types, and ``feed_status``."""

_NAMESPACES = ("md", "ref")


class SelectorError(ValueError):
    """A selector that cannot select anything; the message says what is wrong and how to write it."""


def parse_selector(text: str) -> StreamSelector:
    """``kind.source.venue.symbol`` (or its subject form) -> StreamSelector; raises SelectorError
    for more than four parts, a ``>`` that is not last, or a kind pattern matching no kind."""
    parts = text.strip().split(".") if text.strip() else []
    if len(parts) > 1 and parts[0] in _NAMESPACES:  # the subject form
        parts = parts[1:]
    if ">" in parts[:-1]:
        raise SelectorError(f"{text!r}: '>' may only be the last part")
    if parts and parts[-1] == ">":
        parts = parts[:-1] + ["*"] * (4 - len(parts) + 1)
    if len(parts) > 4:
        raise SelectorError(f"{text!r} has {len(parts)} parts; write kind.source.venue.symbol "
                            "or the subject form md.<kind>.<source>.<venue>.<symbol>")
    parts = [p or "*" for p in parts] + ["*"] * (4 - len(parts))
    selector = StreamSelector(kind=parts[0], source=parts[1], venue=parts[2], symbol=parts[3])
    check_kind(selector.kind)
    return selector


def check_kind(pattern: str) -> None:
    if not any(fnmatch.fnmatchcase(kind, pattern) for kind in KINDS):
        raise SelectorError(f"unknown kind {pattern!r}; kinds: {', '.join(KINDS)}")


def selector_text(selector: StreamSelector) -> str:
    return f"{selector.kind}.{selector.source}.{selector.venue}.{selector.symbol}"
