"""What the data commands print and how they end: JSON lines, plain decimals, one-line errors
and the exit codes.

Exit codes of every ``marketbus`` command:

- 0: done;
- 1: refused or failed: the server said no (an order refused, an export job failed or not found,
  a history query the writer rejected);
- 2: usage or connection: a bad argument (subject, selector, number, time), or no server to
  talk to (NATS unreachable, no history writer / router / orchestrator answering).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Coroutine, Iterator, Sequence
from decimal import Decimal
from typing import Any, NoReturn, TypeVar

import msgspec
import typer
from rich.console import Console
from typer.core import TyperGroup

from marketbus.clients import RequestError
from marketbus.contracts import errors as codes
from marketbus.contracts import invariants

OK, REFUSED, USAGE = 0, 1, 2
EXIT_CODES_HELP = "Exit codes: 0 ok, 1 refused or failed (by the server), 2 usage or connection error."

# the server's own answers; the others mean nobody answered (a connection problem)
_REFUSALS = (codes.BAD_REQUEST, codes.NOT_FOUND, codes.FORBIDDEN, codes.CONFLICT, codes.OVERLOADED, codes.INTERNAL)

T = TypeVar("T")


def plain(value: Decimal) -> str:
    """A decimal as people write it: ``0`` not ``0E-18``, ``41060`` not ``41060.000000000000000000``."""
    if not value.is_finite():
        return str(value)
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def plain_builtins(obj: Any) -> Any:
    """``obj`` (a contract struct, or built-ins holding Decimals) as JSON-ready built-ins, every
    Decimal as a plain decimal string (a decimal carried as text, ``MarketPrice.last``, too)."""
    body = _plain(msgspec.to_builtins(obj, builtin_types=(Decimal,)))
    if isinstance(obj, msgspec.Struct) and isinstance(body, dict):
        for name in decimal_texts(type(obj)):
            if body.get(name) is not None:
                body[name] = plain(Decimal(body[name]))
    return body


_DECIMAL_TEXTS: dict[type, frozenset[str]] = {}


def decimal_texts(cls: type) -> frozenset[str]:
    """The fields of a contract class that carry a decimal as its text (shown plain, as Decimals are)."""
    found = _DECIMAL_TEXTS.get(cls)
    if found is None:
        found = _DECIMAL_TEXTS[cls] = frozenset(invariants.decimal_text_fields(cls))
    return found


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return plain(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def json_line(obj: Any, subject: str | None = None) -> None:
    """Print one JSON object on one line (stdout, unstyled); ``subject`` first when given."""
    body = plain_builtins(obj)
    if subject is not None and isinstance(body, dict):
        body = {"subject": subject, **body}
    sys.stdout.write(msgspec.json.encode(body).decode() + "\n")
    sys.stdout.flush()


def progress_console() -> Console:
    """Where progress bars go: stderr, so that stdout stays data. Check ``.is_terminal`` before
    drawing one (a bar on a pipe is noise)."""
    return Console(stderr=True)


def print_table(table: Any, console: Console) -> None:
    """A table on a terminal fits its width; piped or redirected, nothing is cut (a script reads
    every column: ids, subjects, streams)."""
    out = console if sys.stdout.isatty() else Console(width=10_000, no_color=True, highlight=False)
    out.print(table)


def fail(message: str, code: int = USAGE) -> NoReturn:
    """One line on stderr, then exit with ``code``."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def check_positive(option: str, value: float | None) -> None:
    """A count, limit or timeout that must be > 0 when given: one line and exit 2 otherwise."""
    if value is not None and value <= 0:
        fail(f"{option} {value:g}: give a number > 0")


def check_not_negative(option: str, value: float | None, zero_means: str) -> None:
    """A number where 0 has a meaning (``zero_means``, e.g. 'forever'): one line and exit 2 when < 0."""
    if value is not None and value < 0:
        fail(f"{option} {value:g}: give 0 ({zero_means}) or a positive number")


class OneLineErrors(TyperGroup):
    """The top-level command group: a usage mistake Click detects itself (an unknown command or
    option, a missing argument, ``--limit abc``) is one line on stderr, ``error: <what>; see
    `<command> --help```, with exit code 2, like the mistakes the commands check (:func:`fail`).
    Running a group without a command still prints its help."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        extra["windows_expand_args"] = windows_expand_args
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # Click's exceptions (Typer vendors Click) derive from it
            if type(exc).__name__ == "NoArgsIsHelpError":  # Typer's own help screen, as before
                return super().main(argv, prog_name, complete_var, standalone_mode=True, **extra)
            ctx = getattr(exc, "ctx", None)
            where = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
            message = " ".join(exc.format_message().split()).rstrip(".")
            sys.stderr.write(f"error: {message}{where}\n")
            sys.stderr.flush()
            sys.exit(getattr(exc, "exit_code", USAGE))
        except typer.Abort:
            sys.stderr.write("error: aborted\n")
            sys.exit(1)
        # what standalone mode does: typer.Exit(code) comes back as its code, a finished command as None
        sys.exit(code if isinstance(code, int) else 0)


def exit_code_for(error: RequestError) -> int:
    return REFUSED if error.code in _REFUSALS else USAGE


def quiet_nats_logs() -> None:
    """nats-py logs a traceback for a dropped connection; the commands say it in one line."""
    logging.getLogger("nats").setLevel(logging.CRITICAL)


@contextlib.contextmanager
def logger_level(name: str, level: int) -> Iterator[None]:
    """``name``'s logger at ``level`` for the block, then back to what it was: a command run
    in-process (a test, an embedding program) must not leave its choice to later code."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def handled(*, interrupt_ok: bool = False) -> Iterator[None]:
    """The errors a user can cause turned into one line and an exit code: RequestError (1 refused,
    2 no server), a bad value (2), an unreachable or lost NATS (2), Ctrl-C (130, or 0 with
    ``interrupt_ok``: how a user ends ``tail`` or ``order watch``)."""
    try:
        yield
    except RequestError as exc:
        fail(exc.message, exit_code_for(exc))
    except typer.BadParameter as exc:  # raised by the connection helper: NATS unreachable
        fail(exc.message, USAGE)
    except ConnectionError as exc:  # a long-running command lost its server for good
        fail(str(exc), USAGE)
    except ValueError as exc:  # bad arguments caught by the clients (selector, number, range, time)
        fail(str(exc), USAGE)
    except KeyboardInterrupt:
        raise typer.Exit(OK if interrupt_ok else 130) from None


def run(coro: Coroutine[Any, Any, T], *, interrupt_ok: bool = False) -> T:
    """``asyncio.run(coro)`` inside :func:`handled`."""
    quiet_nats_logs()
    with handled(interrupt_ok=interrupt_ok):
        return asyncio.run(coro)
    raise AssertionError("unreachable")  # handled() re-raises as typer.Exit
