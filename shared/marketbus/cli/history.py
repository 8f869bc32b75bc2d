"""``marketbus history``: query the history writer over NATS (``history.query`` /
``history.coverage``): a rich table, or a CSV / Parquet file with ``--out``."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

import msgspec
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .common import NatsUrlOption, connect

app = typer.Typer(help="Query the stored history (history writer over NATS).", no_args_is_help=True)
console = Console()

SelectorArg = typer.Argument("*", help="kind.source.venue.symbol, fnmatch wildcards, missing parts = *; e.g. 'trade.finx.*.BTC*'")
StartOpt = typer.Option("0", "--start", help="ISO time (UTC if no zone), ns since the epoch, or -<N>[smhd] before now")
EndOpt = typer.Option("now", "--end", help="same forms as --start; 'now' by default")


def parse_time(text: str, now_ns: int | None = None) -> int:
    now_ns = now_ns if now_ns is not None else time.time_ns()
    text = text.strip()
    if text in ("now", ""):
        return now_ns + 1
    if text.lstrip("-").isdigit() and not text.startswith("-"):
        return int(text)
    if text.startswith("-") and text[-1] in "smhd" and text[1:-1].replace(".", "").isdigit():
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86_400}[text[-1]]
        return now_ns - int(float(text[1:-1]) * unit * 1_000_000_000)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"not a time: {text!r} (ISO, ns, or -<N>[smhd])") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def _iso(ns: int | None) -> str:
    if ns is None:
        return ""
    return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


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


async def run_query(url: str | None, selector: str, start_ns: int, end_ns: int, limit: int, out: Path | None,
                    as_json: bool, timeout: float) -> int:
    from services.history_writer.query import HistoryQueryError, make_query, query_pages

    nc = await connect(url)
    rows: list[dict[str, Any]] = []
    try:
        query = make_query(selector, start_ns, end_ns, limit=min(limit or 100_000, 100_000), chunk_rows=5_000)
        with Progress(TextColumn("[bold]history[/]"), BarColumn(), TextColumn("{task.completed} events"),
                      TimeElapsedColumn(), console=console, transient=True, disable=as_json) as progress:
            task = progress.add_task("query", total=limit or None)
            async for events, _ in query_pages(nc, query, total=limit or None, timeout=timeout):
                for raw in events:
                    if as_json:
                        console.print(bytes(raw).decode(), markup=False, highlight=False, soft_wrap=True)
                    else:
                        rows.append(msgspec.json.decode(bytes(raw)))
                progress.advance(task, len(events))
    except HistoryQueryError as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    finally:
        await nc.close()
    if as_json:
        return 0
    if out is not None:
        _write(out, rows)
        console.print(f"wrote {len(rows)} events to {out}")
        return 0
    table = Table(title=f"history {selector} ({len(rows)} events)")
    for col in ("time (UTC)", "kind", "source", "venue", "symbol", "fields"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(_iso(r.get("ts_event", r.get("ts"))), r.get("type", ""), r.get("source", ""), r.get("venue", ""),
                      r.get("symbol", ""), _summary(r))
    console.print(table)
    return 0


async def run_coverage(url: str | None, selector: str, start_ns: int, end_ns: int, as_json: bool, timeout: float) -> int:
    from marketbus.contracts import codec
    from services.history_writer.query import HistoryQueryError, request_coverage

    nc = await connect(url)
    try:
        reply = await request_coverage(nc, selector, start_ns, end_ns, timeout=timeout)
    except HistoryQueryError as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    finally:
        await nc.close()
    if as_json:
        console.print_json(codec.encode(reply).decode())
        return 0
    table = Table(title=f"coverage {selector}")
    for col in ("stream", "rows", "covered (UTC)", "gaps reported by the feed"):
        table.add_column(col, overflow="fold")
    for s in reply.streams:
        covered = "\n".join(f"{_iso(r.start_ns)} .. {_iso(r.end_ns)}" for r in s.covered)
        gaps = "\n".join(f"[red]{_iso(r.start_ns)} .. {_iso(r.end_ns)}[/]" for r in s.gaps) or "[green]none[/]"
        table.add_row(f"{s.kind}.{s.source}.{s.venue}.{s.symbol}", str(s.rows), covered, gaps)
    console.print(table)
    return 0


@app.command("query")
def query_cmd(
    selector: str = SelectorArg,
    start: str = StartOpt,
    end: str = EndOpt,
    limit: int = typer.Option(1000, "--limit", "-n", help="at most this many events (0 = all)"),
    out: Path | None = typer.Option(None, "--out", "-o", help="write a .csv or .parquet file instead of a table"),
    as_json: bool = typer.Option(False, "--json", help="print the events as JSON lines"),
    timeout: float = typer.Option(30.0, "--timeout", help="seconds to wait for each chunk"),
    nats_url: str = NatsUrlOption,
) -> None:
    """Events of the selected streams in [START, END), oldest first."""
    if out is not None and out.suffix not in (".csv", ".parquet"):
        raise typer.BadParameter("--out must end in .csv or .parquet")
    now = time.time_ns()
    code = asyncio.run(run_query(nats_url, selector, parse_time(start, now), parse_time(end, now), limit, out, as_json, timeout))
    raise typer.Exit(code)


@app.command("coverage")
def coverage_cmd(
    selector: str = SelectorArg,
    start: str = StartOpt,
    end: str = EndOpt,
    as_json: bool = typer.Option(False, "--json", help="print the CoverageReply as JSON"),
    timeout: float = typer.Option(30.0, "--timeout"),
    nats_url: str = NatsUrlOption,
) -> None:
    """Covered time ranges per stream and the gaps the feeds reported (completeness)."""
    now = time.time_ns()
    raise typer.Exit(asyncio.run(run_coverage(nats_url, selector, parse_time(start, now), parse_time(end, now), as_json, timeout)))
