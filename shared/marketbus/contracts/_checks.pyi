"""Types of the compiled contract checks (``_checks.c``; see ``invariants.install_checks``)."""

from collections.abc import Callable, Sequence
from typing import Any

KIND_INT: int
KIND_TEXT: int
KIND_CHARS: int
KIND_DECIMAL: int
KIND_LITERAL: int
KIND_PYTHON: int
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

# history batch envelopes (marketbus.history.batch_decode): (accepted flags, rows, message of each row
# (int32), index in its envelope (int32), per field (validity bitmap | None, *buffers))
def batch_columns(
    messages: Sequence[bytes], kind: bytes, id_chars: bytes, token_chars: bytes, fields: list[tuple[Any, ...]], /
) -> tuple[bytes, int, bytes, bytes, list[tuple[bytes | None, ...]]]: ...
