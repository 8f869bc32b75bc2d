"""Why the replay service refuses a start request: shared by its NATS and HTTP/WebSocket faces."""

from __future__ import annotations

from marketbus.contracts.errors import ErrorReply


class Refused(Exception):
    """A start request the service will not run: becomes an ErrorReply (or an HTTP error)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def reply(self) -> ErrorReply:
        return ErrorReply(code=self.code, message=self.message)
