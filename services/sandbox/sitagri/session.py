"""Application sessions: tokens, idle expiry, and each session's long-polling mailbox.

The real login API lives elsewhere; the sandbox issues tokens itself (``POST /api/login``) and
also accepts configured static tokens, which never expire. Any /api request or websocket frame
refreshes a session; one idle for ``timeout`` seconds is gone (401 afterwards).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field


def guid(rng: random.Random) -> str:
    """An uppercase GUID like the vendor's: 85045E8E-CE68-2956-9E11-96F51837C71B."""
    h = f"{rng.getrandbits(128):032X}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(eq=False)
class Session:
    """One token; also the long-polling subscriber of that token (updates wait in ``mailbox``)."""

    token: str
    static: bool
    buffer: int
    last_seen: float = field(default_factory=time.monotonic)
    mailbox: deque[bytes] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    def deliver(self, item: bytes) -> None:
        if len(self.mailbox) >= self.buffer:
            self.mailbox.popleft()  # a client that stopped polling loses the oldest updates
            self.dropped += 1
        self.mailbox.append(item)
        self.wakeup.set()

    def drain(self) -> list[bytes]:
        items = list(self.mailbox)
        self.mailbox.clear()
        self.wakeup.clear()
        return items


class SessionStore:
    def __init__(self, seed: int, timeout: float, static_tokens: list[str], credentials: dict[str, str],
                 buffer: int) -> None:
        self.timeout = timeout
        self.static_tokens = set(static_tokens)
        self.credentials = credentials
        self.buffer = buffer
        self.rng = random.Random(seed ^ 0x5E55)
        self.sessions: dict[str, Session] = {}
        self.on_expire: list = []  # callbacks(session): forget its listeners

    def login(self, login: str, password: str) -> Session | None:
        if self.credentials.get(login) != password:
            return None
        session = Session(guid(self.rng), False, self.buffer)
        self.sessions[session.token] = session
        return session

    def get(self, token: str | None, touch: bool = True) -> Session | None:
        """The live session of ``token`` (refreshed), or None when unknown or expired."""
        if not token:
            return None
        session = self.sessions.get(token)
        if session is not None and not session.static and time.monotonic() - session.last_seen > self.timeout:
            self.expire(token)
            session = None
        if session is None and token in self.static_tokens:
            session = self.sessions[token] = Session(token, True, self.buffer)
        if session is not None and touch:
            session.touch()
        return session

    def expire(self, token: str) -> bool:
        session = self.sessions.pop(token, None)
        if session is None:
            return False
        session.wakeup.set()
        for callback in self.on_expire:
            callback(session)
        return True

    def sweep(self) -> None:
        now = time.monotonic()
        for token, s in list(self.sessions.items()):
            if not s.static and now - s.last_seen > self.timeout:
                self.expire(token)
