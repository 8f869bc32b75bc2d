"""Helpers shared by the CLI commands: which NATS server, as whom.

The server: ``--nats-url`` / ``NATS_URL``, else the URL ``marketbus up`` recorded in
``<data dir>/nats.url``; nothing else (no silent guess). Every command names the server on stderr.

The identity: ``--user/--password``, ``--creds``, ``--nkey`` (and ``NATS_USER``/``NATS_PASSWORD``,
``NATS_CREDS_FILE``, ``NATS_NKEY_SEED_FILE``), else the operator identity ``marketbus up``
generated in ``<data dir>/credentials`` (``MARKETBUS_CLI_IDENTITY=reader`` for the read-only one).
TLS: ``--tls-ca`` / ``--tls-cert`` / ``--tls-key`` (``NATS_TLS_CA_FILE``...).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import typer

URL_FILE = "nats.url"  # in the data dir: the embedded server's URL while `marketbus up` runs
CREDENTIALS_DIR = "credentials"  # in the data dir: the identities' seed files (0600)

NatsUrlOption = typer.Option(
    None, "--nats-url", envvar="NATS_URL",
    help="NATS server(s); default: the one `marketbus up` started (recorded in <data dir>/nats.url)")


@dataclass
class Auth:
    """Credentials and TLS given on the command line (the env equivalents are read by typer)."""

    user: str | None = None
    password: str | None = None
    creds: str | None = None
    nkey: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


AUTH = Auth()  # set by the `marketbus` callback (main.py) before a command runs


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
    """The server to talk to; exits with status 2 and one line when none is given or recorded."""
    url = value or os.environ.get("NATS_URL") or recorded_url()
    if not url:
        print(f"error: no NATS server: `marketbus up` has not recorded one in {data_dir() / URL_FILE} (is it "
              "running, from this directory?); give --nats-url or NATS_URL", file=sys.stderr)
        raise typer.Exit(2)
    return url


def _seed_file(identity: str) -> Path | None:
    path = data_dir() / CREDENTIALS_DIR / f"{identity}.nk"
    return path if path.exists() else None


def connect_options(auth: Auth | None = None) -> tuple[dict[str, Any], str]:
    """nats.connect options for ``auth`` (else the data dir's identity), and who we are."""
    auth = auth or AUTH
    options: dict[str, Any] = {}
    who = "anonymous"
    if auth.user:
        options.update(user=auth.user, password=auth.password or "", inbox_prefix=f"_INBOX.{auth.user}")
        who = f"user {auth.user}"
    elif auth.creds:
        options["user_credentials"] = auth.creds
        who = f"creds {auth.creds}"
    elif auth.nkey:
        options.update(nkeys_seed=auth.nkey, inbox_prefix=f"_INBOX.{Path(auth.nkey).stem}")
        who = f"nkey {auth.nkey}"
    else:
        wanted = os.environ.get("MARKETBUS_CLI_IDENTITY", "")
        for identity in ([wanted] if wanted else ["operator", "reader"]):
            seed = _seed_file(identity)
            if seed is not None:
                options.update(nkeys_seed=str(seed), inbox_prefix=f"_INBOX.{identity}")
                who = f"identity {identity}"
                break
    if os.environ.get("NATS_INBOX_PREFIX"):
        options["inbox_prefix"] = os.environ["NATS_INBOX_PREFIX"]
    if auth.tls_ca or auth.tls_cert:
        import ssl

        ctx = ssl.create_default_context(cafile=auth.tls_ca or None)
        if auth.tls_cert:
            ctx.load_cert_chain(auth.tls_cert, auth.tls_key or None)
        options["tls"] = ctx
    return options, who


def say(line: str) -> None:
    """One line on the real stderr (a terminal, a pipe, a file). Not into an in-process runner's
    captured stream (click's CliRunner), which merges stderr into the output a test parses."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return
    print(line, file=sys.stderr)


async def _quiet(exc: Exception) -> None:
    """nats-py prints a traceback per error by default; connect() reports the one that matters."""


async def connect(url: str | None) -> nats.NATS:
    target = nats_url(url)
    options, who = connect_options()
    say(f"marketbus: NATS {target} as {who}")
    servers = [u.strip() for u in target.split(",") if u.strip()]
    if "tls" in options:  # a tls:// URL scheme is what nats-py needs to start TLS on its own
        servers = [u.replace("nats://", "tls://", 1) for u in servers]
    try:
        return await nats.connect(servers, connect_timeout=3, max_reconnect_attempts=2, allow_reconnect=False,
                                  error_cb=_quiet, **options)
    except Exception as exc:
        where = f" (recorded in {data_dir() / URL_FILE} by `marketbus up`: is it still running?)" \
            if not url and not os.environ.get("NATS_URL") and recorded_url() else ""
        raise typer.BadParameter(f"cannot connect to NATS at {target} as {who}: {exc!r}{where}") from None
