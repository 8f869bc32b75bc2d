"""nkey credentials for the identities, and the nats-server authorization they imply.

Why nkeys (not passwords): the server configuration holds only *public* keys, so it is no secret
(it can be committed, shown, logged), and a client proves it holds the seed by signing the
server's nonce: nothing secret crosses the wire, even without TLS. A seed file (``SU...``) per
identity is all a client needs (``NATS_NKEY_SEED_FILE``); creds files (JWT + seed,
``NATS_CREDS_FILE``) work as well for operator-mode deployments.

``marketbus up`` keeps the seeds in ``<data dir>/credentials/<identity>.nk`` (0600) and the
generated server configuration in ``<data dir>/credentials/nats-auth.conf``. Docker compose runs
``marketbus credentials <dir>`` once (the same files) and the nats container includes them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import nkeys

from .identities import IDENTITIES, RESPONSES_EXPIRES, RESPONSES_MAX, Identity

SEED_SUFFIX = ".nk"
AUTH_CONF = "nats-auth.conf"  # the authorization block, public keys inline
KEYS_ENV = "nats-keys.env"  # MARKETBUS_NKEY_<NAME>=<public key>: the environment of deploy/nats/*.conf


def new_seed() -> str:
    """A fresh user nkey seed (``SU...``)."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed.decode()


def public_key(seed: str) -> str:
    key: bytes = nkeys.from_seed(seed.strip().encode()).public_key
    return key.decode()


