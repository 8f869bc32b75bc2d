"""Helpers shared by the CLI commands."""

from __future__ import annotations

import os
from pathlib import Path

import nats
import typer

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
URL_FILE = "nats.url"  # in the data dir: the embedded server's URL while `marketbus up` runs

NatsUrlOption = typer.Option(
    None, "--nats-url", envvar="NATS_URL",
    help="NATS server(s); default: the one `marketbus up` started (<data dir>/nats.url), else nats://127.0.0.1:4222")


def data_dir() -> Path:
    return Path(os.environ.get("MARKETBUS_DATA_DIR", ".marketbus"))


def recorded_url() -> str | None:
    """The URL `marketbus up` recorded for its embedded server (it takes a free port when 4222 is
    busy, e.g. with a system NATS), so the other commands find it without NATS_URL."""
    try:
        return (data_dir() / URL_FILE).read_text().strip() or None
    except OSError:
        return None


def nats_url(value: str | None) -> str:
    return value or os.environ.get("NATS_URL") or recorded_url() or DEFAULT_NATS_URL


async def connect(url: str | None) -> nats.NATS:
    target = nats_url(url)
    try:
        return await nats.connect(target.split(","), connect_timeout=3, max_reconnect_attempts=2, allow_reconnect=False)
    except Exception as exc:  # noqa: BLE001 - say what failed, not a traceback
        where = f" (recorded in {data_dir() / URL_FILE} by `marketbus up`: is it still running?)" \
            if not url and not os.environ.get("NATS_URL") and recorded_url() else " (is `marketbus up` running?)"
        raise typer.BadParameter(f"cannot connect to NATS at {target}: {exc!r}{where}") from None
