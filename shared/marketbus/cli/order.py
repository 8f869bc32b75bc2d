"""``marketbus order ...``: place / cancel / list / watch orders and halt / resume the router
(through ``marketbus.clients.OrderClient``)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from marketbus.clients import OrderClient
from marketbus.clients import orders as builders
from marketbus.contracts.orders import CommandAck

from .common import NatsUrlOption, connect
from .output import (
    EXIT_CODES_HELP,
    REFUSED,
    check_not_negative,
    check_positive,
    fail,
    handled,
    json_line,
    plain,
    print_table,
    run,
)
from .tail import reconnect, summarize, until_done_or_closed

app = typer.Typer(help="Digitex orders through the order router.", no_args_is_help=True, epilog=EXIT_CODES_HELP)
console = Console()
JsonOpt = typer.Option(False, "--json", help="print the result as one JSON object per line")


def _print_ack(ack: CommandAck | None, as_json: bool) -> None:
    if ack is None:
        if as_json:
            json_line({"sent": True})
        else:
            console.print("[yellow]sent (no acknowledgement requested)[/]")
        return
    if as_json:
        json_line(ack)
    else:
        colour = "green" if ack.accepted else "red"
        word = "accepted" if ack.accepted else "refused"
        detail = f": {ack.reason}" if ack.reason else ""
        ids = f" [dim]{', '.join(ack.client_ids)}[/]" if ack.client_ids else ""
        console.print(f"[{colour}]{word}[/]{detail}{ids}")
    if not ack.accepted:
        raise typer.Exit(REFUSED)


async def _send(url: str | None, cmd: Any, wait: bool, timeout: float) -> CommandAck | None:
    nc = await connect(url)
    try:
        return await OrderClient(nc, timeout=timeout).send(cmd, wait=wait)
    finally:
        await nc.drain()


@app.command()
def place(
    market: str = typer.Argument(..., help="normalized market symbol, e.g. FS-BTCUSD"),
    side: str = typer.Argument(..., help="buy | sell"),
    quantity: str = typer.Argument(..., help="a decimal number, e.g. 1 or 0.5"),
    price: str = typer.Option(None, "--price", "-p", help="limit price (omit for a market order)"),
    order_type: str = typer.Option(None, "--type", help="limit | market (default: limit with --price, market without)"),
    duration: str = typer.Option(None, "--duration", help="GTC GFD GTF IOC FOK (default GTC, IOC for market)"),
    leverage: int = typer.Option(1, "--leverage", help="leverage multiple (>= 1)"),
    reduce_only: bool = typer.Option(False, "--reduce-only", help="only reduce an open position, never open one"),
    client_id: str = typer.Option(None, "--client-id", help="a UUID (a new one when omitted)"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait for the router's acknowledgement"),
    timeout: float = typer.Option(10.0, "--timeout", help="seconds to wait for the acknowledgement"),
    as_json: bool = JsonOpt,
    nats_url: str = NatsUrlOption,
) -> None:
    """Place an order (exit 1 when the router refuses it)."""
    if client_id is not None:
        try:
            uuid.UUID(client_id)
        except ValueError:
            fail(f"--client-id {client_id!r}: not a UUID (e.g. {uuid.uuid4()}); omit it for a new one")
    check_positive("--timeout", timeout)
    check_positive("--leverage", leverage)
    kind = order_type or ("limit" if price is not None else "market")
    with handled():
        cmd = builders.place(market, side.lower(), quantity, price, order_type=kind,
                             duration=duration or ("GTC" if kind == "limit" else "IOC"), leverage=leverage,
                             reduce_only=reduce_only, client_id=client_id)
    if not as_json:
        console.print(f"client_id [bold]{cmd.client_id}[/]")
    _print_ack(run(_send(nats_url, cmd, wait, timeout)), as_json)


@app.command()
def cancel(
    market: str = typer.Option(None, "--market", "-m", help="cancel in this market (all of it without --client-id)"),
    client_ids: list[str] = typer.Option(
        None, "--client-id", "-c", help="a client id to cancel (repeat for several; needs --market)"
    ),
    all_orders: bool = typer.Option(False, "--all", help="every open order of the account"),
    timeout: float = typer.Option(10.0, "--timeout", help="seconds to wait for the acknowledgement"),
    as_json: bool = JsonOpt,
    nats_url: str = NatsUrlOption,
) -> None:
    """Cancel orders: by client ids, by market, or all."""
    check_positive("--timeout", timeout)
    if not market and not all_orders:
        fail("give --market (optionally with --client-id) or --all")
    cmd = builders.cancel(None if all_orders else market, client_ids or [])
    _print_ack(run(_send(nats_url, cmd, True, timeout)), as_json)


async def _records(url: str | None, market: str | None, show_all: bool) -> list[builders.OrderRecord]:
    nc = await connect(url)
    try:
        return await OrderClient(nc).records(market=market, include_terminal=show_all)
    finally:
        await nc.drain()


@app.command("list")
def list_orders(
    show_all: bool = typer.Option(False, "--all", "-a", help="include filled, cancelled and rejected orders"),
    market: str = typer.Option(None, "--market", "-m", help="only this market, e.g. FS-BTCUSD"),
    as_json: bool = JsonOpt,
    nats_url: str = NatsUrlOption,
) -> None:
    """The router's orders (from its state store)."""
    records = run(_records(nats_url, market, show_all))
    if as_json:
        for r in records:
            json_line(r)
        return
    table = Table("market", "client_id", "side", "type", "qty", "price", "filled", "state", "seq", "reason")
    for r in records:
        table.add_row(r.market, r.client_id, r.side, r.order_type, plain(r.quantity),
                      plain(r.price) if r.price is not None else "-", plain(r.filled_quantity), r.state, str(r.seq),
                      (r.reason or "")[:50])
    print_table(table, console)


