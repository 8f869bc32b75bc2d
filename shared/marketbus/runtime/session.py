"""Vendor session keep-alive, shared by every ingestor whose vendor has expiring sessions.

Generic: a login callable and a ping callable; see :class:`SessionKeeper`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


class SessionKeeper:
    """Keeps one vendor session alive. Generic: it knows nothing of Sitagri but two callables.

    - ``login() -> (token, idle_timeout_s | None)`` gets a session;
    - ``ping(token)`` refreshes it (raise on failure; an exception with ``status == 401`` means
      the session is gone).

    Callers take the token with :meth:`get`, report every successful use with :meth:`touch`
    (any use refreshes a session), and report a refused token with :meth:`expired`, after which
    the next :meth:`get` logs in again (once, however many callers wait). :meth:`run` pings when
    the session has been idle for ``timeout - margin`` seconds.
    """

    def __init__(self, login: Callable[[], Awaitable[tuple[str, float | None]]],
                 ping: Callable[[str], Awaitable[Any]], *, timeout_s: float = 120.0, margin_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._login = login
        self._ping = ping
        self.timeout_s = timeout_s
        self.margin_s = margin_s
        self.clock = clock
        self._token: str | None = None
        self._lock = asyncio.Lock()
        self.last_use = clock()
        self.logins = 0
        self.pings = 0
        self._changed = asyncio.Event()

    @property
    def token(self) -> str | None:
        return self._token

    @property
    def interval_s(self) -> float:
        """Idle time after which a keep-alive is due."""
        margin = min(self.margin_s, self.timeout_s / 3)
        return max(0.05, self.timeout_s - margin)

    async def get(self) -> str:
        token = self._token
        if token is not None:
            return token
        async with self._lock:
            if self._token is None:
                token, timeout = await self._login()
                if timeout:
                    self.set_timeout(float(timeout))
                self._token = token
                self.logins += 1
                self.touch()
            return self._token

    def touch(self) -> None:
        self.last_use = self.clock()

    def expired(self, token: str | None) -> None:
        """``token`` was refused: forget it (if it is still the current one)."""
        if token is not None and self._token == token:
            self._token = None

    def set_timeout(self, timeout_s: float) -> None:
        if timeout_s > 0 and timeout_s != self.timeout_s:
            self.timeout_s = timeout_s
            self._changed.set()  # wake run(): its wait was computed from the old timeout

    def due_in(self) -> float:
        return self.last_use + self.interval_s - self.clock()

    async def run(self) -> None:
        """Ping whenever the session would otherwise go idle; never returns."""
        while True:
            wait = self.due_in()
            if wait > 0:
                self._changed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait)
                continue
            token: str | None = None
            try:
                token = await self.get()  # a login: the vendor may be down, which is no crash
                await self._ping(token)
                self.pings += 1
                self.touch()
            except Exception as exc:
                if getattr(exc, "status", None) == 401:
                    self.expired(token)
                log.warning("session keep-alive failed: %r", exc)
                await asyncio.sleep(min(5.0, self.interval_s / 4))
