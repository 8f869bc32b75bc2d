"""``marketbus order ...``: place / cancel / list / watch orders and halt / resume the router."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from .common import NatsUrlOption, connect

app = typer.Typer(help="Digitex orders through the order router.", no_args_is_help=True)
console = Console()


def _print_ack(ack: Any) -> None:
    if ack is None:
        console.print("[yellow]sent (no acknowledgement requested)[/]")
        return
    colour = "green" if ack.accepted else "red"
    word = "accepted" if ack.accepted else "refused"
    detail = f": {ack.reason}" if ack.reason else ""
    ids = f" [dim]{', '.join(ack.client_ids)}[/]" if ack.client_ids else ""
    console.print(f"[{colour}]{word}[/]{detail}{ids}")
    if not ack.accepted:
        raise typer.Exit(1)


async def _command(url: str | None, cmd: Any, wait: bool, timeout: float) -> Any:
    from services.order_router.requests import send_command

    nc = await connect(url)
    try:
        return await send_command(nc, cmd, wait=wait, timeout=timeout)
    finally:
        await nc.drain()


@app.command()
def place(
    market: str = typer.Argument(..., help="normalized market symbol, e.g. FS-BTCUSD"),
    side: str = typer.Argument(..., help="buy | sell"),
    quantity: str = typer.Argument(...),
    price: str = typer.Option(None, "--price", "-p", help="limit price (omit for a market order)"),
    order_type: str = typer.Option(None, "--type", help="limit | market (default: limit with --price)"),
    duration: str = typer.Option(None, "--duration", help="GTC GFD GTF IOC FOK (default GTC, IOC for market)"),
    leverage: int = typer.Option(1, "--leverage"),
    reduce_only: bool = typer.Option(False, "--reduce-only"),
    client_id: str = typer.Option(None, "--client-id", help="uuid (generated when omitted)"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait for the router's acknowledgement"),
    timeout: float = typer.Option(10.0, "--timeout"),
    nats_url: str = NatsUrlOption,
) -> None:
    """Place an order."""
    from services.order_router import requests as rq

    kind = order_type or ("limit" if price is not None else "market")
    cmd = rq.place(market, side.lower(), Decimal(quantity), Decimal(price) if price is not None else None,
                   order_type=kind, duration=duration or ("GTC" if kind == "limit" else "IOC"), leverage=leverage,
                   reduce_only=reduce_only, client_id=client_id)
    console.print(f"client_id [bold]{cmd.client_id}[/]")
    _print_ack(asyncio.run(_command(nats_url, cmd, wait, timeout)))


@app.command()
def cancel(
    market: str = typer.Option(None, "--market", "-m", help="cancel in this market (all of it without --client-id)"),
    client_ids: list[str] = typer.Option(None, "--client-id", "-c", help="client ids to cancel (needs --market)"),
    all_orders: bool = typer.Option(False, "--all", help="every open order of the account"),
    timeout: float = typer.Option(10.0, "--timeout"),
    nats_url: str = NatsUrlOption,
) -> None:
    """Cancel orders: by client ids, by market, or all."""
    from services.order_router import requests as rq

    if not market and not all_orders:
        raise typer.BadParameter("give --market (optionally with --client-id) or --all")
    cmd = rq.cancel(None if all_orders else market, client_ids or [])
    _print_ack(asyncio.run(_command(nats_url, cmd, True, timeout)))


async def _records(url: str | None) -> list[Any]:
    from marketbus.contracts import streams
    from services.order_router.state import StateStore

    nc = await connect(url)
    try:
        kv = await nc.jetstream().key_value(streams.ORDER_STATE.name)
        return await StateStore(kv, "cli").all()
    finally:
        await nc.drain()


@app.command("list")
def list_orders(
    show_all: bool = typer.Option(False, "--all", "-a", help="include filled, cancelled and rejected orders"),
    market: str = typer.Option(None, "--market", "-m"),
    nats_url: str = NatsUrlOption,
) -> None:
    """The router's orders (from its state store)."""
    records = [r for r in asyncio.run(_records(nats_url)) if (show_all or not r.terminal)
               and (market is None or r.market == market)]
    table = Table("market", "client_id", "side", "type", "qty", "price", "filled", "state", "seq", "reason")
    for r in sorted(records, key=lambda r: r.created_ns):
        table.add_row(r.market, r.client_id, r.side, r.order_type, str(r.quantity),
                      str(r.price) if r.price is not None else "-", str(r.filled_quantity), r.state, str(r.seq),
                      (r.reason or "")[:50])
    console.print(table)


async def _watch(url: str | None, market: str, count: int | None) -> None:
    from marketbus.contracts import codec, subjects

    from .tail import summarize

    nc = await connect(url)
    seen = 0
    done = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        nonlocal seen
        event = codec.decode(msg.data)
        tag = type(event).__struct_config__.tag
        console.print(f"[dim]{msg.subject}[/] [bold]{tag}[/] {summarize(event)}")
        seen += 1
        if count and seen >= count:
            done.set()

    for subject in (subjects.order_events_filter(market), subjects.order_fill(market),
                    subjects.order_position(market), subjects.order_balance("*")):
        await nc.subscribe(subject, cb=on_msg)
    try:
        await done.wait()
    finally:
        await nc.drain()


@app.command()
def watch(
    market: str = typer.Option("*", "--market", "-m"),
    count: int = typer.Option(0, "--count", "-n", help="stop after this many events (0 = forever)"),
    nats_url: str = NatsUrlOption,
) -> None:
    """Print order events, fills, positions and balances as they happen."""
    try:
        asyncio.run(_watch(nats_url, market, count or None))
    except KeyboardInterrupt:
        pass


async def _control(url: str | None, action: str, cancel_open: bool, reason: str | None) -> Any:
    from services.order_router.requests import send_control

    nc = await connect(url)
    try:
        return await send_control(nc, action, cancel_open_orders=cancel_open, reason=reason)
    finally:
        await nc.drain()


@app.command()
def halt(
    cancel_open: bool = typer.Option(False, "--cancel-open", help="also cancel every open order"),
    reason: str = typer.Option(None, "--reason"),
    nats_url: str = NatsUrlOption,
) -> None:
    """Kill switch: refuse new orders (and optionally cancel every open one)."""
    _print_ack(asyncio.run(_control(nats_url, "halt", cancel_open, reason)))


@app.command()
def resume(nats_url: str = NatsUrlOption) -> None:
    """Accept orders again after a halt."""
    _print_ack(asyncio.run(_control(nats_url, "resume", False, None)))


@app.command("status")
def router_status(nats_url: str = NatsUrlOption) -> None:
    """Is the router halted or running?"""
    _print_ack(asyncio.run(_control(nats_url, "status", False, None)))
