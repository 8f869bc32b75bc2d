"""PostgreSQL passwords sent as SCRAM-SHA-256 verifiers, never as text.

``ALTER ROLE r PASSWORD 'text'`` puts the password in the statement, and the server logs
statements (``log_statement = all``, ``log_min_error_statement``, ``pg_stat_statements``,
``pg_stat_activity``). PostgreSQL also accepts an already hashed password: a string of the form
``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` is stored as is (RFC 5802/7677,
what ``psql``'s ``\\password`` and libpq's ``PQencryptPasswordConn`` send). A client that logs in
with the password proves it against that verifier; the password itself never reaches the server.

    await con.execute(f"ALTER ROLE reader PASSWORD {sql_literal(scram_sha256_verifier(secret))}")

The password is normalised by SASLprep (RFC 4013) first, as PostgreSQL and libpq do; a password
SASLprep refuses is used as its raw UTF-8 bytes, as they do too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import stringprep
import unicodedata

ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)
SALT_BYTES = 16  # PostgreSQL's SCRAM_DEFAULT_SALT_LEN


def scram_sha256_verifier(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier of ``password`` in PostgreSQL's format (a fresh random salt
    unless one is given)."""
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", _prepared(password), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def sql_literal(text: str) -> str:
    """A SQL string literal (CREATE/ALTER ROLE take no bind parameters)."""
    return "'" + text.replace("'", "''") + "'"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _prepared(password: str) -> bytes:
    try:
        return saslprep(password).encode("utf-8")
    except ValueError:  # PostgreSQL: "if SASLprep fails, use the raw password"
        return password.encode("utf-8")


def saslprep(text: str) -> str:
    """RFC 4013 (SASLprep) with the stored-strings rule off, as PostgreSQL applies it: non-ASCII
    spaces become a space, "commonly mapped to nothing" characters go, NFKC; ValueError for a
    prohibited character or a bidirectional string that breaks RFC 3454's rules."""
    if text.isascii():
        return text  # PostgreSQL (and libpq) take an ASCII password as it is
    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c))
    normal = unicodedata.normalize("NFKC", mapped)
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
                  stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6, stringprep.in_table_c7,
                  stringprep.in_table_c8, stringprep.in_table_c9, stringprep.in_table_a1)
    for c in normal:
        if any(table(c) for table in prohibited):
            raise ValueError(f"SASLprep: prohibited character U+{ord(c):04X}")
    if any(stringprep.in_table_d1(c) for c in normal):  # right-to-left text: RFC 3454 section 6
        if any(stringprep.in_table_d2(c) for c in normal):
            raise ValueError("SASLprep: mixed right-to-left and left-to-right text")
        if not (stringprep.in_table_d1(normal[0]) and stringprep.in_table_d1(normal[-1])):
            raise ValueError("SASLprep: right-to-left text must start and end right-to-left")
    return normal
