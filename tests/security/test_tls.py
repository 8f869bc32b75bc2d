"""TLS with configured files: a self-signed certificate made in the test, a nats-server that
requires TLS, and the CLI (--tls-ca) and a service's settings (NATS_TLS_CA_FILE) connecting."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from marketbus.runtime.broker import BusSettings
from marketbus.runtime.http import free_port
from marketbus.runtime.natsserver import NatsServer
from marketbus.runtime.settings import load_settings

MARKETBUS = str(Path(sys.executable).parent / "marketbus")


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key (it is its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "marketbus test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "server.pem", directory / "server-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture
def tls_server(tmp_path: Path):
    cert, key = self_signed(tmp_path)
    server = NatsServer(data_dir=tmp_path / "nats", port=free_port(),
                        extra_args=["--tls", "--tlscert", str(cert), "--tlskey", str(key)]).start()
    try:
        yield server, cert
    finally:
        server.cleanup()


def test_the_cli_connects_with_tls_ca_and_refuses_an_unknown_certificate(tls_server) -> None:
    server, cert = tls_server
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")} | {"NATS_URL": server.url}
    trusted = subprocess.run([MARKETBUS, "--tls-ca", str(cert), "provision"], env=env, capture_output=True,
                             text=True, timeout=60, check=False)
    untrusted = subprocess.run([MARKETBUS, "provision"], env=env, capture_output=True, text=True, timeout=60,
                               check=False)
    assert (trusted.returncode, "7 streams" in trusted.stdout, untrusted.returncode != 0) == (0, True, True), (
        trusted.stdout + trusted.stderr)


async def test_a_service_connects_with_nats_tls_ca_file(tls_server) -> None:
    server, cert = tls_server
    settings = load_settings(BusSettings, env={"NATS_URL": server.url, "NATS_TLS_CA_FILE": str(cert)})
    nc = await nats.connect(**settings.connect_options("tls-test"))
    try:
        assert nc.is_connected and nc.connected_url.scheme in ("nats", "tls")
    finally:
        await nc.close()


def test_the_cli_presents_a_client_certificate_to_a_server_that_requires_one(tmp_path: Path) -> None:
    """Mutual TLS: ``--tls-cert/--tls-key`` (and ``NATS_TLS_CERT_FILE``/``NATS_TLS_KEY_FILE``)."""
    cert, key = self_signed(tmp_path)
    server = NatsServer(data_dir=tmp_path / "nats", port=free_port(), extra_args=[
        "--tlsverify", "--tlscert", str(cert), "--tlskey", str(key), "--tlscacert", str(cert)]).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")} | {"NATS_URL": server.url}

    def run(args: list[str], extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MARKETBUS, "--tls-ca", str(cert), *args, "provision"], env=env | extra,
                              capture_output=True, text=True, timeout=60, check=False)

    try:
        flags = run(["--tls-cert", str(cert), "--tls-key", str(key)], {})
        by_env = run([], {"NATS_TLS_CERT_FILE": str(cert), "NATS_TLS_KEY_FILE": str(key)})
        no_client_cert = run([], {})
    finally:
        server.cleanup()
    assert (flags.returncode, "7 streams" in flags.stdout, by_env.returncode, no_client_cert.returncode != 0) == (
        0, True, 0, True), flags.stdout + flags.stderr + by_env.stderr
