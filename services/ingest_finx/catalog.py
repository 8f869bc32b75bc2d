"""The FinX catalog: ``referenceData`` of the configured tickers -> ``ref.currency.finx._.<TICKER>``,
and the configured pairs -> ``ref.instrument.finx._.<BASE-QUOTE>`` (enriched with their legs'
reference data), refreshed every ``ref_refresh_s``."""

from __future__ import annotations

import time

from marketbus.contracts.reference import Currency

from . import normalize
from .client import SessionLost
from .parts import FinxHost


class FinxCatalog:
    def __init__(self, ingestor: FinxHost) -> None:
        self.ing = ingestor
        self.currencies: dict[str, Currency] = {}
        self.refresh_at = 0.0

    @property
    def due(self) -> bool:
        return time.monotonic() >= self.refresh_at

    async def load(self) -> None:
        """Reference data of every ticker, then the pairs' instruments (one session's lock-step:
        a reply for another ticker ends the session)."""
        ing = self.ing
        self.refresh_at = time.monotonic() + ing.settings.ref_refresh_s
        for ticker in dict.fromkeys(t.upper() for t in ing.settings.tickers):
            frame = await ing.client.call("referenceData", securityId=ticker)
            try:
                event = await ing.frames.normalize("referenceData", frame, normalize.reference, frame, ing.now_ns())
            except normalize.VendorError as exc:
                ing.vendor_refused("reference", exc, f"FinX has no reference data for {ticker}")
                continue
            if event is None:
                continue
            if event.code != ticker:
                await ing.client.desync(f"referenceData {ticker} answered for {event.code}")
                raise SessionLost("reply out of lock-step")
            self.currencies[ticker] = event
            await ing.emit(event)
        now = ing.now_ns()
        for state in ing.pairs.values():
            await ing.emit(normalize.instrument(state.pair, self.currencies, now))
