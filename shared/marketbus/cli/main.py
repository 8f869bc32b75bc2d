"""The ``marketbus`` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import importlib
import os
from pathlib import Path

import typer
from rich.console import Console

from .common import NatsUrlOption

app = typer.Typer(help="marketbus: vendor market data on one NATS bus.", no_args_is_help=True, add_completion=False)
console = Console()


@app.command()
def up(
    data_dir: Path = typer.Option(
        Path(os.environ.get("MARKETBUS_DATA_DIR", ".marketbus")), "--data-dir", help="NATS data, the local store, logs",
    ),
    sandboxes: bool = typer.Option(True, "--sandboxes/--no-sandboxes", help="start the four vendor sandboxes"),
    duration: float = typer.Option(0, "--duration", help="stop after this many seconds (0 = until Ctrl-C)"),
) -> None:
    """Run the whole system in this terminal: NATS, the sandboxes and every service."""
    from .up import run_up

    raise typer.Exit(asyncio.run(run_up(data_dir, sandboxes, duration or None, console)))


@app.command()
def tail(
    subject: str = typer.Argument("md.>", help="subject or wildcard, e.g. 'md.trade.finx.>'"),
    as_json: bool = typer.Option(False, "--json", help="print the raw JSON messages"),
    count: int = typer.Option(0, "--count", "-n", help="stop after this many events (0 = forever)"),
    last: bool = typer.Option(False, "--last", help="start with the last stored message of each subject"),
    nats_url: str = NatsUrlOption,
) -> None:
    """Decode and pretty-print the events on SUBJECT."""
    from .tail import run_tail

    try:
        asyncio.run(run_tail(nats_url, subject, as_json, count or None, console, last=last))
    except KeyboardInterrupt:
        pass


@app.command()
def status(
    nats_url: str = NatsUrlOption,
    as_json: bool = typer.Option(False, "--json", help="print the heartbeats as JSON"),
) -> None:
    """Print the status table once (per feed: state, events/s, age of the last event)."""
    from .status import fetch_heartbeats
    from .statusview import render

    heartbeats = asyncio.run(fetch_heartbeats(nats_url))
    if as_json:
        from marketbus.contracts import codec

        console.print_json("[" + ",".join(codec.encode(hb).decode() for hb in heartbeats.values()) + "]")
    else:
        console.print(render(heartbeats))


@app.command()
def sandbox(name: str = typer.Argument("all", help="finx | ticksupply | digitex | sitagri | all")) -> None:
    """Serve a vendor sandbox (or all four) on its documented port."""
    from services.sandbox.__main__ import main as sandbox_main

    sandbox_main([name])


# Commands added by later services live in their own modules (history, export, order).
for _module, _name in (("history", "history"), ("export", "export"), ("order", "order")):
    try:
        _sub = importlib.import_module(f"marketbus.cli.{_module}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"marketbus.cli.{_module}":
            raise
        continue
    app.add_typer(_sub.app, name=_name)
importlib.import_module("marketbus.cli.history_admin")  # history compact / migrate (the history tables)


if __name__ == "__main__":
    app()