def write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only (0600 from the start: never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


class CredentialStore:
    """A directory of seed files, one per identity (created on first use, then kept)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def seed_file(self, identity: str) -> Path:
        return self.directory / f"{identity}{SEED_SUFFIX}"

    def ensure(self, identities: Iterable[Identity] = IDENTITIES) -> dict[str, str]:
        """Seeds for every identity (existing ones kept); returns identity -> public key, and
        writes the server's authorization configuration next to them."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        keys: dict[str, str] = {}
        identities = tuple(identities)
        for identity in identities:
            path = self.seed_file(identity.name)
            if not path.exists():
                write_private(path, new_seed() + "\n")
            keys[identity.name] = public_key(path.read_text())
        (self.directory / AUTH_CONF).write_text(authorization_conf(keys, identities))
        (self.directory / KEYS_ENV).write_text(keys_env(keys))
        return keys

    @property
    def auth_conf(self) -> Path:
        return self.directory / AUTH_CONF


def _var(name: str) -> str:
    return f"MARKETBUS_NKEY_{name.upper()}"


def _list(values: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _permissions(identity: Identity) -> str:
    publish = f"allow: {_list(identity.publish)}"
    if identity.publish_deny:
        publish += f", deny: {_list(identity.publish_deny)}"
    subscribe = f"allow: {_list(identity.subscribe)}"
    if identity.subscribe_deny:
        subscribe += f", deny: {_list(identity.subscribe_deny)}"
    out = f"publish: {{{publish}}}\n        subscribe: {{{subscribe}}}"
    if identity.allow_responses:
        out += f"\n        allow_responses: {{max: {RESPONSES_MAX}, expires: {json.dumps(RESPONSES_EXPIRES)}}}"
    return out


def authorization_conf(keys: dict[str, str] | None = None, identities: Iterable[Identity] = IDENTITIES) -> str:
    """The nats-server ``authorization`` block for ``identities``. With ``keys`` (identity ->
    public nkey) the keys are inline; without, each is a variable ``$MARKETBUS_NKEY_<NAME>`` that
    nats-server reads from its environment (:func:`keys_env`): how the static deploy/ configs use it."""

    lines = ["# Generated from marketbus.security.identities: one nkey user per identity.",
             "# Regenerate with `marketbus credentials`; never edit by hand.", "authorization {", "  users: ["]
    for identity in identities:
        key = json.dumps(keys[identity.name]) if keys else f"${_var(identity.name)}"
        lines.append(f"    # {identity.name}: {identity.description}")
        if identity.admin:
            lines.append(f"    {{nkey: {key}}}")
            continue
        lines.append(f"    {{nkey: {key}, permissions: {{\n        {_permissions(identity)}\n    }}}}")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def keys_env(keys: dict[str, str]) -> str:
    """The public keys as an env file for the static configs: ``MARKETBUS_NKEY_<NAME>=U...``."""
    return "".join(f"{_var(name)}={key}\n" for name, key in keys.items())


LAKEHOUSE_S3_ACCESS_KEY = "marketbus"  # the compose lakehouse profile's S3 identity (its secret is random)
CLUSTER_NODES = ("n1", "n2", "n3")  # deploy/nats/cluster.conf's nodes
CLUSTER_ENV = "nats-cluster.env"  # the route password of deploy/nats/cluster.conf (a secret)
# nats-server parses an environment variable's value as a config value: a bare word is a string,
# but one that starts with a digit or '-' is read as a number or an ISO 8601 date and can fail to
# parse ("All ISO8601 dates must be in full Zulu form"). Route passwords are therefore a letter
# prefix and hex digits.
ROUTE_PASSWORD_SHAPE = re.compile(r"route_[0-9a-f]{32,}")


def new_route_password() -> str:
    """A random route password that nats-server reads as a plain string from its environment."""
    import secrets as random

    return "route_" + random.token_hex(24)


def cluster_env(route_password: str, nodes: Iterable[str] = CLUSTER_NODES, port: int = 6222) -> str:
    """The environment of deploy/nats/cluster.conf's route authentication: the password and each
    route's URL with it (nats-server substitutes whole values only, not parts of a string)."""
    lines = [f"MARKETBUS_ROUTE_PASSWORD={route_password}"]
    lines += [f"MARKETBUS_ROUTE_{node.upper()}=nats-route://route:{route_password}@{node}:{port}" for node in nodes]
    return "\n".join(lines) + "\n"


HISTORY_READER_ROLE = "marketbus_reader"  # the history writer's default pg_reader_role


def compose_secrets(directory: Path) -> list[Path]:
    """The other secrets docker compose reads from files (random; existing files kept)."""
    import secrets as random

    directory = Path(directory)
    pg_password = directory / "postgres_password"
    if not pg_password.exists():
        write_private(pg_password, random.token_urlsafe(24))
    # the history readers' role (SELECT only), created by the history writer with its tables
    reader_password = directory / "history_pg_reader_password"
    if not reader_password.exists():
        write_private(reader_password, random.token_urlsafe(24))
    # the lakehouse profile: the Iceberg catalog's PostgreSQL and SeaweedFS's S3 identity
    catalog_password = directory / "lakehouse_catalog_password"
    if not catalog_password.exists():
        write_private(catalog_password, random.token_urlsafe(24))
    route_password = directory / "nats_route_password"  # deploy/nats/cluster.conf's routes
    if not route_password.exists() or not ROUTE_PASSWORD_SHAPE.fullmatch(route_password.read_text().strip()):
        # also replaces one an earlier `make secrets` drew that nats-server may not parse
        write_private(route_password, new_route_password())
        (directory / CLUSTER_ENV).unlink(missing_ok=True)  # rewritten below with the new password
    s3_secret = directory / "lakehouse_s3_secret_key"
    if not s3_secret.exists():
        write_private(s3_secret, random.token_urlsafe(30))
    s3_config = {
        "identities": [
            {
                "name": "marketbus",
                "credentials": [{"accessKey": LAKEHOUSE_S3_ACCESS_KEY, "secretKey": s3_secret.read_text().strip()}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    wanted = {
        "history_pg_dsn": f"postgresql://marketbus:{pg_password.read_text().strip()}@postgres:5432/marketbus",
        # the export orchestrator reads history as the read-only role, never as the writer
        "history_pg_reader_dsn": f"postgresql://{HISTORY_READER_ROLE}:{reader_password.read_text().strip()}"
                                 "@postgres:5432/marketbus",
        "export_api_key": "mb_export_" + random.token_urlsafe(24),
        "export_signing_secret": random.token_hex(32),
        "lakehouse_catalog_uri": "postgresql+psycopg2://lakehouse:"
                                 f"{catalog_password.read_text().strip()}@lakehouse-catalog:5432/lakehouse",
        "lakehouse_s3_config": json.dumps(s3_config),  # SeaweedFS's -s3.config
        CLUSTER_ENV: cluster_env(route_password.read_text().strip()),
    }
    written = [pg_password, reader_password, catalog_password, route_password, s3_secret]
    for name, value in wanted.items():
        path = directory / name
        if not path.exists():
            write_private(path, value)
        written.append(path)
    return written

if __name__ == "__main__":  # python -m marketbus.security.credentials > deploy/nats/auth.conf
    print(authorization_conf(), end="")
