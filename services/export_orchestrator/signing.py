"""HMAC-signed, expiring download URLs.

A URL names one artifact of one job: ``/artifacts/<job_id>/<filename>?expires=<unix s>&sig=<hex>``
where ``sig = HMAC-SHA256(secret, "<job_id>/<filename>\\n<expires>")``. Anything changed (job,
file, expiry) breaks the signature; an expired URL is refused even with a valid signature.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
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
