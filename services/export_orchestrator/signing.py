"""HMAC-signed, expiring download URLs.

A URL names one artifact of one job: ``/artifacts/<job_id>/<filename>?expires=<unix s>&sig=<hex>``
where ``sig = HMAC-SHA256(secret, "<job_id>/<filename>\\n<expires>")``. Anything changed (job,
file, expiry) breaks the signature; an expired URL is refused even with a valid signature.

The key never travels on the bus: it is configured (``MARKETBUS_EXPORT_SIGNING_SECRET``, or
``..._SIGNING_SECRET_FILE`` for a docker/k8s secret), else generated once into
``<data dir>/export-signing.key`` (0600) and read from there by every orchestrator sharing the
data dir (:func:`load_signing_key`). Several hosts: configure the same secret on each.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path
from typing import Literal
from urllib.parse import quote

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=~-]{0,200}$")

Problem = Literal["bad_signature", "expired", "bad_name"]


def safe_name(name: str) -> bool:
    """A job id or artifact file name: one path segment, no '..', no separators."""
    return bool(_NAME.match(name)) and ".." not in name


class UrlSigner:
    def __init__(self, secret: bytes | str, ttl_s: float = 300.0) -> None:
        self.secret = secret.encode() if isinstance(secret, str) else secret
        if not self.secret:
            raise ValueError("a signing secret is required")
        self.ttl_s = ttl_s

    def _sig(self, job_id: str, filename: str, expires: int) -> str:
        msg = f"{job_id}/{filename}\n{expires}".encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()

    def path(self, job_id: str, filename: str, *, now: float | None = None, ttl_s: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + (self.ttl_s if ttl_s is None else ttl_s))
        sig = self._sig(job_id, filename, expires)
        return f"/artifacts/{quote(job_id)}/{quote(filename)}?expires={expires}&sig={sig}"

    def url(self, base: str, job_id: str, filename: str, **kw: float) -> str:
        return base.rstrip("/") + self.path(job_id, filename, **kw)

    def verify(self, job_id: str, filename: str, expires: str | None, sig: str | None,
               *, now: float | None = None) -> Problem | None:
        """None when the URL is valid; else why not."""
        if not (safe_name(job_id) and safe_name(filename)):
            return "bad_name"
        if not expires or not sig or not expires.isdigit() or len(expires) > 12:
            return "bad_signature"
        if not hmac.compare_digest(sig.encode(), self._sig(job_id, filename, int(expires)).encode()):
            return "bad_signature"
        if int(expires) < (now if now is not None else time.time()):
            return "expired"
        return None


KEY_FILE = "export-signing.key"


def load_signing_key(configured: str, data_dir: str | Path, key_file: str = "") -> bytes:
    """The URL-signing key: ``configured`` when set, else the key file (default
    ``<data_dir>/export-signing.key``), created with a random key (0600) when missing."""
    if configured:
        return configured.encode()
    path = Path(key_file) if key_file else Path(data_dir) / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: of two orchestrators starting together, one writes and both read the same key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    for _ in range(50):  # the writer may not have written yet
        key = path.read_text().strip()
        if key:
            return key.encode()
        time.sleep(0.01)
    raise RuntimeError(f"the signing key file {path} is empty")
