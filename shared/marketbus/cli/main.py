"""The ``marketbus`` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from .common import NatsUrlOption
from .output import EXIT_CODES_HELP, run
from .services import SANDBOX_MODULE

app = typer.Typer(help="marketbus: vendor market data on one NATS bus.", no_args_is_help=True, add_completion=False,
                  epilog=EXIT_CODES_HELP)
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
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line per event, with its subject"),
    count: int = typer.Option(0, "--count", "-n", help="stop after this many events (0 = forever)"),
    last: bool = typer.Option(False, "--last", help="start with the last stored message of each subject"),
    reconnect_s: float = typer.Option(30.0, "--reconnect", help="seconds to keep reconnecting after the server goes away"),
    nats_url: str = NatsUrlOption,
) -> None:
    """Decode and pretty-print the events on SUBJECT (reconnects when the server restarts)."""
    from .tail import run_tail

    run(run_tail(nats_url, subject, as_json, count or None, console, last=last, reconnect_s=reconnect_s), interrupt_ok=True)


@app.command()
def status(
    nats_url: str = NatsUrlOption,
    as_json: bool = typer.Option(False, "--json", help="one heartbeat per line as JSON, with its subject"),
) -> None:
    """Print the status table once (per feed: state, events/s, age of the last event)."""
    from .status import fetch_heartbeats, print_status

    print_status(run(fetch_heartbeats(nats_url)), as_json)


@app.command()
def sandbox(name: str = typer.Argument("all", help="finx | ticksupply | digitex | sitagri | all")) -> None:
    """Serve a vendor sandbox (or all four) on its documented port."""
    # the sandboxes are a service of their own: run by module name, never imported here
    os.execv(sys.executable, [sys.executable, "-m", SANDBOX_MODULE, name])


# Commands added by later services live in their own modules (history, export, order).
for _module, _name in (("history", "history"), ("export", "export"), ("order", "order"), ("replay", "replay")):
    try:
        _sub = importlib.import_module(f"marketbus.cli.{_module}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"marketbus.cli.{_module}":
            raise
        continue
    app.add_typer(_sub.app, name=_name)


if __name__ == "__main__":
    app()
