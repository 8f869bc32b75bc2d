"""The FinX catalog: ``referenceData`` of the configured tickers -> ``ref.currency.finx._.<TICKER>``,
and the pairs collected -> ``ref.instrument.finx._.<BASE-QUOTE>`` (enriched with their legs'
reference data), refreshed every ``ref_refresh_s``; the pairs FinX lists (REST
``observations/pairs``), what feed control validates a pair against."""

from __future__ import annotations

import time

import httpx

from marketbus.contracts.reference import Currency

from . import normalize
from .client import SessionLost
from .parts import FinxHost

PAIRS_TTL_S = 60.0  # the listed pairs are asked again after this long (or for a pair not in them)


class PairsUnavailable(Exception):
    """FinX's list of pairs cannot be read now."""


class FinxCatalog:
    def __init__(self, ingestor: FinxHost) -> None:
        self.ing = ingestor
        self.currencies: dict[str, Currency] = {}
        self.refresh_at = 0.0
        self._pairs: set[str] = set()
        self._pairs_at = -PAIRS_TTL_S

    async def listed(self, pair: str) -> bool:
        """Whether FinX lists ``pair`` (the list is cached; a pair not in it asks again, at most
        once a second)."""
        age = time.monotonic() - self._pairs_at
        if age > PAIRS_TTL_S or (pair not in self._pairs and age > 1.0):
            self._pairs = await self._fetch_pairs()
            self._pairs_at = time.monotonic()
        return pair in self._pairs

    async def _fetch_pairs(self) -> set[str]:
        s = self.ing.settings
        try:  # the key is a query parameter: no message here may carry the URL
            async with httpx.AsyncClient(timeout=s.request_timeout_s) as http:
                resp = await http.get(f"{s.rest_base()}/observations/pairs", params={"APIKey": s.api_key.get()})
        except httpx.HTTPError as exc:
            raise PairsUnavailable(f"observations/pairs: {type(exc).__name__}") from None
        self.ing.metrics.frames_in.labels(self.ing.source, "pairs").inc()
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code != 200 or not isinstance(body, list):
            raise PairsUnavailable(f"observations/pairs: HTTP {resp.status_code}, {str(body)[:100]}")
        return {p.upper() for p in body if isinstance(p, str)}

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
