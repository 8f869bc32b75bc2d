"""The router's client side moved to ``marketbus.clients.orders`` (the CLI, users' code and tests
use it from there); these names stay for existing callers."""

from __future__ import annotations

from marketbus.clients.orders import (  # noqa: F401 - re-exported
    REPLY_HEADER,
    OrderClient,
    cancel,
    command_headers,
    command_subject,
    new_id,
    place,
    send_command,
    send_control,
    stored_ack,
    update,
)
