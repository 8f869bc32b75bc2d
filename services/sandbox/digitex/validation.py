"""DRF-style errors: ``{"detail": ..., "code": ...}`` and 400 field errors ``{"field": ["msg"]}``."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation

import msgspec
from starlette.responses import Response

from services.sandbox.common.base import json_response

REQUIRED = "This field is required."


class ApiError(Exception):
    def __init__(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}

    def response(self) -> Response:
        return json_response(self.body, self.status, self.headers)


def detail(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> ApiError:
    return ApiError(status, {"detail": message, "code": code}, headers)


class Fields:
    """Reads request fields (query or JSON body) and collects DRF's messages for the bad ones."""

    def __init__(self, data: Mapping[str, object]) -> None:
        self.data = data
        self.errors: dict[str, list[str]] = {}

    def _raw(self, name: str, required: bool) -> object | None:
        value = self.data.get(name)
        if value is None or value == "":
            if required:
                self.errors.setdefault(name, []).append(REQUIRED)
            return None
        return value

    def int(self, name: str, required: bool = False, choices: Iterable[int] | None = None) -> int | None:
        raw = self._raw(name, required)
        if raw is None:
            return None
        try:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            value = int(raw)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            self.errors.setdefault(name, []).append("A valid integer is required.")
            return None
        if choices is not None and value not in set(choices):
            self.errors.setdefault(name, []).append(f'"{raw}" is not a valid choice.')
            return None
        return value

    def decimal(self, name: str, required: bool = False) -> Decimal | None:
        raw = self._raw(name, required)
        if raw is None:
            return None
        try:
            if isinstance(raw, bool):
                raise InvalidOperation
            value = Decimal(str(raw))
            if not value.is_finite():
                raise InvalidOperation
        except InvalidOperation:
            self.errors.setdefault(name, []).append("A valid number is required.")
            return None
        return value

    def uuid(self, name: str, required: bool = False) -> str | None:
        raw = self._raw(name, required)
        if raw is None:
            return None
        try:
            return str(uuid.UUID(str(raw)))
        except ValueError:
            self.errors.setdefault(name, []).append("Must be a valid UUID.")
            return None

    def uuid_list(self, name: str) -> list[str] | None:
        raw = self.data.get(name)
        if raw is None:
            return None
        if not isinstance(raw, list):
            self.errors.setdefault(name, []).append(f'Expected a list of items but got type "{type(raw).__name__}".')
            return None
        out = []
        for item in raw:
            try:
                out.append(str(uuid.UUID(str(item))))
            except ValueError:
                self.errors.setdefault(name, []).append("Must be a valid UUID.")
        return out

    def check(self) -> None:
        if self.errors:
            raise ApiError(400, self.errors)


def json_body(body: bytes) -> dict[str, object]:
    if not body.strip():
        return {}
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise detail(400, f"JSON parse error - {exc}", "parse_error") from exc
    if not isinstance(data, dict):
        raise ApiError(
            400, {"non_field_errors": [f"Invalid data. Expected a dictionary, but got {type(data).__name__}."]}
        )
    return data
