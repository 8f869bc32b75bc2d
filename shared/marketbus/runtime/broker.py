"""NATS connection settings shared by every service, the FastStream broker factory, and the
watch on the connection's state (one log line per change, a callback when it is closed for good)."""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

from faststream.nats import NatsBroker, NatsCredentials, NatsToken, NatsUserPassword
from faststream.nats.security import NatsNKey
from faststream.security import BaseSecurity

from .logging import register_secret
from .settings import Secret, Settings


class BusSettings(Settings, kw_only=True):
    """How to reach NATS; every service's settings include these fields.

    Each falls back to an un-prefixed variable (``NATS_URL``, ``NATS_USER``...) so one value can
    serve every service of a deployment.
    """

    env_fallbacks: ClassVar[dict[str, tuple[str, ...]]] = {
        "nats_url": ("NATS_URL",),
        "nats_user": ("NATS_USER",),
        "nats_password": ("NATS_PASSWORD",),
        "nats_token": ("NATS_TOKEN",),
        "nats_creds_file": ("NATS_CREDS_FILE",),
        "nats_nkey_seed_file": ("NATS_NKEY_SEED_FILE",),
        "nats_inbox_prefix": ("NATS_INBOX_PREFIX",),
        "nats_tls_ca_file": ("NATS_TLS_CA_FILE",),
        "nats_tls_cert_file": ("NATS_TLS_CERT_FILE",),
        "nats_tls_key_file": ("NATS_TLS_KEY_FILE",),
        "stream_replicas": ("MARKETBUS_STREAM_REPLICAS",),
    }

    nats_url: str = "nats://127.0.0.1:4222"  # comma-separated for a cluster
    nats_user: str = ""
    nats_password: Secret = Secret("")
    nats_token: Secret = Secret("")
    nats_creds_file: str = ""  # a JWT creds file (operator-mode servers)
    nats_nkey_seed_file: str = ""  # an nkey seed file (SU...): what `marketbus credentials` writes
    # the private reply-inbox prefix of this identity (its permissions allow only this one);
    # default _INBOX.<identity>, the identity being NATS_USER or the seed file's name (<identity>.nk)
    nats_inbox_prefix: str = ""
    nats_tls_ca_file: str = ""
    nats_tls_cert_file: str = ""
    nats_tls_key_file: str = ""
    stream_replicas: int = 1

    @property
    def inbox_prefix(self) -> str:
        if self.nats_inbox_prefix:
            return self.nats_inbox_prefix
        identity = self.nats_user or (Path(self.nats_nkey_seed_file).stem if self.nats_nkey_seed_file else "")
        return f"_INBOX.{identity}" if identity else "_INBOX"

    @property
    def servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    def connect_options(self, name: str) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (also used to build the FastStream broker)."""
        options: dict[str, Any] = {
            "servers": self.servers,
            "name": name,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1,
            "inbox_prefix": self.inbox_prefix,
        }
        if self.nats_user:
            options["user"] = self.nats_user
            options["password"] = self.nats_password.get()
        if self.nats_token:
            options["token"] = self.nats_token.get()
        if self.nats_creds_file:
            options["user_credentials"] = self.nats_creds_file
        if self.nats_nkey_seed_file:
            options["nkeys_seed"] = self.nats_nkey_seed_file
        if self.nats_tls_ca_file or self.nats_tls_cert_file:
            ctx = ssl.create_default_context(cafile=self.nats_tls_ca_file or None)
            if self.nats_tls_cert_file:
                ctx.load_cert_chain(self.nats_tls_cert_file, self.nats_tls_key_file or None)
            options["tls"] = ctx
        return options


class ConnectionWatch:
    """nats-py's connection callbacks, logged one line per state change (not a traceback per
    reconnect attempt), and ``on_closed(reason)`` when the connection is closed for good (nats-py
    stops reconnecting: the server closed it with an error such as "maximum control line
    exceeded" or an authorization violation)."""

    def __init__(self, log: logging.Logger, on_closed: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.log = log
        self.on_closed = on_closed
        self.connected = True
        self.last_error = ""
        self.disconnects = 0

    async def error(self, err: Exception) -> None:
        text = f"{type(err).__name__}: {err}".strip().rstrip(":")
        if text != self.last_error:  # a reconnect loop repeats the same error every second
            self.log.warning("NATS: %s", text)
        self.last_error = text

    async def disconnected(self) -> None:
        if self.connected:
            self.disconnects += 1
            self.log.warning("NATS disconnected; reconnecting")
        self.connected = False

    async def reconnected(self) -> None:
        self.connected = True
        self.last_error = ""
        self.log.info("NATS reconnected")

    async def closed(self) -> None:
        self.connected = False
        if self.on_closed is not None:
            await self.on_closed(self.last_error or "closed")


class _DropConnectionTracebacks(logging.Filter):
    """FastStream logs every failed reconnect attempt with a traceback; ConnectionWatch says it in
    one line per state change instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("Connection broken", "Connection established"))


class _OneLineNatsErrors(logging.Filter):
    """nats-py's default error callback (connections made without one) logs a traceback for every
    failed reconnect attempt: keep one line, and only when the error changes."""

    def __init__(self) -> None:
        super().__init__()
        self.last = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg, record.args = "nats: %s: %s", (type(exc).__name__, exc)
            record.exc_info, record.exc_text = None, None
        text = record.getMessage()
        if text == self.last:
            return False
        self.last = text
        return True


def _quiet_faststream() -> None:
    for name in ("faststream", "faststream.access.nats"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropConnectionTracebacks) for f in logger.filters):
            logger.addFilter(_DropConnectionTracebacks())
    nats_logger = logging.getLogger("nats.aio.client")
    if not any(isinstance(f, _OneLineNatsErrors) for f in nats_logger.filters):
        nats_logger.addFilter(_OneLineNatsErrors())


def make_broker(settings: BusSettings, name: str, watch: ConnectionWatch | None = None, **extra: Any) -> NatsBroker:
    """A FastStream NatsBroker for ``settings`` (URL, credentials, TLS); ``watch`` gets the
    connection's callbacks."""
    options = settings.connect_options(name)
    tls = options.get("tls")
    security: Any = None
    if settings.nats_user:
        security = NatsUserPassword(settings.nats_user, settings.nats_password.get(), ssl_context=tls)
    elif settings.nats_token:
        security = NatsToken(settings.nats_token.get(), ssl_context=tls)
    elif settings.nats_creds_file:
        security = NatsCredentials(settings.nats_creds_file, ssl_context=tls)
    elif settings.nats_nkey_seed_file:
        security = NatsNKey.from_file(settings.nats_nkey_seed_file, ssl_context=tls)
        with contextlib.suppress(OSError):  # never in a log line, should any library print it
            register_secret(Path(settings.nats_nkey_seed_file).read_text().strip())
    elif tls is not None:
        security = BaseSecurity(ssl_context=tls)
    if watch is not None:
        _quiet_faststream()
        extra.update(error_cb=watch.error, disconnected_cb=watch.disconnected,
                     reconnected_cb=watch.reconnected, closed_cb=watch.closed)
    return NatsBroker(
        options["servers"], name=name, max_reconnect_attempts=-1, reconnect_time_wait=1,
        security=security, log_level=logging.DEBUG, inbox_prefix=options["inbox_prefix"], **extra,
    )
