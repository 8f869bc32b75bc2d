"""The ``marketbus`` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from . import common
from .common import NatsUrlOption
from .output import EXIT_CODES_HELP, OneLineErrors, check_not_negative, fail, json_line, logger_level, run
from .services import SANDBOX_MODULE, SANDBOX_PORTS

app = typer.Typer(help="marketbus: vendor market data on one NATS bus.", no_args_is_help=True, add_completion=True,
                  epilog=EXIT_CODES_HELP, cls=OneLineErrors)
console = Console()


@app.callback()
def main(
    user: str = typer.Option(None, "--user", envvar="NATS_USER", help="NATS user (with --password)"),
    password: str = typer.Option(None, "--password", envvar="NATS_PASSWORD", help="NATS password"),
    creds: str = typer.Option(None, "--creds", envvar="NATS_CREDS_FILE", help="NATS creds file (JWT + nkey seed)"),
    nkey: str = typer.Option(
        None,
        "--nkey",
        envvar="NATS_NKEY_SEED_FILE",
        help="nkey seed file; default: the identity `marketbus up` generated in <data dir>/credentials",
    ),
    tls_ca: str = typer.Option(
        None, "--tls-ca", envvar="NATS_TLS_CA_FILE", help="CA certificate(s) to verify the server"
    ),
    tls_cert: str = typer.Option(None, "--tls-cert", envvar="NATS_TLS_CERT_FILE", help="client certificate"),
    tls_key: str = typer.Option(None, "--tls-key", envvar="NATS_TLS_KEY_FILE", help="client certificate's key"),
) -> None:
    """marketbus: vendor market data on one NATS bus. Connection options apply to every command."""
    common.AUTH = common.Auth(user=user, password=password, creds=creds, nkey=nkey, tls_ca=tls_ca,
                              tls_cert=tls_cert, tls_key=tls_key)


@app.command()
def provision(
    nats_url: str = NatsUrlOption,
    replicas: int = typer.Option(None, "--replicas", envvar="MARKETBUS_STREAM_REPLICAS",
                                 help="stream replicas (1 on one machine, 3 in a cluster)"),
    as_json: bool = typer.Option(False, "--json", help="what exists now, as one JSON object on one line"),
) -> None:
    """Create the streams, KV buckets, object stores and durable consumers (as an admin identity).

    Idempotent; an existing stream is left as it is (a difference from the declaration is logged).
    Retention per stream: MARKETBUS_STREAM_<NAME>_MAX_AGE (s) and _MAX_BYTES."""
    import logging

    from marketbus.runtime.provision import provision as run_provision

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not (common.AUTH.user or common.AUTH.creds or common.AUTH.nkey) and not os.environ.get("MARKETBUS_CLI_IDENTITY"):
        os.environ["MARKETBUS_CLI_IDENTITY"] = "admin"  # the data dir's admin identity, when there is one

    async def go() -> Any:
        nc = await common.connect(nats_url)
        try:
            return await run_provision(nc.jetstream(), replicas or 1)
        finally:
            await nc.drain()

    # what was created or differs is logged (stderr); the summary is printed below, once (not
    # also as the provisioner's INFO line)
    with logger_level("marketbus.runtime.provision", logging.WARNING):
        report = asyncio.run(go())
    if as_json:
        json_line(dataclasses.asdict(report))
    else:
        console.print(report.summary())


@app.command()
def credentials(
    directory: Path = typer.Argument(None, help="where to write the seeds (default <data dir>/credentials)"),
    compose: bool = typer.Option(False, "--compose", help="also the docker compose secrets (PostgreSQL password, "
                                 "history DSN, export API key, URL-signing key), random, kept when present"),
) -> None:
    """Generate an nkey seed per identity (0600; existing ones kept) and the nats-server
    authorization for them (nats-auth.conf, and nats-keys.env for deploy/nats/*.conf)."""
    from marketbus.security.credentials import CredentialStore, compose_secrets

    store = CredentialStore(directory or common.data_dir() / common.CREDENTIALS_DIR)
    try:
        keys = store.ensure()
        if compose:
            compose_secrets(store.directory)
    except OSError as exc:
        fail(f"cannot write the credentials to {store.directory}: {exc.strerror or exc}")
    for name, key in keys.items():
        console.print(f"{name:20} {key}")
    console.print(f"seeds and {store.auth_conf.name} in {store.directory}")


@app.command()
def up(
    data_dir: Path = typer.Option(
        Path(os.environ.get("MARKETBUS_DATA_DIR", ".marketbus")),  # noqa: B008 (read once, shown in --help)
        "--data-dir", help="NATS data, the local store, logs",
    ),
    sandboxes: bool = typer.Option(True, "--sandboxes/--no-sandboxes", help="start the four vendor sandboxes"),
    duration: float = typer.Option(0, "--duration", help="stop after this many seconds (0 = until Ctrl-C)"),
) -> None:
    """Run the whole system in this terminal: NATS, the sandboxes and every service."""
    from .up import run_up

    check_not_negative("--duration", duration, "until Ctrl-C")

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"--data-dir {data_dir}: cannot create it: {exc.strerror or exc}")
    raise typer.Exit(asyncio.run(run_up(data_dir, sandboxes, duration or None, console)))


@app.command()
def tail(
    subject: str = typer.Argument("md.>", help="subject or wildcard, e.g. 'md.trade.finx.>'"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line per event, with its subject"),
    count: int = typer.Option(0, "--count", "-n", help="stop after this many events (0 = forever)"),
    last: bool = typer.Option(False, "--last", help="start with the last stored message of each subject"),
    reconnect_s: float = typer.Option(
        30.0, "--reconnect", help="seconds to keep reconnecting after the server goes away"
    ),
    nats_url: str = NatsUrlOption,
) -> None:
    """Decode and pretty-print the events on SUBJECT (reconnects when the server restarts)."""
    from .tail import run_tail

    check_not_negative("--count", count, "forever")
    check_not_negative("--reconnect", reconnect_s, "do not reconnect")

    run(
        run_tail(nats_url, subject, as_json, count or None, console, last=last, reconnect_s=reconnect_s),
        interrupt_ok=True,
    )


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
    if name not in (*SANDBOX_PORTS, "all"):
        fail(f"unknown sandbox {name!r}; choose from {', '.join(SANDBOX_PORTS)} or all")
    os.execv(sys.executable, [sys.executable, "-m", SANDBOX_MODULE, name])


# Commands added by later services live in their own modules (history, export, order).
for _module, _name in (("history", "history"), ("export", "export"), ("order", "order"), ("replay", "replay"),
                      ("feed", "feed")):
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
