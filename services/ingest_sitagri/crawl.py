"""The reference tree crawl, with batch requests (<= batch_size references each).

1. one batch: ``/market/sources``, ``/market/units``, ``/market/geoSites``, ``/market/incoterms``,
   ``/market/prodcats``, ``/news/sources``;
2. one batch: every ``/market/sources/{SRC}/{TYPE}`` list the sources name (future, option,
   single, cash, index, currency classes with their items);
3. batches of every delivery (classic and continuous) and option series (strikes embedded);
   currency terms come embedded in their class;
4. batches of every l10n reference (``name``/``desc``) met on the way.

The result: reference events (Venue, InstrumentClass, Instrument, Unit, GeoSite, Incoterm,
ProductCategory) and a quote index (reference -> kind, venue, symbol) for the live side.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from marketbus.contracts.base import MarketEvent

from . import normalize
from .normalize import Malformed, Texts

BatchFetch = Callable[[Sequence[str]], Awaitable[list[Any]]]
KINDS = ("future", "option", "single", "cash", "index", "currency")


@dataclass
class QuoteMeta:
    ref: str
    kind: str  # future | option | single | cash | index | currency
    venue: str
    symbol: str
    order_book: bool = False
    currency: str | None = None


@dataclass
class CrawlResult:
    events: list[MarketEvent] = field(default_factory=list)
    quotes: dict[str, QuoteMeta] = field(default_factory=dict)  # quote ref -> meta
    members: dict[str, list[str]] = field(default_factory=dict)  # class/series/pair ref -> quote refs
    problems: list[tuple[str, Any, str]] = field(default_factory=list)  # (reference, payload, reason)
    requests: int = 0
    references: int = 0

    def by_symbol(self) -> dict[tuple[str, str], QuoteMeta]:
        return {(q.venue, q.symbol): q for q in self.quotes.values()}

    def expand(self, refs: Sequence[str]) -> list[str]:
        """Quote references of configured references: a quote is itself, a class (future or
        option class, option series, currency pair) is every member quote."""
        out: list[str] = []
        for ref in refs:
            ref = ref.rstrip("/")
            if ref in self.quotes:
                out.append(ref)
            elif ref in self.members:
                out.extend(self.expand(self.members[ref]))
            else:
                self.problems.append((ref, None, "unknown quote or class reference"))
        return list(dict.fromkeys(out))


def _is_error(obj: Any) -> bool:
    return not isinstance(obj, dict) or obj.get("code") == "error"


async def crawl(fetch: BatchFetch, ts: int) -> CrawlResult:
    out = CrawlResult()

    async def get(refs: Sequence[str]) -> list[Any]:
        out.requests += 1
        out.references += len(refs)
        return await fetch(refs)

    top = ["/market/sources", "/market/units", "/market/geoSites", "/market/incoterms", "/market/prodcats",
           "/news/sources"]
    replies = dict(zip(top, await get(top), strict=True))
    for ref, reply in replies.items():
        if _is_error(reply) or not isinstance(reply.get("data"), list):
            out.problems.append((ref, reply, "not a list reply"))
            replies[ref] = {"data": []}
    sources = [s for s in replies["/market/sources"]["data"] if isinstance(s, dict) and s.get("code")]

    # 2. the lists of every source
    list_refs = [f"/market/sources/{s['code']}/{kind}" for s in sources for kind in KINDS if s.get(kind)]
    lists = dict(zip(list_refs, await get(list_refs) if list_refs else [], strict=True))
    items: dict[str, tuple[str, str, dict[str, Any]]] = {}  # item ref -> (source, kind, item)
    for lref, reply in lists.items():
        _, _, _, src, kind = lref.split("/")
        if _is_error(reply) or not isinstance(reply.get("data"), list):
            out.problems.append((lref, reply, "not a list reply"))
            continue
        for item in reply["data"]:
            if not isinstance(item, dict) or not item.get("code"):
                out.problems.append((lref, item, "item without a code"))
                continue
            items[f"/market/sources/{src}/{kind}/{item['code']}"] = (src, kind, item)

    # 3. deliveries and option series
    children = [r for ref, (_, kind, item) in items.items()
                for r in (item.get("deliveries", []) if kind == "future" else item.get("series", []) if kind == "option" else [])]
    child_items: dict[str, Any] = {}
    for i in range(0, len(children), 250):
        chunk = children[i:i + 250]
        child_items.update(zip(chunk, await get(chunk), strict=True))

    # 4. l10n
    named: list[dict[str, Any]] = [*sources, *(it for _, _, it in items.values())]
    for key in ("/market/units", "/market/geoSites", "/market/incoterms", "/market/prodcats", "/news/sources"):
        named.extend(x for x in replies[key]["data"] if isinstance(x, dict))
    l10n_refs = sorted({ref for item in named for k in ("name", "desc")
                        if isinstance(ref := item.get(k), str) and ref.startswith("/l10n/")})
    texts: dict[str, str] = {}
    for i in range(0, len(l10n_refs), 250):
        chunk = l10n_refs[i:i + 250]
        for ref, reply in zip(chunk, await get(chunk), strict=True):
            if isinstance(reply, dict) and isinstance(reply.get("text"), str):
                texts[ref] = reply["text"]
            else:
                out.problems.append((ref, reply, "l10n reference without text"))
    t = Texts(texts)

    def add(make: Callable[[], Any], ref: str, payload: Any) -> None:
        try:
            made = make()
        except (Malformed, KeyError, TypeError, ValueError, msgspec.ValidationError) as exc:
            out.problems.append((ref, payload, f"{type(exc).__name__}: {exc}"))
            return
        out.events.extend(made if isinstance(made, list) else [made])

    order_book = {s["code"]: bool(s.get("orderBook")) for s in sources}
    for s in sources:
        add(lambda s=s: normalize.market_venue(s, t, ts), f"/market/sources/{s['code']}", s)
    for s in replies["/news/sources"]["data"]:
        add(lambda s=s: normalize.news_venue(s, t, ts), "/news/sources", s)
    for u in replies["/market/units"]["data"]:
        add(lambda u=u: normalize.unit(u, t, ts), "/market/units", u)
    for g in replies["/market/geoSites"]["data"]:
        add(lambda g=g: normalize.geo_site(g, t, ts), "/market/geoSites", g)
    for x in replies["/market/incoterms"]["data"]:
        add(lambda x=x: normalize.incoterm(x, t, ts), "/market/incoterms", x)
    for c in replies["/market/prodcats"]["data"]:
        add(lambda c=c: normalize.product_category(c, t, ts), "/market/prodcats", c)

    def quote(ref: str, kind: str, currency: str | None = None) -> None:
        try:
            venue, symbol = normalize.quote_key(ref)
        except Malformed as exc:
            out.problems.append((ref, None, str(exc)))
            return
        src = ref.split("/")[3]
        out.quotes[ref] = QuoteMeta(ref, kind, venue, symbol, order_book.get(src, False), currency)

    for ref, (src, kind, item) in items.items():
        if kind == "future":
            add(lambda r=ref, i=item: normalize.future_class(r, i, t, ts), ref, item)
            members = []
            for dref in item.get("deliveries", []):
                d = child_items.get(dref)
                if _is_error(d):
                    out.problems.append((dref, d, "delivery not found"))
                    continue
                add(lambda r=dref, d=d, c=item: normalize.delivery(r, d, c, t, ts), dref, d)
                quote(dref, "future", item.get("currency"))
                members.append(dref)
            out.members[ref] = members
        elif kind == "option":
            add(lambda r=ref, i=item: normalize.option_class(r, i, t, ts), ref, item)
            series = []
            for sref in item.get("series", []):
                ser = child_items.get(sref)
                if _is_error(ser):
                    out.problems.append((sref, ser, "option series not found"))
                    continue
                add(lambda r=sref, s=ser, c=item: normalize.option_series(r, s, c, t, ts), sref, ser)
                strikes = [normalize.strike_ref(sref, s["code"]) for s in ser.get("strikes", []) if isinstance(s, dict)]
                for q in strikes:
                    quote(q, "option", item.get("currency"))
                out.members[sref] = strikes
                series.append(sref)
            out.members[ref] = series
        elif kind == "currency":
            add(lambda r=ref, i=item: normalize.currency_class(r, i, ts), ref, item)
            terms = [f"{ref}/terms/{x['code']}" for x in item.get("terms") or [] if isinstance(x, dict)]
            for q in terms:
                quote(q, "currency", item.get("to"))
            out.members[ref] = terms
        else:
            add(lambda r=ref, k=kind, i=item: normalize.simple_quote(r, k, i, t, ts), ref, item)
            quote(ref, kind, item.get("currency"))
    return out
