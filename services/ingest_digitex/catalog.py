"""The Digitex catalog: ``exchange_info/``, ``currency/`` and ``markets/`` -> reference events,
the markets to follow, and the advertised rate limits (which tighten the shared limiter)."""

from __future__ import annotations

import asyncio
import time

from marketbus.runtime.settings import SettingsError
from marketbus.vendor.limits import RateWindow

from . import normalize
from .client import ClientError, Unavailable
from .parts import DigitexHost, MarketState


class DigitexCatalog:
    def __init__(self, ingestor: DigitexHost) -> None:
        self.ing = ingestor
        self.markets: dict[int, MarketState] = {}
        self.by_symbol: dict[str, MarketState] = {}
        self.refresh_at = 0.0

    async def load(self) -> None:
        """Reference data once (raises :class:`Unavailable` while the API is down)."""
        ing, s = self.ing, self.ing.settings
        self.refresh_at = time.monotonic() + s.ref_refresh_s
        now = ing.now_ns()
        raw = await ing.client.get("exchange_info")
        info = await ing.frames.normalize("exchange_info", raw, normalize.exchange_info, raw, ing.venue, now)
        if info is not None:
            venue, _, _, limits = info
            await ing.emit(venue)
            self.apply_limits(limits)
        raw = await ing.client.get("currency")
        currencies = await ing.frames.normalize("currency", raw, normalize.currencies, raw, now)
        for event in currencies or ():
            await ing.emit(event)
        raw = await ing.client.get("markets")
        listed = await ing.frames.normalize("markets", raw, lambda: (normalize.markets(raw, ing.venue, now),
                                                                     normalize.market_defs(raw)))
        if listed is None:
            if not self.markets:
                raise Unavailable("markets/ is malformed")
            return
        instruments, defs = listed
        wanted = {m.strip().upper() for m in s.markets}
        chosen = [(i, d) for i, d in zip(instruments, defs, strict=True)
                  if not wanted or d.code.upper() in wanted or str(d.id) in wanted]
        if wanted and not self.markets:
            found = {d.code.upper() for _, d in chosen} | {str(d.id) for _, d in chosen}
            missing = sorted(wanted - found)
            if missing:
                raise SettingsError(f"{s.env_prefix}MARKETS: unknown market(s) {missing}; "
                                    f"listed: {[d.code for d in defs]}")
        for instrument, d in chosen:
            await ing.emit(instrument)
            if d.id not in self.markets:
                state = MarketState(d.id, d.code, instrument.symbol)
                self.markets[d.id] = state
                self.by_symbol[state.symbol] = state

    def apply_limits(self, limits: dict[str, int]) -> None:
        """The vendor's advertised windows: they tighten the shared limiter, never loosen it."""
        advertised = [RateWindow(limits[name], per_s) for name, per_s in (("SECOND", 1.0), ("MINUTE", 60.0))
                      if name in limits]
        if advertised:
            self.ing.limit.tighten(*advertised)

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.refresh_at - time.monotonic()))
            try:
                await self.load()
            except (Unavailable, ClientError) as exc:
                self.ing.log.warning("reference refresh failed: %s", exc)
                self.refresh_at = time.monotonic() + 30
