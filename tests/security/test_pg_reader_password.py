"""The history reader role's PostgreSQL password is set as a SCRAM-SHA-256 verifier computed by
the writer: the statement the server runs (and logs with ``log_statement = all``) never holds
the password, and the role logs in with it under SCRAM authentication."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from marketbus.security.scram import scram_sha256_verifier
from services.history_writer.store.postgres import PostgresStore
from tests.history.pgcluster import PrivatePostgres

pytestmark = pytest.mark.timeout(120)

# ASCII as `make secrets` draws them, a quote, and non-ASCII ones SASLprep maps (a soft hyphen
# goes, a no-break space becomes a space, full-width letters become ASCII) or keeps (accents)
PASSWORDS = ["Zq3_x-9KfLr0pWm2vB8y1A", "it's", "p\u00e4ss w\u00f6rd", "se\u00adcret\u00a0\uff21\uff22"]


@pytest.fixture(scope="module")
def scram_postgres() -> Iterator[PrivatePostgres]:
    """A private cluster that asks every role but ``postgres`` for its password (SCRAM-SHA-256)
    and logs every statement."""
    pg = PrivatePostgres()
    (pg.data / "pg_hba.conf").write_text("local all all trust\n"
                                         "host all postgres 127.0.0.1/32 trust\n"
                                         "host all all 127.0.0.1/32 scram-sha-256\n")
    with (pg.data / "postgresql.conf").open("a") as conf:
        conf.write("\nlog_statement = 'all'\npassword_encryption = 'scram-sha-256'\n")
    pg.start()
    try:
        yield pg
    finally:
        pg.cleanup()


def _as(dsn: str, role: str) -> str:
    return dsn.replace("postgres@", f"{role}@", 1)


@pytest.mark.parametrize("password", PASSWORDS, ids=["urlsafe", "quote", "accents", "saslprep-mapped"])
async def test_the_reader_logs_in_with_its_password_which_no_statement_holds(scram_postgres: PrivatePostgres,
                                                                            password: str) -> None:
    role = f"mb_reader_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(scram_postgres.dsn, table_prefix=f"hs_{uuid.uuid4().hex[:8]}_", reader_role=role,
                          reader_password=password)
    await store.open()
    await store.close()

    con = await asyncpg.connect(_as(scram_postgres.dsn, role), password=password)
    try:
        assert await con.fetchval("SELECT current_user") == role
    finally:
        await con.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(_as(scram_postgres.dsn, role), password=password + "x")
    with pytest.raises(asyncpg.InvalidPasswordError):  # the verifier itself is no password
        await asyncpg.connect(_as(scram_postgres.dsn, role), password=scram_sha256_verifier(password))

    log = (scram_postgres.root / "pg.log").read_text(errors="replace")
    statements = [line for line in log.splitlines() if f'ROLE "{role}"' in line]
    assert any("ALTER ROLE" in line and "SCRAM-SHA-256$4096:" in line for line in statements), statements
    assert password not in log and password.replace("'", "''") not in log


@pytest.mark.parametrize("password", PASSWORDS, ids=["urlsafe", "quote", "accents", "saslprep-mapped"])
async def test_the_verifier_is_the_one_postgresql_computes(pg_dsn: str, password: str) -> None:
    """Given PostgreSQL's salt and iteration count, the same verifier as the server's own (which
    applies SASLprep the same way)."""
    role = f"mb_scram_{uuid.uuid4().hex[:8]}"
    con = await asyncpg.connect(pg_dsn)
    try:
        await con.execute("SET password_encryption = 'scram-sha-256'")
        literal = "'" + password.replace("'", "''") + "'"
        await con.execute(f'CREATE ROLE "{role}" PASSWORD {literal}')  # the server hashes it
        try:
            stored = await con.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", role)
        finally:
            await con.execute(f'DROP ROLE "{role}"')
    finally:
        await con.close()
    iterations, salt = stored.split("$")[1].split(":")
    assert scram_sha256_verifier(password, salt=base64.b64decode(salt), iterations=int(iterations)) == stored
    assert scram_sha256_verifier(password) != scram_sha256_verifier(password)  # a fresh salt each time