async def _watch(url: str | None, market: str, count: int | None, as_json: bool, reconnect_s: float) -> None:
    if count is not None and count < 0:
        raise ValueError(f"--count {count}: give 0 (forever) or a positive number")
    seen = 0
    done = asyncio.Event()
    nc = await connect(url)

    async def pump(client: OrderClient) -> None:
        nonlocal seen
        async for subject, event in client.watch(market):
            if as_json:
                json_line(event, subject)
            else:
                tag = type(event).__struct_config__.tag
                console.print(f"[dim]{subject}[/] [bold]{tag}[/] {summarize(event)}", highlight=False, soft_wrap=True)
            seen += 1
            if count and seen >= count:
                done.set()
                return

    try:
        while True:
            task = asyncio.create_task(pump(OrderClient(nc)))
            # the count reached, or a failure to report (not our own cancel after a lost connection)
            task.add_done_callback(lambda t: None if t.cancelled() else done.set())
            try:
                if await until_done_or_closed(nc, done):
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                    return
            finally:
                task.cancel()
            nc = await reconnect(url, reconnect_s)
    finally:
        if not nc.is_closed:
            await nc.drain()


@app.command()
def watch(
    market: str = typer.Option("*", "--market", "-m", help="only this market, e.g. FS-BTCUSD ('*' = all)"),
    count: int = typer.Option(0, "--count", "-n", help="stop after this many events (0 = forever)"),
    reconnect_s: float = typer.Option(
        30.0, "--reconnect", help="seconds to keep reconnecting after the server goes away"
    ),
    as_json: bool = typer.Option(False, "--json", help="one event per line as JSON, with its subject"),
    nats_url: str = NatsUrlOption,
) -> None:
    """Print order events, fills, positions and balances as they happen (reconnects when the
    server restarts)."""
    check_not_negative("--count", count, "forever")
    check_not_negative("--reconnect", reconnect_s, "do not reconnect")
    run(_watch(nats_url, market, count or None, as_json, reconnect_s), interrupt_ok=True)


async def _control(url: str | None, action: str, cancel_open: bool, reason: str | None) -> CommandAck:
    nc = await connect(url)
    try:
        return await OrderClient(nc).control(action, cancel_open_orders=cancel_open, reason=reason)
    finally:
        await nc.drain()


@app.command()
def halt(
    cancel_open: bool = typer.Option(False, "--cancel-open", help="also cancel every open order"),
    reason: str = typer.Option(None, "--reason", help="why (sent with the halt command)"),
    as_json: bool = JsonOpt,
    nats_url: str = NatsUrlOption,
) -> None:
    """Kill switch: refuse new orders (and optionally cancel every open one)."""
    _print_ack(run(_control(nats_url, "halt", cancel_open, reason)), as_json)


@app.command()
def resume(as_json: bool = JsonOpt, nats_url: str = NatsUrlOption) -> None:
    """Accept orders again after a halt."""
    _print_ack(run(_control(nats_url, "resume", False, None)), as_json)


@app.command("status")
def router_status(as_json: bool = JsonOpt, nats_url: str = NatsUrlOption) -> None:
    """Is the router halted or running?"""
    _print_ack(run(_control(nats_url, "status", False, None)), as_json)
