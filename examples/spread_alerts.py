"""A spread monitor that raises its own events: quotes and books in, alerts out.

Consumes top-of-book quotes (``md.quote.>``) and order-book snapshots (``md.book.>``) through
JetStream durables on stream MD, computes the bid/ask spread in basis points of the mid price and,
when it crosses ``SPREAD_ALERT_BPS``, publishes a :class:`SpreadAlert` on
``alerts.spread.<source>.<venue>.<symbol>`` — its own subject, outside ``md.>`` and every
marketbus stream (plain NATS: subscribe to ``alerts.>`` to get them). One alert when the spread
widens past the threshold, one when it comes back ("cleared"); nothing while it stays on one side.

    NATS_URL=nats://127.0.0.1:4222 faststream run examples.spread_alerts:app

Settings (env): ``SPREAD_ALERT_BPS`` (50), ``SPREAD_DURABLE`` (``spread_alerts``),
``SPREAD_REPLAY_FROM`` (ISO time).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import ClassVar, Literal

import msgspec
from faststream import FastStream

from marketbus.contracts.market import BookSnapshot, Quote
from marketbus.faststream import Events, consumer_broker, durable_subscriber
from marketbus.runtime.settings import Settings, load_settings


class SpreadSettings(Settings, kw_only=True):
    env_prefix: ClassVar[str] = "SPREAD_"
    alert_bps: Decimal = Decimal(50)
    durable: str = "spread_alerts"
    replay_from: str = ""


class SpreadAlert(msgspec.Struct, frozen=True, kw_only=True):
    """This consumer's own event (not a marketbus contract)."""

    state: Literal["wide", "cleared"]
    source: str
    venue: str
    symbol: str
    ts_event: int
    bid: Decimal
    ask: Decimal
    spread_bps: Decimal
    threshold_bps: Decimal


class SpreadWatch:
    """Remembers which instruments are wide; :meth:`check` returns an alert on a change."""

    def __init__(self, threshold_bps: Decimal) -> None:
        self.threshold_bps = threshold_bps
        self.wide: set[tuple[str, str, str]] = set()

    def check(self, source: str, venue: str, symbol: str, ts_event: int,
              bid: Decimal | None, ask: Decimal | None) -> SpreadAlert | None:
        if bid is None or ask is None or bid <= 0 or ask <= 0:
            return None  # one side empty: no spread to judge
        spread_bps = ((ask - bid) / ((ask + bid) / 2) * 10_000).quantize(Decimal("0.01"))
        key = (source, venue, symbol)
        is_wide = spread_bps > self.threshold_bps
        if is_wide == (key in self.wide):
            return None
        (self.wide.add if is_wide else self.wide.discard)(key)
        return SpreadAlert(state="wide" if is_wide else "cleared", source=source, venue=venue, symbol=symbol,
                           ts_event=ts_event, bid=bid, ask=ask, spread_bps=spread_bps,
                           threshold_bps=self.threshold_bps)


settings = load_settings(SpreadSettings)
broker = consumer_broker("spread-alerts")
app = FastStream(broker)
watch = SpreadWatch(settings.alert_bps)
alerts = broker.publisher("alerts.spread", title="alerts.spread.<source>.<venue>.<symbol>",
                          description="spread crossed the threshold (wide) or came back (cleared)")
start_time = datetime.fromisoformat(settings.replay_from) if settings.replay_from else None


async def _emit(alert: SpreadAlert | None) -> None:
    if alert is not None:
        await alerts.publish(msgspec.json.encode(alert),
                             subject=f"alerts.spread.{alert.source}.{alert.venue}.{alert.symbol}")


@durable_subscriber(broker, "md.quote.>", f"{settings.durable}_quote", deliver="new", start_time=start_time)
async def on_quotes(quotes: Events[Quote]) -> None:
    for q in quotes:
        await _emit(watch.check(q.source, q.venue, q.symbol, q.ts_event, q.bid_price, q.ask_price))


@durable_subscriber(broker, "md.book.>", f"{settings.durable}_book", deliver="new", start_time=start_time)
async def on_books(books: Events[BookSnapshot]) -> None:
    for b in books:
        bid = b.bids[0].price if b.bids else None
        ask = b.asks[0].price if b.asks else None
        await _emit(watch.check(b.source, b.venue, b.symbol, b.ts_event, bid, ask))
