"""Reference data events: subjects ``ref.<kind>.<source>.<venue>.<symbol>`` (last value kept).

``ts_event`` is the as-of time of the reference data.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from .base import MarketEvent

InstrumentType = Literal[
    "spot", "perpetual", "future", "continuous_future", "option", "fx", "fx_forward",
    "cash", "index", "single", "other",
]


class Instrument(MarketEvent, frozen=True, kw_only=True, tag="instrument"):
    """A tradable or quotable instrument of any class."""

    instrument_type: InstrumentType
    vendor_symbol: str  # the vendor's own code, as the vendor spells it (e.g. "BTC:USD")
    name: str | None = None
    description: str | None = None
    base: str | None = None
    quote: str | None = None
    currency: str | None = None
    tick_size: Decimal | None = None
    lot_size: Decimal | None = None
    contract_size: Decimal | None = None
    contract_unit: str | None = None
    # futures and options
    product: str | None = None
    instrument_class: str | None = None  # e.g. EMA (future class), OMA (option class)
    expiry_ts: int | None = None  # last trading date, ns
    maturity_year: int | None = None
    maturity_month: int | None = None
    continuous_index: int | None = None  # continuous futures: 1 = front
    underlying: str | None = None
    option_series: str | None = None
    option_type: Literal["call", "put"] | None = None
    strike: Decimal | None = None
    # FX
    fx_term_type: str | None = None
    fx_term_days: int | None = None
    # cash / physical
    geo_site: str | None = None
    incoterm: str | None = None
    vendor_id: str | None = None  # e.g. a uuid, a market id, a datastream id
    vendor_ref: str | None = None  # e.g. the Sitagri reference path
    attributes: dict[str, str] = {}


class InstrumentClass(MarketEvent, frozen=True, kw_only=True, tag="instrument_class"):
    """A family of instruments: future class, option class, option series, FX class."""

    class_type: Literal["future_class", "option_class", "option_series", "fx_class", "datastream", "other"]
    vendor_symbol: str
    name: str | None = None
    description: str | None = None
    currency: str | None = None
    product: str | None = None
    members: list[str] = []  # vendor symbols of the members (deliveries, series, strikes, terms)
    underlying: str | None = None
    vendor_ref: str | None = None
    attributes: dict[str, str] = {}


class Venue(MarketEvent, frozen=True, kw_only=True, tag="venue"):
    """An exchange / market source. ``symbol`` is the venue code too."""

    name: str | None = None
    description: str | None = None
    attributes: dict[str, str] = {}


class Currency(MarketEvent, frozen=True, kw_only=True, tag="currency"):
    code: str
    name: str | None = None
    scale: int | None = None
    vendor_id: str | None = None


class Unit(MarketEvent, frozen=True, kw_only=True, tag="unit"):
    """A unit of measure with its conversion to the base unit of its type (see units.convert)."""

    code: str
    name: str | None = None
    unit_symbol: str | None = None
    unit_type: str | None = None  # MASS, VOLUME, ...
    factor: Decimal  # base units per unit
    offset: Decimal = Decimal(0)


class GeoSite(MarketEvent, frozen=True, kw_only=True, tag="geo_site"):
    code: str
    name: str | None = None
    description: str | None = None
    country: str | None = None
    longitude: Decimal | None = None
    latitude: Decimal | None = None


class Incoterm(MarketEvent, frozen=True, kw_only=True, tag="incoterm"):
    code: str
    name: str | None = None
    description: str | None = None


class ProductCategory(MarketEvent, frozen=True, kw_only=True, tag="product_category"):
    code: str
    name: str | None = None
    description: str | None = None
    products: list[str] = []


REFERENCE_TYPES = (Instrument, InstrumentClass, Venue, Currency, Unit, GeoSite, Incoterm, ProductCategory)
