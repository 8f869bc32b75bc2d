"""The AgriMarket reference tree: sources, classes, deliveries, quotes, units, l10n.

Everything is built from static tables plus the current date (futures deliveries are the next
contracts after "today"). Items are plain dicts in the vendor's JSON shape, keyed by their
reference; quotes also get a :class:`QuoteInfo` that the price engine uses.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

MONTH_LETTERS = "FGHJKMNQUVXZ"  # January .. December
N_CLASSIC = 8  # classic deliveries listed per future class
N_CONTINUOUS = 4  # continuous codes C01..C04
LISTING_DAYS = 730  # a delivery trades for two years before its last trading date


def delivery_code(cls: str, month: int, year: int) -> str:
    """``EMA`` + March 2016 -> ``EMAH16``."""
    return f"{cls}{MONTH_LETTERS[month - 1]}{year % 100:02d}"


def continuous_code(cls: str, index: int) -> str:
    return f"{cls}C{index:02d}"


def term_code(term_type: str, days: int) -> str:
    """Currency term code from its type and duration (vendor doc rules; a month is 30 days)."""
    fixed = {"SPOT": "SP", "OVERNIGHT": "ON", "SPOTNEXT": "SN", "TOMORROWNEXT": "TN"}
    if term_type in fixed:
        return fixed[term_type]
    if 7 <= days < 30:
        return f"{days // 7}W"
    if 30 <= days < 360:
        return f"{days // 30}M"
    if 360 <= days <= 1800:
        return f"{days // 360}Y" if days % 360 == 0 else f"{days // 30}M"
    raise ValueError(f"no term code for {term_type} {days} days")


def unix(year: int, month: int, day: int, hour: int = 12) -> int:
    return calendar.timegm((year, month, day, hour, 0, 0))


@dataclass(frozen=True)
class FutureSpec:
    source: str
    code: str
    months: str  # month letters of the listed maturities
    base: str
    tick: str
    currency: str
    unit: str
    size: int
    product: str  # "CAT/PRODUCT"
    text: str
    ltd_day: int  # day of the maturity month of the last trading date


@dataclass(frozen=True)
class OptionSpec:
    source: str
    code: str
    future: str
    base: str  # premium level
    tick: str
    strike_step: int
    text: str


FUTURES = [
    FutureSpec("EURONEX", "EMA", "HMQX", "190", "0.25", "EUR", "TON", 50, "CORN/EUFDCRN", "Corn", 5),
    FutureSpec("EURONEX", "EBM", "HKUZ", "225", "0.25", "EUR", "TON", 50, "WHEAT/EUMWHT", "Milling wheat", 10),
    FutureSpec("EURONEX", "ECO", "GKQX", "465", "0.25", "EUR", "TON", 50, "RAPESEED/EURAPE", "Rapeseed", 1),
    FutureSpec("CBOT", "ZC", "HKNUZ", "4.45", "0.0025", "USD", "USWSBS", 5000, "CORN/USCORN", "Corn", 14),
    FutureSpec("CBOT", "ZW", "HKNUZ", "5.65", "0.0025", "USD", "USWSBS", 5000, "WHEAT/USSRW", "SRW wheat", 14),
    FutureSpec("CBOT", "ZS", "FHKNQUX", "11.20", "0.0025", "USD", "USWSBS", 5000, "SOYBEAN/USSOY", "Soybeans", 14),
]
OPTIONS = [
    OptionSpec("EURONEX", "OMA", "EMA", "6", "0.05", 5, "Corn options"),
    OptionSpec("EURONEX", "OBM", "EBM", "7", "0.05", 5, "Milling wheat options"),
    OptionSpec("CBOT", "OZC", "ZC", "0.15", "0.00125", 0, "Corn options"),
]
N_SERIES = 4
N_STRIKES = 4  # strikes per side of the money (x2 for CALL/PUT)
SINGLES = [("RATES", "EONIA01M", "3.65", "EONIA 1 month"), ("RATES", "EURIB03M", "3.81", "Euribor 3 months"),
           ("RATES", "EURIB06M", "3.74", "Euribor 6 months"), ("RATES", "SOFR01M", "4.31", "SOFR 1 month")]
# (code, product, geoSite, incoterm, base, text)
CASH = [
    ("FRA18EXWAUB", "ALFALFA/ALFA18", "FRAUB", "EXW", "205", "Alfalfa (18%) EXW Aube"),
    ("FRA23EXWAUB", "ALFALFA/ALFA23", "FRAUB", "EXW", "228", "Alfalfa (23%) EXW Aube"),
    ("FRBLEFOBROU", "WHEAT/EUMWHT", "FRROU", "FOB", "218", "Milling wheat FOB Rouen"),
    ("FRMAIFOBBOR", "CORN/EUFDCRN", "FRBOR", "FOB", "187", "Corn FOB Bordeaux"),
    ("FRCOLFOBROU", "RAPESEED/EURAPE", "FRROU", "FOB", "455", "Rapeseed FOB Rouen"),
    ("BEBLECIFANT", "WHEAT/EUMWHT", "BEAN", "CIF", "231", "Milling wheat CIF Antwerp"),
]
INDEXES = [("SISALMONI", "NOK", "DAP", "NONO", "81.5", "Salmon index (weekly)"),
           ("SISALMONF", "EUR", "CFR", "FRBOR", "7.35", "Salmon index France (weekly)")]
FOREX = [("EURUSD", "1.0850"), ("GBPUSD", "1.2700"), ("EURGBP", "0.8550"), ("USDBRL", "5.0500"),
         ("EURNOK", "11.5200"), ("USDCAD", "1.3600")]
NO_TERMS = [("NAC", "ARS")]  # pairs that cannot be converted: no `terms`
TERMS = [("SPOT", 0), ("OVERNIGHT", 1), ("TOMORROWNEXT", 2), ("SPOTNEXT", 3), ("FORWARD", 7), ("FORWARD", 14),
         ("FORWARD", 30), ("FORWARD", 60), ("FORWARD", 90), ("FORWARD", 180), ("FORWARD", 360),
         ("FORWARD", 540), ("FORWARD", 720)]
UNITS = [  # code, symbol, type, factor, offset, name
    ("TON", "t", "MASS", "1000", "0", "Metric ton"), ("KILO", "kg", "MASS", "1", "0", "Kilogram"),
    ("USWSBS", "bsh", "MASS", "27.2155", "0", "US wheat and soybeans bushel"),
    ("USCBS", "bsh", "MASS", "25.4012", "0", "US corn bushel"), ("LBS", "lb", "MASS", "0.45359237", "0", "Pound"),
    ("CELSIUS", "°C", "TEMPERATURE", "1", "0", "Degree Celsius"),
    ("FAHRENHEIT", "°F", "TEMPERATURE", "0.5555556", "-17.7777778", "Degree Fahrenheit"),
]
GEOSITES = [("BEAN", "BE", "4.40197", "51.2292", "Antwerp"), ("FRAUB", "FR", "4.0744", "48.2973", "Aube"),
            ("FRROU", "FR", "1.0993", "49.4431", "Rouen"), ("FRBOR", "FR", "-0.5792", "44.8378", "Bordeaux"),
            ("NONO", "NO", "10.7522", "59.9139", "Norway"), ("USCHI", "US", "-87.6298", "41.8781", "Chicago")]
INCOTERMS = [("CFR", "Cost and freight"), ("CIF", "Cost, insurance and freight"), ("DAP", "Delivered at place"),
             ("EXW", "Ex works"), ("FOB", "Free on board")]
PRODCATS = {"ALFALFA": ["ALFA18", "ALFA23"], "CORN": ["EUFDCRN", "USCORN"], "WHEAT": ["EUMWHT", "USSRW"],
            "RAPESEED": ["EURAPE"], "SOYBEAN": ["USSOY"], "SALMON": ["INDEXSALMON", "INDEXSALMONF"],
            "FINANCE": ["EONIA", "EURIBOR", "SOFR"]}
SOURCES = {  # code: (text, rights, orderBook, autoCurrency)
    "EURONEX": ("Euronext", "REALTIME", True, False), "CBOT": ("Chicago Board of Trade", "DELAYED", False, False),
    "SITCASHFR": ("Sitagri cash prices France", "REALTIME", False, False),
    "SITSISALMONI": ("Sitagri salmon indexes", "REALTIME", False, False),
    "RATES": ("Interest Rates", "REALTIME", False, False), "FOREX": ("Foreign exchange", "REALTIME", False, True),
}
NEWS_SOURCES = {  # code: (text, langs, metadata)
    "AFP": ("Agence France-Presse", ["FR", "EN", "ES"], False),
    "SITUSDA": ("Sitagri USDA reports", ["FR", "EN", "ES"], True),
    "PRIVDEMO": ("Private demo news", ["FR", "EN"], False),
}
HISTORY_RESOLUTIONS = ["TICK", "MINUTE", "HOUR", "DAY", "WEEK", "MONTH"]


@dataclass
class QuoteInfo:
    """What the price engine needs to know about one quote."""

    ref: str
    kind: str  # future | option | single | cash | index | currency
    source: str
    tape_key: str
    base: Decimal
    tick: Decimal
    quality: str
    order_book: bool
    listed_from: int | None = None  # unix s; deliveries only trade in [listed_from, expires]
    expires: int | None = None
    continuous: tuple[str, int] | None = None  # (future class ref, index) of a continuous code
    max_lots: int = 40

    @property
    def price_code(self) -> str:
        return {"cash": "cashPrice", "index": "indexPrice"}.get(self.kind, "marketPrice")


@dataclass
class FutureClass:
    spec: FutureSpec
    ref: str
    quality: str
    order_book: bool

    def delivery(self, year: int, month: int) -> QuoteInfo:
        code = delivery_code(self.spec.code, month, year)
        ltd = unix(year, month, self.spec.ltd_day)
        # deferred contracts trade a little higher (carry), deterministically from the maturity
        carry = Decimal(1) + Decimal((year * 12 + month) % 24) / Decimal(400)
        base = (Decimal(self.spec.base) * carry / Decimal(self.spec.tick)).to_integral() * Decimal(self.spec.tick)
        return QuoteInfo(f"{self.ref}/deliveries/{code}", "future", self.spec.source, f"{self.spec.source}/{code}",
                         base, Decimal(self.spec.tick), self.quality, self.order_book,
                         listed_from=ltd - LISTING_DAYS * 86400, expires=ltd)

    def deliveries_after(self, ts: int, count: int) -> list[QuoteInfo]:
        """The next ``count`` deliveries whose last trading date is after ``ts``."""
        day = dt.datetime.fromtimestamp(ts, dt.UTC)
        year, month = day.year, day.month
        out: list[QuoteInfo] = []
        while len(out) < count:
            if MONTH_LETTERS[month - 1] in self.spec.months:
                info = self.delivery(year, month)
                if info.expires is not None and info.expires > ts:
                    out.append(info)
            month += 1
            if month > 12:
                year, month = year + 1, 1
        return out

    def expired(self, year: int, month: int, now: int) -> QuoteInfo | None:
        if not 1 <= month <= 12 or MONTH_LETTERS[month - 1] not in self.spec.months:
            return None
        info = self.delivery(year, month)
        return info if info.expires is not None and info.expires <= now else None


@dataclass
class Tree:
    items: dict[str, Any] = field(default_factory=dict)  # reference -> item
    lists: dict[str, Any] = field(default_factory=dict)  # reference -> {"code", "data"}
    l10n: dict[str, str] = field(default_factory=dict)  # "/l10n/ns/KEY" -> text
    quotes: dict[str, QuoteInfo] = field(default_factory=dict)
    future_classes: dict[str, FutureClass] = field(default_factory=dict)  # class ref -> class
    news_sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # code -> item

    def text(self, ns: str, key: str, text: str) -> str:
        ref = f"/l10n/{ns}/{key}"
        self.l10n[ref] = text
        return ref

    def named(self, ns: str, key: str, text: str, desc: str | None = None) -> dict[str, str]:
        return {"name": self.text(ns, key, text), "desc": self.text(ns, f"{key}_DESC", desc or text)}

    def add(self, ref: str, item: dict[str, Any]) -> dict[str, Any]:
        self.items[ref] = item
        return item


def build_tree(now: int) -> Tree:
    """The whole reference tree as of ``now`` (unix seconds)."""
    tree = Tree()
    _build_static(tree)
    source_items = {}
    for code, (text, rights, book, auto) in SOURCES.items():
        source_items[code] = tree.add(f"/market/sources/{code}", {
            "code": code, **tree.named("market", f"{code}_SRC", text), "rights": rights,
            "autoCurrency": auto, "orderBook": book})
    _build_futures(tree, source_items, now)
    _build_options(tree, source_items, now)
    _build_simple(tree, source_items)
    _build_forex(tree, source_items["FOREX"])
    tree.lists["/market/sources"] = {"code": "sources", "data": list(source_items.values())}
    for code, item in source_items.items():
        for kind in ("future", "option", "single", "cash", "index", "currency"):
            if kind in item:
                tree.lists[f"/market/sources/{code}/{kind}"] = {
                    "code": kind, "data": [tree.items[ref] for ref in item[kind]]}
    return tree


def _build_static(tree: Tree) -> None:
    units = [tree.add(f"/market/units/{c}", {"code": c, **tree.named("generic", f"UNIT_{c}", n), "symbol": s,
                                              "type": t, "convertionFactor": Decimal(f),  # "convertion" sic
                                              "convertionOffset": Decimal(o)})
             for c, s, t, f, o, n in UNITS]
    tree.lists["/market/units"] = {"code": "units", "data": units}
    geo = [tree.add(f"/market/geoSites/{c}", {"code": c, **tree.named("generic", f"GEOSITE_{c}", n), "country": k,
                                               "gpsLong": Decimal(lo), "gpsLat": Decimal(la)})
           for c, k, lo, la, n in GEOSITES]
    tree.lists["/market/geoSites"] = {"code": "geoSites", "data": geo}
    inco = [tree.add(f"/market/incoterms/{c}", {"code": c, **tree.named("generic", f"INCOTERM_{c}", n)})
            for c, n in INCOTERMS]
    tree.lists["/market/incoterms"] = {"code": "incoterms", "data": inco}
    cats = []
    for cat, products in PRODCATS.items():
        refs = []
        for prod in products:
            ref = f"/market/prodcats/{cat}/products/{prod}"
            tree.add(ref, {"code": prod, **tree.named("generic", f"PRODUCT_{prod}", prod.title()),
                           "prodcat": f"/market/prodcats/{cat}"})
            refs.append(ref)
        cats.append(tree.add(f"/market/prodcats/{cat}", {
            "code": cat, **tree.named("generic", f"PRODCAT_{cat}", cat.title()), "products": refs}))
    tree.lists["/market/prodcats"] = {"code": "prodcats", "data": cats}
    news = []
    for code, (text, langs, _meta) in NEWS_SOURCES.items():
        item = {"code": code, **tree.named("news", f"{code}_SRC", text), "bypassFilters": False,
                "rights": "WRITE" if code == "PRIVDEMO" else "SEARCH", "langs": langs}
        tree.news_sources[code] = tree.add(f"/news/sources/{code}", item)
        news.append(item)
    tree.lists["/news/sources"] = {"code": "sources", "data": news}
    tree.text("generic", "JSON_HISTORY_RESOLUTIONS", '["TICK","MINUTE","HOUR","DAY","WEEK","MONTH"]')


def _product(cat_prod: str) -> str:
    cat, prod = cat_prod.split("/")
    return f"/market/prodcats/{cat}/products/{prod}"


def _build_futures(tree: Tree, sources: dict[str, dict[str, Any]], now: int) -> None:
    for spec in FUTURES:
        src = sources[spec.source]
        ref = f"/market/sources/{spec.source}/future/{spec.code}"
        fc = FutureClass(spec, ref, src["rights"], src["orderBook"])
        tree.future_classes[ref] = fc
        deliveries = []
        for i in range(1, N_CONTINUOUS + 1):
            code = continuous_code(spec.code, i)
            dref = f"{ref}/deliveries/{code}"
            # a continuous delivery's item and prices follow its current underlying (see prices.py)
            tree.quotes[dref] = QuoteInfo(dref, "future", spec.source, "", Decimal(spec.base), Decimal(spec.tick),
                                          fc.quality, fc.order_book, continuous=(ref, i))
            deliveries.append(dref)
        for info in fc.deliveries_after(now, N_CLASSIC):
            tree.quotes[info.ref] = info
            tree.add(info.ref, delivery_item(fc, info))
            deliveries.append(info.ref)
        unit_link = "{@:/market/units/" + spec.unit + "," + ("tons" if spec.unit == "TON" else "bushels") + "}"
        tree.add(ref, {"code": spec.code, "marketSource": src_ref(spec.source),
                       **tree.named("market", f"{spec.source}_FUTURE_{spec.code}", f"{spec.text} future",
                                    f"{spec.text} future, {spec.size:,} {unit_link}"),
                       "product": _product(spec.product), "currency": spec.currency,
                       "contractUnit": f"/market/units/{spec.unit}", "contractSize": spec.size,
                       "deliveries": deliveries})
        src.setdefault("future", []).append(ref)


def src_ref(code: str) -> str:
    return f"/market/sources/{code}"


def delivery_item(fc: FutureClass, info: QuoteInfo, code: str | None = None) -> dict[str, Any]:
    assert info.expires is not None
    day = dt.datetime.fromtimestamp(info.expires, dt.UTC)
    return {"code": code or info.ref.rsplit("/", 1)[1], "marketSource": src_ref(fc.spec.source),
            "futureClass": fc.ref, "lastTradingDate": info.expires, "maturityMonth": day.month,
            "maturityYear": day.year}


def _build_options(tree: Tree, sources: dict[str, dict[str, Any]], now: int) -> None:
    for spec in OPTIONS:
        src = sources[spec.source]
        fc = tree.future_classes[f"/market/sources/{spec.source}/future/{spec.future}"]
        ref = f"/market/sources/{spec.source}/option/{spec.code}"
        series_refs = []
        for underlying in fc.deliveries_after(now + 40 * 86400, N_SERIES):
            assert underlying.expires is not None
            day = dt.datetime.fromtimestamp(underlying.expires, dt.UTC)
            prev = day.replace(day=1) - dt.timedelta(days=1)
            ser_code = delivery_code(spec.code, day.month, day.year)
            ser_ref = f"{ref}/series/{ser_code}"
            step = Decimal(spec.strike_step) if spec.strike_step else Decimal("0.10")
            atm = (underlying.base / step).to_integral() * step
            strike_values = [atm + step * (i - N_STRIKES // 2) for i in range(N_STRIKES)]
            strikes = []
            for value in strike_values:
                for kind in ("CALL", "PUT"):
                    label = _strike_label(value)
                    s_code = f"{ser_code}{kind[0]}{label}"
                    s_ref = f"{ser_ref}/strikes/{s_code}"
                    strike = {"code": s_code, "marketSource": src_ref(spec.source), "optionSeries": ser_ref,
                              "optionType": kind, "strike": _num(value)}
                    tree.add(s_ref, strike)
                    strikes.append(strike)
                    tree.quotes[s_ref] = QuoteInfo(
                        s_ref, "option", spec.source, f"{spec.source}/{s_code}", Decimal(spec.base),
                        Decimal(spec.tick), fc.quality, fc.order_book,
                        listed_from=underlying.listed_from, expires=unix(prev.year, prev.month, 15))
            tree.add(ser_ref, {"code": ser_code, "marketSource": src_ref(spec.source), "optionClass": ref,
                               "underlyingFutureQuote": underlying.ref, "maturityMonth": day.month,
                               "maturityYear": day.year, "lastTradingDate": unix(prev.year, prev.month, 15),
                               "minStrikePrice": _num(min(strike_values)), "maxStrikePrice": _num(max(strike_values)),
                               "strikes": strikes})
            series_refs.append(ser_ref)
        tree.add(ref, {"code": spec.code, **tree.named("market", f"{spec.source}_OPTION_{spec.code}", spec.text),
                       "marketSource": src_ref(spec.source), "product": _product(fc.spec.product),
                       "currency": fc.spec.currency, "underlyingFutureClass": fc.ref, "series": series_refs})
        src.setdefault("option", []).append(ref)


def _strike_label(value: Decimal) -> str:
    """Strike code suffix: ``250`` or, for fractional strikes, the value in hundredths."""
    return str(int(value)) if value == value.to_integral() else str(int(value * 100))


def _num(value: Decimal) -> Decimal | int:
    return int(value) if value == value.to_integral() else value.normalize()


def _build_simple(tree: Tree, sources: dict[str, dict[str, Any]]) -> None:
    for source, code, base, text in SINGLES:
        ref = f"{src_ref(source)}/single/{code}"
        tree.add(ref, {"code": code, **tree.named("market", f"{source}_SINGLE_{code}", text),
                       "marketSource": src_ref(source), "product": "/market/prodcats/FINANCE/products/"
                       + ("EONIA" if code.startswith("EONIA") else "EURIBOR" if code.startswith("EURIB") else "SOFR")})
        tree.quotes[ref] = QuoteInfo(ref, "single", source, f"{source}/{code}", Decimal(base), Decimal("0.001"),
                                     "REALTIME", False)
        sources[source].setdefault("single", []).append(ref)
    for code, product, geo, inco, base, text in CASH:
        ref = f"{src_ref('SITCASHFR')}/cash/{code}"
        tree.add(ref, {"code": code, **tree.named("market", f"SITCASHFR_CASH_{code}", text),
                       "marketSource": src_ref("SITCASHFR"), "product": _product(product), "currency": "EUR",
                       "contractUnit": "/market/units/TON", "contractSize": 1,
                       "geoSite": f"/market/geoSites/{geo}", "incoterm": f"/market/incoterms/{inco}"})
        tree.quotes[ref] = QuoteInfo(ref, "cash", "SITCASHFR", f"SITCASHFR/{code}", Decimal(base), Decimal("0.5"),
                                     "REALTIME", False)
        sources["SITCASHFR"].setdefault("cash", []).append(ref)
    for code, currency, inco, geo, base, text in INDEXES:
        ref = f"{src_ref('SITSISALMONI')}/index/{code}"
        product = "INDEXSALMON" if code == "SISALMONI" else "INDEXSALMONF"
        tree.add(ref, {"code": code, "marketSource": src_ref("SITSISALMONI"), "editable": True,
                       **tree.named("market", f"SITSISALMONI_INDEX_{code}", text), "timezone": "Europe/Paris",
                       "product": f"/market/prodcats/SALMON/products/{product}", "currency": currency,
                       "volumeMin": 0, "contractUnit": "/market/units/KILO", "contractSize": 1,
                       "incoterm": f"/market/incoterms/{inco}", "geoSite": f"/market/geoSites/{geo}",
                       "frequency": "weekly"})
        tree.quotes[ref] = QuoteInfo(ref, "index", "SITSISALMONI", f"SITSISALMONI/{code}", Decimal(base),
                                     Decimal("0.01"), "REALTIME", False)
        sources["SITSISALMONI"].setdefault("index", []).append(ref)


def _build_forex(tree: Tree, source: dict[str, Any]) -> None:
    refs = []
    for pair, rate in FOREX:
        ref = f"{src_ref('FOREX')}/currency/{pair}"
        terms = []
        for term_type, days in TERMS:
            code = pair + term_code(term_type, days)
            t_ref = f"{ref}/terms/{code}"
            term = {"code": code, "marketSource": src_ref("FOREX"), "currencyClass": ref,
                    "termType": term_type, "termDuration": days}
            tree.add(t_ref, term)
            terms.append(term)
            # forward points: the further the term, the further the rate (deterministic)
            base = Decimal(rate) * (Decimal(1) + Decimal(days) / Decimal(100_000))
            tree.quotes[t_ref] = QuoteInfo(t_ref, "currency", "FOREX", f"FOREX/{code}",
                                           base.quantize(Decimal("0.0001")), Decimal("0.0001"), "REALTIME", False,
                                           max_lots=1000)
        tree.add(ref, {"code": pair, "marketSource": src_ref("FOREX"), "from": pair[:3], "to": pair[3:],
                       "terms": terms})
        refs.append(ref)
    for frm, to in NO_TERMS:
        ref = f"{src_ref('FOREX')}/currency/{frm}{to}"
        tree.add(ref, {"code": frm + to, "marketSource": src_ref("FOREX"), "from": frm, "to": to})
        refs.append(ref)
    source["currency"] = refs
