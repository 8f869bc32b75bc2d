"""A VWAP bar builder: trades in, one bar per instrument and interval out.

Consumes every trade (``md.trade.>``, batch envelopes included) through a JetStream durable on
stream MD, aggregates them by event time into bars (open, high, low, close, volume, VWAP, trade
count) and publishes each closed bar on ``analytics.vwap.<source>.<venue>.<symbol>`` (plain NATS,
outside the marketbus streams). A bar closes when the first trade of a later interval arrives.

    NATS_URL=nats://127.0.0.1:4222 faststream run examples.vwap_bars:app

Settings (env): ``VWAP_INTERVAL_S`` (60), ``VWAP_DURABLE`` (``vwap_bars``), ``VWAP_REPLAY_FROM``
(an ISO time: a new durable starts there instead of at new messages).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import ClassVar

import msgspec
from faststream import FastStream

from marketbus.contracts.market import Trade
from marketbus.faststream import Events, consumer_broker, durable_subscriber
from marketbus.runtime.settings import Settings, load_settings

NS = 1_000_000_000


class VwapSettings(Settings, kw_only=True):
    env_prefix: ClassVar[str] = "VWAP_"
    interval_s: int = 60
    durable: str = "vwap_bars"
    replay_from: str = ""  # ISO 8601; empty = only trades published after the durable is created


class VwapBar(msgspec.Struct, frozen=True, kw_only=True):
    """This consumer's own output contract."""

    source: str
    venue: str
    symbol: str
    start_ns: int  # the interval's start, event time
    interval_s: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    vwap: Decimal
    trades: int


class _OpenBar:
    __slots__ = ("close", "high", "low", "notional", "open", "start_ns", "trades", "volume")

    def __init__(self, start_ns: int, trade: Trade) -> None:
        self.start_ns = start_ns
        self.open = self.high = self.low = self.close = trade.price
        self.volume = self.notional = Decimal(0)
        self.trades = 0
        self.add(trade)

    def add(self, trade: Trade) -> None:
        self.high, self.low, self.close = max(self.high, trade.price), min(self.low, trade.price), trade.price
        self.volume += trade.size
        self.notional += trade.price * trade.size
        self.trades += 1


class BarBuilder:
    """Per-instrument bars in event time; :meth:`add` returns the bars a trade closes."""

    def __init__(self, interval_s: int) -> None:
        self.interval_ns = interval_s * NS
        self.interval_s = interval_s
        self.open: dict[tuple[str, str, str], _OpenBar] = {}

    def add(self, trade: Trade) -> VwapBar | None:
        key = (trade.source, trade.venue, trade.symbol)
        start = trade.ts_event - trade.ts_event % self.interval_ns
        bar = self.open.get(key)
        if bar is None or start > bar.start_ns:
            self.open[key] = _OpenBar(start, trade)
            return self._close(key, bar) if bar is not None else None
        bar.add(trade)  # a late trade of an already closed interval goes to the open bar
        return None

    def _close(self, key: tuple[str, str, str], bar: _OpenBar) -> VwapBar:
        vwap = bar.notional / bar.volume if bar.volume else bar.close
        return VwapBar(source=key[0], venue=key[1], symbol=key[2], start_ns=bar.start_ns, interval_s=self.interval_s,
                       open=bar.open, high=bar.high, low=bar.low, close=bar.close, volume=bar.volume,
                       vwap=vwap, trades=bar.trades)


settings = load_settings(VwapSettings)
broker = consumer_broker("vwap-bars")
app = FastStream(broker)
builder = BarBuilder(settings.interval_s)
bars_out = broker.publisher("analytics.vwap", title="analytics.vwap.<source>.<venue>.<symbol>",
                            description="closed VWAP bars (this example's own contract)")


@durable_subscriber(
    broker,
    "md.trade.>",
    settings.durable,
    deliver="new",
    start_time=datetime.fromisoformat(settings.replay_from) if settings.replay_from else None,
)
async def on_trades(trades: Events[Trade]) -> None:
    """Every trade of every source; a batch envelope arrives as many trades in one call."""
    for trade in trades:
        bar = builder.add(trade)
        if bar is not None:
            await bars_out.publish(msgspec.json.encode(bar),
                                   subject=f"analytics.vwap.{bar.source}.{bar.venue}.{bar.symbol}")
