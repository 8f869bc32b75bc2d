"""A spread monitor that raises its own events: quotes and books in, alerts out.

Consumes top-of-book quotes (``md.quote.>``) and order books as snapshot + deltas
(``md.book.>`` and ``md.book_delta.>``, one durable with both filters, so the two arrive in the
order they were published) through JetStream durables on stream MD. The books are kept by
:class:`marketbus.books.BookBuilders`: every delta moves the best bid/ask, not only the periodic
snapshots; a missed delta (a gap) is detected and the book waits for the next snapshot (no
alert is judged on a book out of sync). The bid/ask spread is computed in basis points of the mid
price and, when it crosses ``SPREAD_ALERT_BPS``, a :class:`SpreadAlert` is published on
``alerts.spread.<source>.<venue>.<symbol>`` — its own subject, outside ``md.>`` and every
marketbus stream (plain NATS: subscribe to ``alerts.>`` to get them). One alert when the spread
widens past the threshold, one when it comes back ("cleared"); nothing while it stays on one side.

    NATS_URL=nats://127.0.0.1:4222 faststream run examples.spread_alerts:app

Settings (env): ``SPREAD_ALERT_BPS`` (50), ``SPREAD_DURABLE`` (``spread_alerts``; the durables
are ``<durable>_quote`` and ``<durable>_books``), ``SPREAD_REPLAY_FROM`` (ISO time),
``SPREAD_METRICS_PORT`` (unset: no HTTP; ``0``: any free port, logged) for ``/metrics``: the
books' gaps, resyncs and outcomes (:mod:`marketbus.books.metrics`, ``consumer="spread_alerts"``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import ClassVar, Literal

import msgspec
import prometheus_client
from faststream import FastStream

from marketbus.books import BookBuilders, register_builders
from marketbus.contracts.market import BookDelta, BookSnapshot, Quote
from marketbus.faststream import Events, consumer_broker, durable_subscriber
from marketbus.runtime.http import AsgiServer
from marketbus.runtime.settings import Settings, load_settings

log = logging.getLogger("spread_alerts")


class SpreadSettings(Settings, kw_only=True):
    env_prefix: ClassVar[str] = "SPREAD_"
    alert_bps: Decimal = Decimal(50)
    durable: str = "spread_alerts"
    replay_from: str = ""
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"


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
books = BookBuilders()
register_builders(prometheus_client.REGISTRY, books, "spread_alerts")
alerts = broker.publisher("alerts.spread", title="alerts.spread.<source>.<venue>.<symbol>",
                          description="spread crossed the threshold (wide) or came back (cleared)")
start_time = datetime.fromisoformat(settings.replay_from) if settings.replay_from else None
metrics_server: AsgiServer | None = None


@app.on_startup
async def serve_metrics() -> None:
    global metrics_server
    if settings.metrics_port is not None:
        metrics_server = await AsgiServer(prometheus_client.make_asgi_app(), settings.metrics_host,
                                          settings.metrics_port, lifespan="off").start()
        log.info("spread_alerts metrics on %s/metrics", metrics_server.url)


@app.after_shutdown
async def stop_metrics() -> None:
    if metrics_server is not None:
        await metrics_server.stop()


async def _emit(alert: SpreadAlert | None) -> None:
    if alert is not None:
        await alerts.publish(msgspec.json.encode(alert),
                             subject=f"alerts.spread.{alert.source}.{alert.venue}.{alert.symbol}")


@durable_subscriber(broker, "md.quote.>", f"{settings.durable}_quote", deliver="new", start_time=start_time)
async def on_quotes(quotes: Events[Quote]) -> None:
    for q in quotes:
        await _emit(watch.check(q.source, q.venue, q.symbol, q.ts_event, q.bid_price, q.ask_price))


@durable_subscriber(broker, ["md.book.>", "md.book_delta.>"], f"{settings.durable}_books", deliver="new",
                    start_time=start_time)
async def on_books(events: Events[BookSnapshot | BookDelta]) -> None:
    for event in events:
        outcome = books.apply(event)
        if outcome not in ("snapshot", "delta", "mismatch"):
            continue  # nothing moved (a check, a duplicate) or the book is out of sync (a gap: waiting)
        book = books.get(event.source, event.venue, event.symbol)
        assert book is not None and book.synced
        bid, ask = book.best_bid(), book.best_ask()
        await _emit(watch.check(event.source, event.venue, event.symbol, event.ts_event,
                                bid.price if bid else None, ask.price if ask else None))
