"""One exception for every refused or unanswered request, and the helpers that raise it."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from marketbus.contracts import codec
from marketbus.contracts import errors as codes
from marketbus.contracts.errors import ErrorReply

T = TypeVar("T")


class RequestError(Exception):
    """A request a server refused (its :class:`~marketbus.contracts.errors.ErrorReply`) or that no
    server answered. ``code`` is one of the codes in ``marketbus.contracts.errors``
    (``bad_request``, ``not_found``, ..., ``timeout``, ``no_responders``); ``message`` says why."""

    def __init__(self, code: str, message: str, details: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = dict(details or {})

    @classmethod
    def from_reply(cls, reply: ErrorReply) -> RequestError:
        return cls(reply.code, reply.message, reply.details)

    def __repr__(self) -> str:
        return f"RequestError(code={self.code!r}, message={self.message!r})"


def decode_reply(data: bytes, expected: type[T]) -> T:
    """``data`` decoded as ``expected``; an :class:`ErrorReply` (or an undecodable reply) raises
    :class:`RequestError`. ``expected`` must be a tagged contract type (an ``Event``)."""
    try:
        reply = codec.decode_as(data, expected | ErrorReply)  # a tagged union
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RequestError(codes.INTERNAL, f"unexpected reply ({exc}): {bytes(data[:200])!r}") from None
    if isinstance(reply, ErrorReply):
        raise RequestError.from_reply(reply)
    return reply  # type: ignore[no-any-return]


def as_error_reply(data: bytes) -> ErrorReply | None:
    """The ErrorReply in ``data``, or None when it holds something else."""
    if b'"error_reply"' not in data:  # cheap test first: replies are mostly not errors
        return None
    try:
        return codec.decode_as(data, ErrorReply)  # type: ignore[no-any-return]
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def request(nc: Any, subject: str, payload: bytes, *, timeout: float, what: str,
                  headers: dict[str, str] | None = None) -> bytes:
    """Core NATS request/reply with the two ways it can fail without a reply turned into
    RequestError (``what`` names the server in the message: "no history writer is running")."""
    try:
        msg = await nc.request(subject, payload, timeout=timeout, headers=headers)
    except NoRespondersError:
        raise RequestError(codes.NO_RESPONDERS, f"no {what} is running (no responders on {subject})") from None
    except (TimeoutError, NatsTimeoutError):
        raise RequestError(codes.TIMEOUT, f"no reply from the {what} on {subject} within {timeout:g}s") from None
    return msg.data  # type: ignore[no-any-return]
