"""``marketbus feed ...``: which instruments each ingestor collects, changed at runtime
(through ``marketbus.clients.FeedClient``; see ``marketbus.contracts.feeds``).

    marketbus feed list [VENDOR] [--all] [--json]
    marketbus feed add digitex FS:ETHUSD        # validated against the vendor's catalog
    marketbus feed pause|resume|remove digitex FS:ETHUSD

A refusal (an instrument the catalog does not list, no such feed) is one line on stderr and exit
code 1; no ingestor of that vendor running (nobody to validate) is exit code 2.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from marketbus.clients import FeedClient
from marketbus.contracts.feeds import VENDORS, Feed, FeedReply, check_vendor
from marketbus.vendor.timeparse import ns_iso

from .common import NatsUrlOption, connect
from .output import EXIT_CODES_HELP, handled, json_line, print_table, run

app = typer.Typer(help="Feed control: the instruments each ingestor collects, changed at runtime.",
                  no_args_is_help=True, epilog=EXIT_CODES_HELP)
console = Console()
JsonOpt = typer.Option(False, "--json", help="print the result as one JSON object per line")
VendorArg = typer.Argument(..., help=f"the vendor: {', '.join(VENDORS)}")
InstrumentArg = typer.Argument(..., help="the vendor's identifier: a Digitex market (FS:BTCUSD), a TickSupply "
                               "datastream id (101), a Sitagri quote (/market/sources/...), a FinX pair (BTC:USD)")
TimeoutOpt = typer.Option(10.0, "--timeout", help="seconds to wait for the vendor's ingestor")


def _ts(ns: int | None) -> str:
    if ns is None:
        return "now"
    return ns_iso(ns, 0)


def _periods(feed: Feed) -> str:
    shown = [f"{_ts(p.start_ns)}..{_ts(p.end_ns)}" for p in feed.periods[-2:]]
    more = f"(+{len(feed.periods) - 2}) " if len(feed.periods) > 2 else ""
    return more + ", ".join(shown)


async def _with_client(url: str | None, timeout: float, call: Any) -> Any:
    nc = await connect(url)
    try:
        return await call(FeedClient(nc, timeout=timeout, by="cli"))
    finally:
        await nc.drain()


@app.command("list")
def list_feeds(
    vendor: str = typer.Argument(None, help=f"only this vendor ({', '.join(VENDORS)})"),
    show_all: bool = typer.Option(False, "--all", help="removed feeds too"),
    as_json: bool = JsonOpt,
    nats_url: str = NatsUrlOption,
) -> None:
    """The feeds (from the bus-wide configuration, KV bucket feeds) with their collection periods."""
    if vendor:
        with handled():  # a mistake is one line, before any connection is made
            check_vendor(vendor)
    feeds: list[Feed] = run(_with_client(nats_url, 10.0, lambda c: c.list(vendor or None, include_removed=show_all)))
    if as_json:
        for feed in feeds:
            json_line(feed)
        return
    table = Table("vendor", "instrument", "state", "venue", "symbol", "periods (UTC)", "by")
    colour = {"active": "green", "paused": "yellow", "removed": "dim"}
    for f in feeds:
        table.add_row(f.vendor, f.instrument, f"[{colour[f.state]}]{f.state}[/]", f.venue, f.symbol, _periods(f),
                      f.updated_by)
    print_table(table, console)


def _change(op: str, vendor: str, instrument: str, as_json: bool, nats_url: str | None, timeout: float) -> None:
    with handled():  # a mistake is one line, before any connection is made
        check_vendor(vendor)
    reply: FeedReply = run(_with_client(nats_url, timeout, lambda c: c.command(op, vendor, instrument)))
    if as_json:
        json_line(reply)
        return
    f = reply.feed
    what = f"{f.vendor} {f.instrument} ({f.venue}/{f.symbol})"
    console.print(f"{what}: {f.state}" + ("" if reply.changed else " [dim](unchanged)[/]"))


@app.command()
def add(vendor: str = VendorArg, instrument: str = InstrumentArg, as_json: bool = JsonOpt,
        timeout: float = TimeoutOpt, nats_url: str = NatsUrlOption) -> None:
    """Start collecting an instrument (the vendor's ingestor checks its catalog; applied within seconds)."""
    _change("add", vendor, instrument, as_json, nats_url, timeout)


@app.command()
def remove(vendor: str = VendorArg, instrument: str = InstrumentArg, as_json: bool = JsonOpt,
           timeout: float = TimeoutOpt, nats_url: str = NatsUrlOption) -> None:
    """Stop collecting it (the record and its periods stay: `feed list --all`)."""
    _change("remove", vendor, instrument, as_json, nats_url, timeout)


@app.command()
def pause(vendor: str = VendorArg, instrument: str = InstrumentArg, as_json: bool = JsonOpt,
          timeout: float = TimeoutOpt, nats_url: str = NatsUrlOption) -> None:
    """Stop collecting it for now (closes its current period)."""
    _change("pause", vendor, instrument, as_json, nats_url, timeout)


@app.command()
def resume(vendor: str = VendorArg, instrument: str = InstrumentArg, as_json: bool = JsonOpt,
           timeout: float = TimeoutOpt, nats_url: str = NatsUrlOption) -> None:
    """Collect a paused feed again (opens a new period)."""
    _change("resume", vendor, instrument, as_json, nats_url, timeout)
