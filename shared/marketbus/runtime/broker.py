"""NATS connection settings shared by every service, and the FastStream broker factory."""

from __future__ import annotations

import contextlib
import logging
import ssl
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


def make_broker(settings: BusSettings, name: str, **extra: Any) -> NatsBroker:
    """A FastStream NatsBroker for ``settings`` (URL, credentials, TLS)."""
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
    return NatsBroker(
        options["servers"], name=name, max_reconnect_attempts=-1, reconnect_time_wait=1,
        security=security, log_level=logging.DEBUG, inbox_prefix=options["inbox_prefix"], **extra,
    )
