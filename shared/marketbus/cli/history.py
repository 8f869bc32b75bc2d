"""``marketbus history``: query the history writer over NATS (``history.query`` /
``history.coverage``): a rich table, JSON lines with ``--json``, or a CSV / Parquet file with
``--out`` (the whole range unless ``--limit`` is given)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import msgspec
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from marketbus.clients import HistoryClient
from marketbus.clients.history import make_query
from marketbus.clients.selectors import parse_selector, selector_text
from marketbus.contracts import codec, subjects
from marketbus.vendor.timeparse import ns_iso

from .common import NatsUrlOption, connect
from .output import (
    EXIT_CODES_HELP,
    REFUSED,
    check_positive,
    fail,
    handled,
    json_line,
    plain,
    plain_builtins,
    print_table,
    progress_console,
    run,
)

app = typer.Typer(help="Query the stored history (history writer over NATS).", no_args_is_help=True,
                  epilog=EXIT_CODES_HELP)
console = Console()

TABLE_LIMIT = 1000  # rows a table shows when no --limit is given
SelectorArg = typer.Argument("*", help="kind.source.venue.symbol, fnmatch wildcards, missing parts = *; e.g. "
                                       "'trade.finx.*.BTC*' (the subject form 'md.trade.finx.>' works too)")
TIME_HELP = "ISO time (UTC if no zone), ns since the epoch, or a time before now: -30s, -5m, -1h, -2d"
StartOpt = typer.Option("0", "--start", help=TIME_HELP)
EndOpt = typer.Option("now", "--end", help="same forms as --start, or 'now'")


def parse_time(text: str, now_ns: int | None = None) -> int:
    """ISO time (UTC when naive), ns since the epoch, ``now``, or ``-<N>[smhd]`` before now;
    ValueError otherwise."""
    now_ns = now_ns if now_ns is not None else time.time_ns()
    text = text.strip()
    if text in ("now", ""):
        return now_ns + 1
    if text.isdigit():
        return int(text)
    if text.startswith("-") and text[-1:] in ("s", "m", "h", "d") and text[1:-1].replace(".", "", 1).isdigit():
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86_400}[text[-1]]
        return now_ns - int(float(text[1:-1]) * unit * 1_000_000_000)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (ISO 8601, ns since the epoch, 'now' or -<N>[smhd])") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def parse_range(start: str, end: str) -> tuple[int, int]:
    now = time.time_ns()
    start_ns, end_ns = parse_time(start, now), parse_time(end, now)
    if end_ns < start_ns:
        raise ValueError(f"--end ({end}) is before --start ({start})")
    return start_ns, end_ns


def _iso(ns: int | None) -> str:
    """A time in a table: UTC to the microsecond, no zone letter ("" for none)."""
    return "" if ns is None else ns_iso(ns, 6, sep=" ", zone="")


_SKIP = {"type", "id", "source", "venue", "symbol", "ts_event", "ts_recv", "replay"}


def _summary(row: dict[str, Any]) -> str:
    parts = []
    for k, v in row.items():
        if k in _SKIP or v is None or v == [] or v == {}:
            continue
        text = msgspec.json.encode(v).decode() if isinstance(v, (list, dict)) else str(v)
        parts.append(f"{k}={text[:40]}")
    return " ".join(parts)[:120]


def _flatten(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (msgspec.json.encode(v).decode() if isinstance(v, (list, dict)) else v) for k, v in row.items()}


def _write(out: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa

    table = pa.Table.from_pylist([_flatten(r) for r in rows])
    if out.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, out)
    else:
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, out)


def _subject_of(event: Any) -> str | None:
    try:
        return subjects.for_event(event)
    except Exception:
        return None


async def run_query(url: str | None, selector: str, start_ns: int, end_ns: int, limit: int | None, out: Path | None,
                    as_json: bool, timeout: float) -> int:
    """Print (or write) the events; ``limit`` None = the whole range."""
    make_query(selector, start_ns, end_ns)  # a bad selector or range fails before connecting
    nc = await connect(url)
    rows: list[dict[str, Any]] = []
    history = HistoryClient(nc, timeout=timeout)
    bar = progress_console()
    try:
        with Progress(
            TextColumn("[bold]history[/]"),
            BarColumn(),
            TextColumn("{task.completed} events"),
            TimeElapsedColumn(),
            console=bar,
            transient=True,
            disable=as_json or not bar.is_terminal,
        ) as progress:
            task = progress.add_task("query", total=limit)
            async for raw in history.raw_events(selector, start_ns, end_ns, limit=limit):
                event = codec.decode(raw)
                if as_json:
                    json_line(event, _subject_of(event))
                else:
                    rows.append(plain_builtins(event))
                progress.advance(task, 1)
    finally:
        await nc.close()
    if as_json:
        return 0
    if out is not None:
        try:
            _write(out, rows)
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror or exc}")
        console.print(f"wrote {len(rows)} events to {out}")
        return 0
    table = Table(title=f"history {selector} ({len(rows)} events)")
    for col in ("time (UTC)", "kind", "source", "venue", "symbol", "fields"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(_iso(r.get("ts_event", r.get("ts"))), r.get("type", ""), r.get("source", ""), r.get("venue", ""),
                      r.get("symbol", ""), _summary(r))
    print_table(table, console)
    if limit == TABLE_LIMIT and len(rows) == TABLE_LIMIT:
        console.print(f"[dim](the first {TABLE_LIMIT}; --limit N or --limit 0 for more, --out for a file)[/]")
    return 0


async def run_coverage(
    url: str | None, selector: str, start_ns: int, end_ns: int, as_json: bool, timeout: float
) -> int:
    parse_selector(selector)  # fails before connecting
    nc = await connect(url)
    try:
        reply = await HistoryClient(nc, timeout=timeout).coverage(selector, start_ns, end_ns)
    finally:
        await nc.close()
    if as_json:
        for s in reply.streams:
            json_line({"stream": f"{s.kind}.{s.source}.{s.venue}.{s.symbol}", **plain_builtins(s)})
        return 0
    table = Table(title=f"coverage {selector_text(parse_selector(selector))}")
    for col in ("stream", "rows", "covered (UTC)", "gaps reported by the feed"):
        table.add_column(col, overflow="fold")
    for s in reply.streams:
        covered = "\n".join(f"{_iso(r.start_ns)} .. {_iso(r.end_ns)}" for r in s.covered)
        gaps = "\n".join(f"[red]{_iso(r.start_ns)} .. {_iso(r.end_ns)}[/]" for r in s.gaps) or "[green]none[/]"
        table.add_row(f"{s.kind}.{s.source}.{s.venue}.{s.symbol}", str(s.rows), covered, gaps)
    print_table(table, console)
    return 0


@app.command("query")
def query_cmd(
    selector: str = SelectorArg,
    start: str = StartOpt,
    end: str = EndOpt,
    limit: int = typer.Option(None, "--limit", "-n", show_default=False,
                              help=f"at most this many events (0 = all); default: {TABLE_LIMIT} in a table, "
                                   "all with --out or --json"),
    out: Path | None = typer.Option(None, "--out", "-o", help="write a .csv or .parquet file instead of a table"),
    as_json: bool = typer.Option(False, "--json", help="one event per line as JSON, with its subject"),
    timeout: float = typer.Option(30.0, "--timeout", help="seconds to wait for each chunk"),
    nats_url: str = NatsUrlOption,
) -> None:
    """Events of the selected streams in [START, END), oldest first."""
    if out is not None and out.suffix not in (".csv", ".parquet"):
        fail(f"--out {out}: the file name must end in .csv or .parquet")
    if out is not None and not out.absolute().parent.is_dir():  # found before a long query, not after
        fail(f"--out {out}: no directory {out.absolute().parent}")
    if limit is not None and limit < 0:
        fail(f"--limit {limit}: give 0 (all) or a positive number")
    check_positive("--timeout", timeout)
    if limit is None:
        limit = TABLE_LIMIT if out is None and not as_json else 0
    with handled():
        start_ns, end_ns = parse_range(start, end)
    raise typer.Exit(run(run_query(nats_url, selector, start_ns, end_ns, limit or None, out, as_json, timeout)))


@app.command("coverage")
def coverage_cmd(
    selector: str = SelectorArg,
    start: str = StartOpt,
    end: str = EndOpt,
    as_json: bool = typer.Option(False, "--json", help="one stream per line as JSON"),
    timeout: float = typer.Option(30.0, "--timeout", help="seconds to wait for the answer"),
    nats_url: str = NatsUrlOption,
) -> None:
    """Covered time ranges per stream and the gaps the feeds reported (completeness)."""
    check_positive("--timeout", timeout)
    with handled():
        start_ns, end_ns = parse_range(start, end)
    raise typer.Exit(run(run_coverage(nats_url, selector, start_ns, end_ns, as_json, timeout)))



def _book_parts(text: str) -> tuple[str, str, str]:
    parts = text.removeprefix("md.book.").removeprefix("book.").split(".")
    if len(parts) != 3 or not all(parts) or any(c in p for p in parts for c in "*?[>"):
        raise ValueError(f"{text!r}: write the book as source.venue.symbol, e.g. digitex.DIGITEX.FS-BTCUSD")
    return parts[0], parts[1], parts[2]


async def run_book(url: str | None, book: str, at_ns: int, depth: int, lookback_ns: int, as_json: bool,
                   timeout: float) -> int:
    from marketbus.books import book_at

    source, venue, symbol = _book_parts(book)
    nc = await connect(url)
    try:
        builder = await book_at(
            HistoryClient(nc, timeout=timeout), source, venue, symbol, at_ns, lookback_ns=lookback_ns
        )
    finally:
        await nc.close()
    if not builder.synced:
        fail(f"no book of {source}.{venue}.{symbol} at {_iso(at_ns)}: no snapshot stored before that time"
             + (" (or a delta after it is missing)" if builder.gaps or builder.bad else ""), REFUSED)
    bids, asks = builder.bids()[:depth or None], builder.asks()[:depth or None]
    if as_json:
        json_line({"source": source, "venue": venue, "symbol": symbol, "at": at_ns, "ts_event": builder.ts_event,
                   "sequence": builder.sequence, "bids": plain_builtins(bids), "asks": plain_builtins(asks)})
        return 0
    table = Table(title=f"book {source}.{venue}.{symbol} at {_iso(at_ns)} (sequence {builder.sequence}, "
                        f"last change {_iso(builder.ts_event)})")
    for col in ("bid orders", "bid size", "bid", "ask", "ask size", "ask orders"):
        table.add_column(col, justify="right")
    for i in range(max(len(bids), len(asks))):
        b = bids[i] if i < len(bids) else None
        a = asks[i] if i < len(asks) else None
        table.add_row("" if b is None or b.orders is None else str(b.orders), "" if b is None else plain(b.size),
                      "" if b is None else plain(b.price), "" if a is None else plain(a.price),
                      "" if a is None else plain(a.size), "" if a is None or a.orders is None else str(a.orders))
    print_table(table, console)
    return 0


@app.command("book")
def book_cmd(
    book: str = typer.Argument(..., help="source.venue.symbol, e.g. digitex.DIGITEX.FS-BTCUSD"),
    at: str = typer.Option(
        "now", "--at", help=TIME_HELP
    ),
    depth: int = typer.Option(0, "--depth", help="levels a side to show (0 = all)"),
    lookback: float = typer.Option(
        600.0,
        "--lookback",
        help="seconds searched back for a snapshot first (doubled until one is found, up to 7 days)",
    ),
    as_json: bool = typer.Option(False, "--json", help="the book as one JSON line"),
    timeout: float = typer.Option(30.0, "--timeout", help="seconds to wait for each chunk"),
    nats_url: str = NatsUrlOption,
) -> None:
    """The order book at a point in time, rebuilt from the stored snapshots and deltas."""
    if depth < 0 or lookback <= 0:
        fail("--depth must be >= 0 and --lookback > 0")
    check_positive("--timeout", timeout)
    with handled():
        at_ns = parse_time(at)
        at_ns = at_ns - 1 if at.strip() in ("now", "") else at_ns
        _book_parts(book)
    raise typer.Exit(run(run_book(nats_url, book, at_ns, depth, int(lookback * 1e9), as_json, timeout)))
