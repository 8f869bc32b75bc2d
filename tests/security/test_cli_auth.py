"""The CLI: it never guesses a server, uses the data dir's identity by itself, and takes explicit
credentials."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from typer.testing import CliRunner

from marketbus.cli.main import app

from .conftest import SecureBus

runner = CliRunner()


def _env(**extra: str) -> dict[str, str | None]:
    clear = ("NATS_URL", "NATS_USER", "NATS_PASSWORD", "NATS_CREDS_FILE", "NATS_NKEY_SEED_FILE", "NATS_INBOX_PREFIX",
             "MARKETBUS_CLI_IDENTITY", "NATS_TLS_CA_FILE")
    return {**dict.fromkeys(clear), **extra}


def test_with_no_server_recorded_or_given_the_cli_says_so_and_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["tail", "md.>"], env=_env(MARKETBUS_DATA_DIR=str(tmp_path)))
    assert (result.exit_code, "no NATS server" in result.output) == (2, True), result.output


def test_the_cli_uses_the_data_dirs_admin_identity_to_provision(bus: SecureBus) -> None:
    data_dir = bus.store.directory.parent  # <data dir>/credentials holds the seeds
    result = runner.invoke(app, ["provision"], env=_env(MARKETBUS_DATA_DIR=str(data_dir), NATS_URL=bus.url))
    assert (result.exit_code, "7 streams" in result.output) == (0, True), result.output
    result = runner.invoke(app, ["provision", "--json"], env=_env(MARKETBUS_DATA_DIR=str(data_dir), NATS_URL=bus.url))
    assert result.exit_code == 0, result.output
    (report,) = [json.loads(line) for line in result.stdout.splitlines()]  # one object, on one line
    assert "MD" in report["streams"] and len(report["streams"]) == 7 and report["consumers"]


def test_provision_in_process_leaves_the_log_levels_as_they_were(bus: SecureBus) -> None:
    """`provision` quiets the provisioner's INFO summary (it prints it itself) only while it runs: a
    later provisioning in the same process (a service, the next test) still logs what it did."""
    logger = logging.getLogger("marketbus.runtime.provision")
    before = logger.level
    logger.setLevel(logging.INFO)  # what a process that wants the summary logged has chosen
    try:
        data_dir = bus.store.directory.parent
        result = runner.invoke(app, ["provision"], env=_env(MARKETBUS_DATA_DIR=str(data_dir), NATS_URL=bus.url))
        after = logger.level
    finally:
        logger.setLevel(before)
    assert result.exit_code == 0, result.output
    assert after == logging.INFO


def test_explicit_credentials_win_and_a_wrong_password_is_refused(bus: SecureBus) -> None:
    result = runner.invoke(app, ["--user", "nobody", "--password", "wrong", "provision"],
                           env=_env(MARKETBUS_DATA_DIR=str(bus.store.directory.parent), NATS_URL=bus.url))
    assert result.exit_code != 0 and "AuthorizationViolation" in re.sub(r"[\s│]", "", result.output), result.output


def test_user_and_password_by_flag_or_environment_connect(tmp_path: Path) -> None:
    """``--user/--password`` and ``NATS_USER``/``NATS_PASSWORD`` against a server with password users."""
    from marketbus.runtime.http import free_port
    from marketbus.runtime.natsserver import NatsServer

    conf = tmp_path / "users.conf"
    conf.write_text('authorization { users: [ {user: "alice", password: "alice-pw-1"} ] }\n')
    server = NatsServer(data_dir=tmp_path / "nats", port=free_port(), config_file=conf).start()
    env = _env(MARKETBUS_DATA_DIR=str(tmp_path / "no-data-dir"), NATS_URL=server.url)
    try:
        flags = runner.invoke(app, ["--user", "alice", "--password", "alice-pw-1", "provision"], env=env)
        by_env = runner.invoke(app, ["provision"], env=env | {"NATS_USER": "alice", "NATS_PASSWORD": "alice-pw-1"})
        anonymous = runner.invoke(app, ["provision"], env=env)
    finally:
        server.cleanup()
    assert (flags.exit_code, "7 streams" in flags.output, by_env.exit_code, "7 streams" in by_env.output,
            anonymous.exit_code != 0) == (0, True, 0, True, True), flags.output + by_env.output
