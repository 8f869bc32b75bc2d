"""Structured logging: one JSON object per line (or readable text), secrets scrubbed."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

_SECRETS: set[str] = set()
_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def register_secret(value: str) -> None:
    """Never print this value: it is replaced by ``**********`` in every log line."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def scrub(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "**********")
    return text


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record, as text-safe values (a library's extra may be an
    object whose repr fails, e.g. a dead weak reference: it must not kill the log line)."""
    out: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key in _STD_ATTRS or key.startswith("_"):
            continue
        if not isinstance(value, (str, int, float, bool, type(None), dict, list)):
            try:
                value = repr(value)
            except Exception:
                value = f"<unprintable {type(value).__name__}>"
        out[key] = value
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return scrub(msgspec.json.encode(data, enc_hook=str).decode())


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extra = _extras(record)
        text = super().format(record)
        if extra:
            text += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return scrub(text)


def setup_logging(level: str = "INFO", fmt: str = "text", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "nats.aio.client", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
