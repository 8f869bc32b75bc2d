"""Helpers shared by the CLI commands."""

from __future__ import annotations

import os

import nats
import typer

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

NatsUrlOption = typer.Option(None, "--nats-url", envvar="NATS_URL", help="NATS server(s); default nats://127.0.0.1:4222")


def nats_url(value: str | None) -> str:
    return value or os.environ.get("NATS_URL") or DEFAULT_NATS_URL


async def connect(url: str | None) -> nats.NATS:
    target = nats_url(url)
    try:
        return await nats.connect(target.split(","), connect_timeout=3, max_reconnect_attempts=2, allow_reconnect=False)
    except Exception as exc:  # noqa: BLE001 - say what failed, not a traceback
        raise typer.BadParameter(f"cannot connect to NATS at {target}: {exc!r} (is `marketbus up` running?)") from None
