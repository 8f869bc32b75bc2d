"""The Digitex catalog: ``exchange_info/``, ``currency/`` and ``markets/`` -> reference events,
every listed market (what feed control validates against; the followed ones are added with
:meth:`DigitexCatalog.follow`), and the advertised rate limits (which tighten the shared limiter)."""

from __future__ import annotations

import asyncio
import time

from marketbus.contracts.reference import Instrument
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
        self.listed: dict[str, tuple[Instrument, normalize.WMarket]] = {}  # every listed market, by code
        self.checked_settings = False
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
            if not self.listed:
                raise Unavailable("markets/ is malformed")
            return
        instruments, defs = listed
        self.listed = {d.code: (i, d) for i, d in zip(instruments, defs, strict=True)}
        if not self.checked_settings:  # MARKETS (the feed seed) must name listed markets
            wanted = {m.strip().upper() for m in s.markets}
            found = {d.code.upper() for d in defs} | {str(d.id) for d in defs}
            missing = sorted(wanted - found)
            if missing:
                raise SettingsError(f"{s.env_prefix}MARKETS: unknown market(s) {missing}; "
                                    f"listed: {[d.code for d in defs]}")
            self.checked_settings = True
        for state in list(self.markets.values()):  # the followed markets' reference data, refreshed
            if state.code in self.listed:
                await ing.emit(self.listed[state.code][0])

    def seed_codes(self) -> list[str]:
        """The markets of the MARKETS setting as listed codes (every listed market when empty)."""
        wanted = {m.strip().upper() for m in self.ing.settings.markets}
        return [code for code, (_, d) in self.listed.items()
                if not wanted or code.upper() in wanted or str(d.id) in wanted]

    async def follow(self, code: str) -> MarketState | None:
        """Start following a listed market (feed control): its reference data, its state."""
        if code not in self.listed:
            return None
        instrument, d = self.listed[code]
        await self.ing.emit(instrument)
        state = self.markets.get(d.id)
        if state is None:
            state = MarketState(d.id, d.code, instrument.symbol)
            self.markets[d.id] = state
            self.by_symbol[state.symbol] = state
        return state

    def unfollow(self, code: str) -> None:
        for market_id, state in list(self.markets.items()):
            if state.code == code:
                del self.markets[market_id]
                self.by_symbol.pop(state.symbol, None)

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
