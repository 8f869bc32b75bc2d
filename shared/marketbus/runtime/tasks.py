"""Stopping asyncio tasks for good.

``task.cancel(); await task`` can hang on Python 3.11: ``asyncio.wait_for`` (under every nats-py
request) swallows a cancellation that arrives as its awaited result completes (fixed in 3.12),
so a service loop cancelled at that moment goes on with its next round, and whoever awaits it
waits forever. :func:`cancel_and_wait` cancels again until the tasks are done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], *, again_after_s: float = 0.5,
                          give_up_s: float = 10.0) -> set[asyncio.Future[Any]]:
    """Cancel ``tasks`` and wait until every one is done (its outcome is retrieved, not raised).
    A task still running ``again_after_s`` later is cancelled again; the ones still running after
    ``give_up_s`` are returned."""
    current = asyncio.current_task()
    pending = {t for t in tasks if not t.done() and t is not current}
    for task in pending:
        task.cancel()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_s
    while pending:
        done, pending = await asyncio.wait(pending, timeout=min(again_after_s, max(0.0, deadline - loop.time())))
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: no "exception was never retrieved" at exit
        if not pending or loop.time() >= deadline:
            break
        for task in pending:
            task.cancel()
    return pending
