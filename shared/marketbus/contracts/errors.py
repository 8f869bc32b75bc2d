"""The one shape of an error reply on every request/reply subject of the bus.

A server that cannot answer a request (``history.query``, ``history.coverage``, ``export.*``, ...)
replies with an :class:`ErrorReply` instead of the normal reply type::

    {"type": "error_reply", "code": "not_found", "message": "export exp_12 not found"}

``code`` is one of the constants below (a client may branch on it); ``message`` is for people.
``marketbus.clients`` turns every ErrorReply into one exception type,
``marketbus.clients.RequestError`` (``.code``, ``.message``), and uses the client-side codes
``timeout`` and ``no_responders`` for a server that does not answer.
"""

from __future__ import annotations

from typing import Final

from .base import Event

# codes a server sends
BAD_REQUEST: Final = "bad_request"  # the request is malformed or invalid: fix it, do not retry as is
NOT_FOUND: Final = "not_found"  # the thing asked for does not exist
FORBIDDEN: Final = "forbidden"  # the request is well formed, but its sender may not do this (e.g. no control token)
CONFLICT: Final = "conflict"  # the request contradicts the current state (e.g. a reused idempotency key)
OVERLOADED: Final = "overloaded"  # too many requests right now: retry later
UNAVAILABLE: Final = "unavailable"  # a dependency of the server (its store, ...) is down: retry later
INTERNAL: Final = "internal"  # the server failed: a bug or an unexpected error
# codes a client uses when no ErrorReply could arrive
TIMEOUT: Final = "timeout"  # no reply within the client's timeout
NO_RESPONDERS: Final = "no_responders"  # no server listens on the subject

SERVER_CODES: Final = (BAD_REQUEST, NOT_FOUND, FORBIDDEN, CONFLICT, OVERLOADED, UNAVAILABLE, INTERNAL)
CLIENT_CODES: Final = (TIMEOUT, NO_RESPONDERS)

_BY_HTTP_STATUS: Final = {400: BAD_REQUEST, 403: FORBIDDEN, 404: NOT_FOUND, 409: CONFLICT, 429: OVERLOADED,
                          503: UNAVAILABLE}


class ErrorReply(Event, frozen=True, kw_only=True, tag="error_reply"):
    """A request refused or failed; sent instead of the reply the request asked for."""

    code: str  # one of SERVER_CODES
    message: str  # one line, for people
    details: dict[str, str] = {}  # optional machine-readable context (e.g. {"job_id": ...})


def code_for_http_status(status: int) -> str:
    """The error code for an HTTP-like status (servers that classify their errors that way)."""
    return _BY_HTTP_STATUS.get(status, INTERNAL if status >= 500 else BAD_REQUEST)
