"""Digitex-specific switches: order-placement faults for the order router, maintenance, throttling.

Set at run time with ``POST /_sandbox/digitex/faults`` (JSON, fields below, merged) and read with
``GET``. The generic HTTP faults (429 storms, 5xx, slow, malformed) stay at ``/_sandbox/faults``.
"""

from __future__ import annotations

import msgspec


class DigitexSwitches(msgspec.Struct, kw_only=True):
    # The next N placements are applied (the order exists) but the reply comes place_reply_delay_ms
    # later: a client with a shorter timeout sees a timeout for an order that did go through.
    place_timeout_next: int = 0
    place_reply_delay_ms: int = 3000
    # The next N placements are applied, then answered with place_fail_status (a lost reply).
    place_fail_after_apply_next: int = 0
    # The next N placements are answered with place_fail_status and nothing is applied.
    place_fail_before_apply_next: int = 0
    place_fail_status: int = 500
    maintenance: bool = False  # every API route answers 503
    rate_limit_enabled: bool = False  # enforce exchange_info.rate_limits (429 + Retry-After)
    accept_delay_ms: int = 50  # PENDING -> ACCEPTED delay for new placements

    def take(self, name: str) -> bool:
        pending = getattr(self, name)
        if pending > 0:
            setattr(self, name, pending - 1)
            return True
        return False
