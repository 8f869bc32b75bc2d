"""Measuring a client's pacing from the requests it actually sent (httpx request hooks)."""

from __future__ import annotations

import bisect
import time
from typing import Any

import httpx


def record_sends(client: httpx.AsyncClient) -> list[float]:
    """The monotonic times at which ``client`` sends each request, appended as they go out."""
    sent: list[float] = []

    async def hook(_request: httpx.Request) -> None:
        sent.append(time.monotonic())

    client.event_hooks["request"] = [*client.event_hooks["request"], hook]
    return sent


def most_in_any_window(times: list[Any], per_s: float) -> int:
    """The largest number of ``times`` inside any sliding window ``[t, t + per_s)``."""
    ordered = sorted(times)
    return max((bisect.bisect_left(ordered, t + per_s) - i for i, t in enumerate(ordered)), default=0)
