"""Types of the compiled contract checks (``_checks.c``; see ``invariants.install_checks``)."""

from collections.abc import Callable, Sequence
from typing import Any

KIND_INT: int
KIND_TEXT: int
KIND_CHARS: int
KIND_DECIMAL: int
KIND_LITERAL: int
KIND_PYTHON: int
KIND_DECIMAL_TEXT: int
SIGN_POSITIVE: int
SIGN_NON_NEGATIVE: int
SIGN_SIGNED: int

class Plan:
    """A contract class's ``__post_init__``: its invariant checks, compiled."""

    explain: Callable[[Any], None]
    canonize: Callable[[Any], None] | None
    fallback: Callable[[Any], None]

    def __init__(self, cls: type, fields: list[tuple[Any, ...]], explain: Callable[[Any], None],
                 canonize: Callable[[Any], None] | None, fallback: Callable[[Any], None]) -> None: ...
    def __call__(self, obj: Any, /) -> None: ...

def configure_decimal(decimal: type, max_digits: int, max_adjusted: int, min_adjusted: int, /) -> bool: ...
def set_enabled(enabled: bool, /) -> bool: ...
def is_canonical(value: Any, /) -> bool: ...
def decimal_fits(value: Any, sign: int, /) -> bool: ...
def decimal_of_text(text: str, /) -> Any: ...
def configure_canonical(zero: Any, normalize: Callable[[Any], Any], integral: Callable[[Any], Any], /) -> None: ...
def canonical_decimal(value: Any, /) -> Any: ...
def event_id_hex(head: bytes, tail: str, /) -> str: ...

# the TickSupply block (services/ingest_ticksupply/normalize.py reads them with getattr: a stale build lacks them)
def csv_trade_rows(body: bytes, new_row: Callable[[], Any], buy: str, sell: str, max_label: int,
                   /) -> list[Any] | None: ...
def trades_of_rows(rows: list[Any], row_type: type, head: bytes, new_trade: Callable[[], Any],
                   check: Callable[[Any], None], sides: dict[str, str], unknown: str, /) -> list[Any] | None: ...

# the decimal-text block (MarketPrice's decimals carried as canonical text)
def configure_decimal_text(fallback: Callable[[Any], str | None], max_digits: int, max_adjusted: int,
                           min_adjusted: int, /) -> None: ...
def decimal_text_of_json(raw: Any, /) -> str | None: ...
def decimal_text_fits(value: Any, sign: int, /) -> bool: ...
def read_plain_decimal(text: str, reader: str, sign: int, /) -> Any: ...  # for the tests
def seconds_ns(raw: Any, /) -> int | None: ...

# history batch envelopes (marketbus.history.batch_decode): (accepted flags, rows, message of each row
# (int32), index in its envelope (int32), per field (validity bitmap | None, *buffers))
def batch_columns(
    messages: Sequence[bytes], kind: bytes, id_chars: bytes, token_chars: bytes, fields: list[tuple[Any, ...]], /
) -> tuple[bytes, int, bytes, bytes, list[tuple[bytes | None, ...]]]: ...

# the Sitagri marketPrice block (services/ingest_sitagri/normalize.py, live_push): (quote, False, MarketPrice) of a live
# tick's usual shape, or None (the Python path reads it); quotes: quote -> (template.__copy__, id head, quote)
def market_price_push(raw: Any, ts_recv: int, quotes: dict[str, tuple[Callable[[], Any], bytes, str]],
                      check: Callable[[Any], None], qualities: tuple[str, str, str],
                      /) -> tuple[str, bool, Any] | None: ...
# history duplicate event ids (marketbus.history.writer._first_per_id): None when all distinct, else one byte per
# row (1: the first row of its id); chunks: (offsets buffer (int32), data buffer, offset, length) per chunk
def first_ids(chunks: Sequence[tuple[Any, Any, int, int]], /) -> bytes | None: ...
