"""Typed service settings from environment variables, one prefix per service.

A settings class is a ``msgspec.Struct``; field ``nats_url`` of a class whose prefix is
``MARKETBUS_HISTORY_`` is read from ``MARKETBUS_HISTORY_NATS_URL``. Values are converted with
msgspec (strings to ints, bools, lists from JSON or comma lists). A bad or missing value stops
start-up with a :class:`SettingsError` that names the variable. Secrets are :class:`Secret`
values whose repr and str never show the value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import msgspec


class Secret:
    """A secret string: readable with :meth:`get`, redacted everywhere else."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SettingsError(ValueError):
    """Raised when a setting is missing or invalid; the message names the env variable."""


class Settings(msgspec.Struct, kw_only=True):
    """Base class: subclasses set ``env_prefix`` and declare typed fields with defaults."""

    env_prefix: ClassVar[str] = "MARKETBUS_"
    # field -> other variables read when the prefixed one is absent (e.g. a shared NATS_URL)
    env_fallbacks: ClassVar[dict[str, tuple[str, ...]]] = {}

    def validate(self) -> None:
        """Checks across fields, beyond types; raise :class:`SettingsError` naming the variable.
        Called by :func:`load_settings`, so every service checks its configuration at start-up."""

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to log (secrets masked)."""
        return {f: repr(v) if isinstance(v, Secret) else v for f, v in msgspec.structs.asdict(self).items()}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"{type(self).__name__}({inner})"


S = TypeVar("S", bound=Settings)


def _dec_hook(tp: type, obj: Any) -> Any:
    if tp is Secret:
        if isinstance(obj, Secret):
            return obj
        if isinstance(obj, str):
            return Secret(obj)
    if tp is Path and isinstance(obj, str):
        return Path(obj)
    raise NotImplementedError(f"cannot convert {type(obj).__name__} to {tp}")


def _raw_value(name: str, env: Mapping[str, str]) -> str | None:
    """The value of NAME, or of the file named by NAME_FILE (docker/k8s secrets)."""
    if name in env:
        return env[name]
    file_name = env.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise SettingsError(f"{name}_FILE={file_name!r}: cannot read the file ({exc.strerror})") from exc
    return None


def _coerce(raw: str, field_type: Any) -> Any:
    """Lists and dicts may be given as JSON; lists also as comma-separated values."""
    text = raw.strip()
    origin = getattr(field_type, "__origin__", field_type)
    if origin in (list, tuple, set, frozenset):
        if text.startswith("["):
            return msgspec.json.decode(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    if origin is dict:
        return msgspec.json.decode(text) if text else {}
    return raw


def env_names(cls: type[Settings]) -> dict[str, str]:
    """field name -> environment variable name, for docs and the compose-file check."""
    return {f.name: f"{cls.env_prefix}{f.name.upper()}" for f in msgspec.structs.fields(cls)}


def load_settings(cls: type[S], env: Mapping[str, str] | None = None, **overrides: Any) -> S:
    """Build ``cls`` from the environment (plus explicit overrides, used by tests and the CLI)."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    for field in msgspec.structs.fields(cls):
        name = f"{cls.env_prefix}{field.name.upper()}"
        if field.name in overrides:
            data[field.name] = overrides[field.name]
            continue
        raw = _raw_value(name, env)
        for fallback in cls.env_fallbacks.get(field.name, ()) if raw is None else ():
            raw = _raw_value(fallback, env)
            if raw is not None:
                break
        if raw is None:
            if field.required:
                raise SettingsError(f"{name} is required but not set")
            continue
        try:
            data[field.name] = _coerce(raw, field.type)
        except msgspec.DecodeError as exc:
            raise SettingsError(f"{name}: not valid JSON ({exc})") from exc
    try:
        settings = msgspec.convert(data, cls, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        message = str(exc)
        # msgspec says "... - at `$.field`": name the env variable instead of the path.
        field_name = message.rsplit("$.", 1)[-1].split("`")[0].split(".")[0].split("[")[0] if "$." in message else ""
        var = f"{cls.env_prefix}{field_name.upper()}" if field_name else cls.env_prefix + "*"
        raw = "<secret>" if any(
            f.name == field_name and f.type is Secret for f in msgspec.structs.fields(cls)
        ) else data.get(field_name)
        reason = message.split(" - at ")[0]
        raise SettingsError(f"{var}={raw!r} is invalid: {reason}") from exc
    settings.validate()
    return settings
