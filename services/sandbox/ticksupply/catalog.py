"""The sandbox catalog: exchanges, instruments and their datastreams, each backed by a TickTape.

Datastream ids are stable integers assigned in catalog order, so they are the same in every run.
Every datastream of one instrument shares that instrument's tape: a trade stream's rows are the
tape's ticks, a depth stream's rows are the top of book derived from the same ticks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from services.sandbox.common.tape import TickTape, unit

EXCHANGES: dict[str, str] = {"binance": "Binance", "coinbase": "Coinbase", "kraken": "Kraken"}


@dataclass(frozen=True, slots=True)
class InstrumentDef:
    exchange: str
    symbol: str
    base: str
    quote: str
    instrument_type: str
    price: str
    tick_size: str
    lot_size: str


# (symbol, base, quote, type, price, tick size, lot size) per exchange, with exchange-native symbols.
_INSTRUMENTS: dict[str, list[tuple[str, str, str, str, str, str, str]]] = {
    "binance": [
        ("BTCUSDT", "BTC", "USDT", "spot", "43000", "0.01", "0.00001"),
        ("ETHUSDT", "ETH", "USDT", "spot", "2300", "0.01", "0.0001"),
        ("SOLUSDT", "SOL", "USDT", "spot", "95", "0.01", "0.001"),
        ("BNBUSDT", "BNB", "USDT", "spot", "310", "0.1", "0.001"),
        ("XRPUSDT", "XRP", "USDT", "spot", "0.62", "0.0001", "1"),
        ("ETHBTC", "ETH", "BTC", "spot", "0.0535", "0.00001", "0.0001"),
    ],
    "coinbase": [
        ("BTC-USD", "BTC", "USD", "spot", "43010", "0.01", "0.00000001"),
        ("ETH-USD", "ETH", "USD", "spot", "2301", "0.01", "0.00000001"),
        ("SOL-USD", "SOL", "USD", "spot", "95.1", "0.01", "0.001"),
        ("BTC-USDT", "BTC", "USDT", "spot", "43005", "0.01", "0.00000001"),
    ],
    "kraken": [
        ("BTCUSD", "BTC", "USD", "spot", "43020", "0.1", "0.00000001"),
        ("ETHUSD", "ETH", "USD", "spot", "2302", "0.01", "0.00000001"),
        ("PF_XBTUSD", "BTC", "USD", "perpetual", "43040", "0.5", "0.0001"),
        ("PF_ETHUSD", "ETH", "USD", "perpetual", "2304", "0.1", "0.001"),
    ],
}

# Stream types with their wire formats; Binance also offers SBE for its trade streams.
_STREAMS: list[tuple[str, str]] = [("trade", "json"), ("depth", "json")]
_BINANCE_SBE = {"BTCUSDT", "ETHUSDT"}


@dataclass(slots=True)
class Datastream:
    datastream_id: int
    instrument: InstrumentDef
    stream_type: str
    wire_format: str
    tape: TickTape = field(repr=False)

    @property
    def exchange(self) -> str:
        return self.instrument.exchange

    @property
    def symbol(self) -> str:
        return self.instrument.symbol

    def wire(self) -> dict[str, object]:
        return {
            "datastream_id": self.datastream_id,
            "exchange": self.exchange,
            "instrument": self.symbol,
            "stream_type": self.stream_type,
            "wire_format": self.wire_format,
        }

    def collection_ts(self, k: int, ts_ns: int) -> int:
        """When TickSupply's collector received tick k: 0.2-5 ms after the exchange time."""
        return ts_ns + 200_000 + int(unit(self.tape.seed, 303, k) * 4_800_000)


class Catalog:
    def __init__(self, seed: int, rate: float) -> None:
        period_ns = max(1, int(1_000_000_000 / rate)) if rate > 0 else 1_000_000_000
        self.instruments: dict[str, list[InstrumentDef]] = {}
        self.datastreams: dict[int, Datastream] = {}
        next_id = 101
        for exchange, rows in _INSTRUMENTS.items():
            defs = [InstrumentDef(exchange, *row) for row in rows]
            self.instruments[exchange] = defs
            for inst in defs:
                tape = TickTape(seed, f"ticksupply:{exchange}:{inst.symbol}", inst.price, inst.tick_size,
                                inst.lot_size, period_ns=period_ns)
                streams = list(_STREAMS)
                if exchange == "binance" and inst.symbol in _BINANCE_SBE:
                    streams.append(("trade", "sbe"))
                for stream_type, wire_format in streams:
                    self.datastreams[next_id] = Datastream(next_id, inst, stream_type, wire_format, tape)
                    next_id += 1

    def exchanges(self) -> list[dict[str, str]]:
        return [{"code": code, "display_name": name} for code, name in EXCHANGES.items()]

    def find(self, exchange: str | None = None, instrument: str | None = None, stream_type: str | None = None,
             wire_format: str | None = None) -> list[Datastream]:
        return [
            ds for ds in self.datastreams.values()
            if (exchange is None or ds.exchange == exchange)
            and (instrument is None or ds.symbol == instrument)
            and (stream_type is None or ds.stream_type == stream_type)
            and (wire_format is None or ds.wire_format == wire_format)
        ]


def tick_decimal(value: Decimal) -> str:
    """Exact decimal string without exponent notation (Decimal('1E-5') would print as 1E-5)."""
    return format(value, "f")
