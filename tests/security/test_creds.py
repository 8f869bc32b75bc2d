"""NATS_CREDS_FILE works (nkeys is installed): an operator-mode nats-server (operator, account and
user JWTs made here with the nkeys package) and a service's settings connecting with a creds file."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from pathlib import Path

import nats
import nkeys
import pytest

from marketbus.runtime.broker import BusSettings
from marketbus.runtime.http import free_port
from marketbus.runtime.natsserver import NatsServer
from marketbus.runtime.settings import load_settings


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _keypair(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _jwt(issuer: nkeys.KeyPair, subject: str, name: str, nats_claims: dict) -> str:
    """A NATS JWT (v2): ed25519-nkey signature over header.claims."""
    claims = {"iat": int(time.time()), "iss": issuer.public_key.decode(), "name": name, "sub": subject,
              "nats": {**nats_claims, "version": 2}}
    claims["jti"] = (
        base64.b32encode(hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()).decode().rstrip("=")
    )
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(issuer.sign(f'{head}.{body}'.encode()))}"


def operator_mode_server(tmp_path: Path, *, jetstream: bool = False,
                         rights: dict | None = None) -> tuple[NatsServer, Path]:
    """An operator-mode nats-server (operator and account JWTs preloaded) and a creds file of a
    user of that account whose JWT grants ``rights`` (pub/sub allow lists; None: everything)."""
    operator = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    account = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user = _keypair(nkeys.PREFIX_BYTE_USER)
    op_jwt = _jwt(operator, operator.public_key.decode(), "marketbus", {"type": "operator"})
    acc_pub = account.public_key.decode()
    limits = {"subs": -1, "conn": -1, "leaf": -1, "imports": -1, "exports": -1, "data": -1, "payload": -1,
              "wildcards": True}
    if jetstream:  # JetStream for the account: unlimited storage, streams and consumers
        limits |= {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    acc_jwt = _jwt(operator, acc_pub, "MARKETBUS", {"type": "account", "limits": limits})
    user_jwt = _jwt(account, user.public_key.decode(), "reader", {
        "type": "user", **(rights or {}), "subs": -1, "data": -1, "payload": -1})
    preload = {acc_pub: acc_jwt}
    system = ""
    if jetstream:  # JetStream needs the server's system account
        sys_key = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
        sys_pub = sys_key.public_key.decode()
        preload[sys_pub] = _jwt(operator, sys_pub, "SYS", {"type": "account", "limits": {
            "subs": -1, "conn": -1, "leaf": -1, "imports": -1, "exports": -1, "data": -1, "payload": -1}})
        system = f"system_account: {sys_pub}\n"
    conf = tmp_path / "operator.conf"
    conf.write_text(f'operator: "{op_jwt}"\n{system}resolver: MEMORY\nresolver_preload: {{\n'
                    + "".join(f'  {k}: "{v}"\n' for k, v in preload.items()) + "}\n")
    creds = tmp_path / "reader.creds"
    creds.write_text(f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
                     f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n")
    creds.chmod(0o600)
    server = NatsServer(data_dir=tmp_path / "nats", port=free_port(), jetstream=jetstream, config_file=conf).start()
    return server, creds


@pytest.fixture
def operator_mode(tmp_path: Path):
    server, creds = operator_mode_server(tmp_path, rights={
        "pub": {"allow": ["md.>"]}, "sub": {"allow": ["md.>", "_INBOX.reader.>"]}})
    try:
        yield server, creds
    finally:
        server.cleanup()


async def test_a_creds_file_connects_with_the_rights_of_its_jwt(operator_mode) -> None:
    server, creds = operator_mode
    settings = load_settings(BusSettings, env={"NATS_URL": server.url, "NATS_CREDS_FILE": str(creds),
                                               "NATS_INBOX_PREFIX": "_INBOX.reader"})
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(**settings.connect_options("creds-test"), error_cb=on_error)
    try:
        sub = await nc.subscribe("md.>")
        await nc.publish("md.trade.x.y.z", b"hello")
        await nc.publish("orders.cmd.digitex.x", b"no")
        await nc.flush()
        got = (await sub.next_msg(5)).data
        deadline = time.monotonic() + 3
        while not errors and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        await nc.close()
    assert (got, any("orders.cmd.digitex.x" in e for e in errors)) == (b"hello", True)


def test_the_cli_connects_with_creds_and_nats_creds_file(tmp_path: Path) -> None:
    """``marketbus --creds <file>`` and ``NATS_CREDS_FILE`` (JetStream on the JWT's account)."""
    import subprocess
    import sys

    server, creds = operator_mode_server(tmp_path, jetstream=True)
    marketbus = str(Path(sys.executable).parent / "marketbus")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")} | {
        "NATS_URL": server.url, "MARKETBUS_DATA_DIR": str(tmp_path / "no-data-dir")}
    try:
        flag, by_env, without = (
            subprocess.run([marketbus, *args, "provision"], env=env | extra, capture_output=True, text=True,
                           timeout=60, check=False)
            for args, extra in ((["--creds", str(creds)], {}), ([], {"NATS_CREDS_FILE": str(creds)}), ([], {})))
    finally:
        server.cleanup()
    assert (flag.returncode, "7 streams" in flag.stdout, by_env.returncode, "7 streams" in by_env.stdout,
            without.returncode != 0) == (0, True, 0, True, True), flag.stdout + flag.stderr + by_env.stderr
