"""Reference data events: subjects ``ref.<kind>.<source>.<venue>.<symbol>`` (last value kept).

``ts_event`` is the as-of time of the reference data. Sizes (tick, lot, contract) are
:data:`Size` (>= 0), a unit's factor a :data:`Price` (> 0: it divides), strikes, offsets and
coordinates :data:`Amount` (signed: options on spreads have negative strikes). Codes and names are
bounded :data:`Label` texts; descriptions :data:`Text`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from .base import MarketEvent
from .invariants import Amount, Int64, Label, Nanos, Price, Size, Text

InstrumentType = Literal[
    "spot", "perpetual", "future", "continuous_future", "option", "fx", "fx_forward",
    "cash", "index", "single", "other",
]


class Instrument(MarketEvent, frozen=True, kw_only=True, tag="instrument"):
    """A tradable or quotable instrument of any class."""

    instrument_type: InstrumentType
    vendor_symbol: Label  # the vendor's own code, as the vendor spells it (e.g. "BTC:USD")
    name: Label | None = None
    description: Text | None = None
    base: Label | None = None
    quote: Label | None = None
    currency: Label | None = None
    tick_size: Size | None = None
    lot_size: Size | None = None
    contract_size: Size | None = None
    contract_unit: Label | None = None
    # futures and options
    product: Label | None = None
    instrument_class: Label | None = None  # e.g. EMA (future class), OMA (option class)
    expiry_ts: Nanos | None = None  # last trading date, ns
    maturity_year: Int64 | None = None
    maturity_month: Int64 | None = None
    continuous_index: Int64 | None = None  # continuous futures: 1 = front
    underlying: Label | None = None
    option_series: Label | None = None
    option_type: Literal["call", "put"] | None = None
    strike: Amount | None = None
    # FX
    fx_term_type: Label | None = None
    fx_term_days: Int64 | None = None
    # cash / physical
    geo_site: Label | None = None
    incoterm: Label | None = None
    vendor_id: Label | None = None  # e.g. a uuid, a market id, a datastream id
    vendor_ref: Label | None = None  # e.g. the Sitagri reference path
    attributes: dict[str, str] = {}


class InstrumentClass(MarketEvent, frozen=True, kw_only=True, tag="instrument_class"):
    """A family of instruments: future class, option class, option series, FX class."""

    class_type: Literal["future_class", "option_class", "option_series", "fx_class", "datastream", "other"]
    vendor_symbol: Label
    name: Label | None = None
    description: Text | None = None
    currency: Label | None = None
    product: Label | None = None
    members: list[Label] = []  # vendor symbols of the members (deliveries, series, strikes, terms)
    underlying: Label | None = None
    vendor_ref: Label | None = None
    attributes: dict[str, str] = {}


class Venue(MarketEvent, frozen=True, kw_only=True, tag="venue"):
    """An exchange / market source. ``symbol`` is the venue code too."""

    name: Label | None = None
    description: Text | None = None
    attributes: dict[str, str] = {}


class Currency(MarketEvent, frozen=True, kw_only=True, tag="currency"):
    code: Label
    name: Label | None = None
    scale: Int64 | None = None
    vendor_id: Label | None = None


class Unit(MarketEvent, frozen=True, kw_only=True, tag="unit"):
    """A unit of measure with its conversion to the base unit of its type (see units.convert)."""

    code: Label
    name: Label | None = None
    unit_symbol: Label | None = None
    unit_type: Label | None = None  # MASS, VOLUME, ...
    factor: Price  # base units per unit
    offset: Amount = Decimal(0)


class GeoSite(MarketEvent, frozen=True, kw_only=True, tag="geo_site"):
    code: Label
    name: Label | None = None
    description: Text | None = None
    country: Label | None = None
    longitude: Amount | None = None
    latitude: Amount | None = None


class Incoterm(MarketEvent, frozen=True, kw_only=True, tag="incoterm"):
    code: Label
    name: Label | None = None
    description: Text | None = None


class ProductCategory(MarketEvent, frozen=True, kw_only=True, tag="product_category"):
    code: Label
    name: Label | None = None
    description: Text | None = None
    products: list[Label] = []


REFERENCE_TYPES = (Instrument, InstrumentClass, Venue, Currency, Unit, GeoSite, Incoterm, ProductCategory)
