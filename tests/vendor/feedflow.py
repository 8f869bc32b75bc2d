"""What flows on the bus while feeds change: a core subscription that records every subject
and the feed-control status events (shared by each ingestor's feed-control test)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from marketbus.contracts import codec
from marketbus.contracts import feeds as contract
from marketbus.contracts.status import FeedStatus


class Flow:
    """Records (monotonic time, subject) of every message on ``md.*.<vendor>.>`` and the
    control states of ``vendor``'s feed status."""

    def __init__(self, nc: Any, vendor: str) -> None:
        self.nc = nc
        self.vendor = vendor
        self.seen: list[tuple[float, str]] = []
        self.states: list[tuple[str, str]] = []  # (detail's feed key, state)
        self.subs: list[Any] = []

    async def __aenter__(self) -> Flow:
        async def on_data(msg: Any) -> None:
            self.seen.append((time.monotonic(), msg.subject))

        async def on_status(msg: Any) -> None:
            event = codec.decode(msg.data)
            if isinstance(event, FeedStatus) and event.state in contract.CONTROL_STATES:
                self.states.append(((event.detail or "").removeprefix("feed "), event.state))

        self.subs = [await self.nc.subscribe(f"md.*.{self.vendor}.>", cb=on_data),
                     await self.nc.subscribe(contract.status_filter(self.vendor), cb=on_status)]
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for sub in self.subs:
            await sub.unsubscribe()

    def count(self, symbol: str, since: float = 0.0) -> int:
        return sum(1 for t, s in self.seen if t >= since and s.rsplit(".", 1)[-1] == symbol)

    async def flowing(self, symbol: str, timeout: float = 10.0) -> float:
        """Seconds until a message of ``symbol`` arrives (from now)."""
        began = time.monotonic()
        while self.count(symbol, began) == 0:
            if time.monotonic() - began > timeout:
                raise AssertionError(f"nothing of {symbol} within {timeout}s")
            await asyncio.sleep(0.05)
        return time.monotonic() - began

    async def flowing_any(self, match: Any, timeout: float = 10.0) -> Any:
        """The first subject matching ``match`` that arrives from now on (and how long it took:
        ``flowing_any(...)`` returns the subject; see :meth:`flowing` for seconds)."""
        began = time.monotonic()
        while True:
            for t, s in self.seen:
                if t >= began and match(s):
                    return s
            if time.monotonic() - began > timeout:
                raise AssertionError(f"nothing matching within {timeout}s")
            await asyncio.sleep(0.05)

    async def quiet_any(self, match: Any, for_s: float = 1.5) -> int:
        began = time.monotonic()
        await asyncio.sleep(for_s)
        return sum(1 for t, s in self.seen if t >= began and match(s))

    async def state(self, key: str, state: str, timeout: float = 10.0) -> None:
        began = time.monotonic()
        while (key, state) not in self.states:
            if time.monotonic() - began > timeout:
                raise AssertionError(f"no {state} status of {key} within {timeout}s: {self.states}")
            await asyncio.sleep(0.05)

    async def quiet(self, symbol: str, for_s: float = 1.5) -> int:
        """How many messages of ``symbol`` arrive during the next ``for_s`` seconds."""
        began = time.monotonic()
        await asyncio.sleep(for_s)
        return self.count(symbol, began)
