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
from functools import partial
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


ROOTS = ("/market/sources", "/market/units", "/market/geoSites", "/market/incoterms", "/market/prodcats",
         "/news/sources")
BATCH = 250  # references per batch request (the vendor's cap)


async def crawl(fetch: BatchFetch, ts: int) -> CrawlResult:
    """The whole tree, in the four steps of the module docstring."""
    return await _Crawl(fetch, ts).run()


class _Crawl:
    """One crawl: fetch steps (roots, class lists, children, texts), then the events."""

    def __init__(self, fetch: BatchFetch, ts: int) -> None:
        self.fetch = fetch
        self.ts = ts
        self.out = CrawlResult()
        self.roots: dict[str, Any] = {}
        self.sources: list[dict[str, Any]] = []
        self.items: dict[str, tuple[str, str, dict[str, Any]]] = {}  # item ref -> (source, kind, item)
        self.child_items: dict[str, Any] = {}
        self.texts = Texts({})
        self.order_book: dict[str, bool] = {}  # source code -> has order books

    async def run(self) -> CrawlResult:
        await self.fetch_roots()
        await self.fetch_class_lists()
        await self.fetch_children()
        await self.fetch_texts()
        self.build_reference()
        self.build_classes()
        return self.out

    async def get(self, refs: Sequence[str]) -> list[Any]:
        """Replies to ``refs``, in order, ``BATCH`` references per request."""
        replies: list[Any] = []
        for i in range(0, len(refs), BATCH):
            chunk = refs[i:i + BATCH]
            self.out.requests += 1
            self.out.references += len(chunk)
            replies.extend(await self.fetch(chunk))
        return replies

    def problem(self, ref: str, payload: Any, reason: str) -> None:
        self.out.problems.append((ref, payload, reason))

    # --- 1..4: fetch ----------------------------------------------------------------------------
    async def fetch_roots(self) -> None:
        self.roots = dict(zip(ROOTS, await self.get(ROOTS), strict=True))
        for ref, reply in self.roots.items():
            if _is_error(reply) or not isinstance(reply.get("data"), list):
                self.problem(ref, reply, "not a list reply")
                self.roots[ref] = {"data": []}
        self.sources = [s for s in self.roots["/market/sources"]["data"] if isinstance(s, dict) and s.get("code")]

    async def fetch_class_lists(self) -> None:
        list_refs = [f"/market/sources/{s['code']}/{kind}" for s in self.sources for kind in KINDS if s.get(kind)]
        lists = dict(zip(list_refs, await self.get(list_refs) if list_refs else [], strict=True))
        for lref, reply in lists.items():
            _, _, _, src, kind = lref.split("/")
            if _is_error(reply) or not isinstance(reply.get("data"), list):
                self.problem(lref, reply, "not a list reply")
                continue
            for item in reply["data"]:
                if not isinstance(item, dict) or not item.get("code"):
                    self.problem(lref, item, "item without a code")
                    continue
                self.items[f"/market/sources/{src}/{kind}/{item['code']}"] = (src, kind, item)

    async def fetch_children(self) -> None:
        """Deliveries of futures and series of options (currency terms come embedded)."""
        wanted = {"future": "deliveries", "option": "series"}
        children = [r for _, kind, item in self.items.values() for r in item.get(wanted.get(kind, ""), [])]
        self.child_items = dict(zip(children, await self.get(children), strict=True))

    async def fetch_texts(self) -> None:
        named: list[dict[str, Any]] = [*self.sources, *(it for _, _, it in self.items.values())]
        for key in ROOTS[1:]:
            named.extend(x for x in self.roots[key]["data"] if isinstance(x, dict))
        l10n_refs = sorted({ref for item in named for k in ("name", "desc")
                            if isinstance(ref := item.get(k), str) and ref.startswith("/l10n/")})
        texts: dict[str, str] = {}
        for ref, reply in zip(l10n_refs, await self.get(l10n_refs), strict=True):
            if isinstance(reply, dict) and isinstance(reply.get("text"), str):
                texts[ref] = reply["text"]
            else:
                self.problem(ref, reply, "l10n reference without text")
        self.texts = Texts(texts)

    # --- events ---------------------------------------------------------------------------------
    def add(self, make: Callable[[], Any], ref: str, payload: Any) -> None:
        """One normalizer call; what it cannot read is a problem (dead-lettered by the app)."""
        try:
            made = make()
        except (Malformed, KeyError, TypeError, ValueError, msgspec.ValidationError) as exc:
            self.problem(ref, payload, f"{type(exc).__name__}: {exc}")
            return
        self.out.events.extend(made if isinstance(made, list) else [made])

    def quote(self, ref: str, kind: str, currency: str | None = None) -> None:
        try:
            venue, symbol = normalize.quote_key(ref)
        except Malformed as exc:
            self.problem(ref, None, str(exc))
            return
        src = ref.split("/")[3]
        self.out.quotes[ref] = QuoteMeta(ref, kind, venue, symbol, self.order_book.get(src, False), currency)

    def build_reference(self) -> None:
        t, ts, data = self.texts, self.ts, {k: v["data"] for k, v in self.roots.items()}
        self.order_book = {s["code"]: bool(s.get("orderBook")) for s in self.sources}
        for s in self.sources:
            self.add(partial(normalize.market_venue, s, t, ts), f"/market/sources/{s['code']}", s)
        makers: dict[str, Callable[..., Any]] = {
            "/news/sources": normalize.news_venue, "/market/units": normalize.unit,
            "/market/geoSites": normalize.geo_site, "/market/incoterms": normalize.incoterm,
            "/market/prodcats": normalize.product_category}
        for root, make in makers.items():
            for x in data[root]:
                self.add(partial(make, x, t, ts), root, x)

    def build_classes(self) -> None:
        for ref, (_src, kind, item) in self.items.items():
            if kind == "future":
                self.future(ref, item)
            elif kind == "option":
                self.option(ref, item)
            elif kind == "currency":
                self.add(partial(normalize.currency_class, ref, item, self.ts), ref, item)
                terms = [f"{ref}/terms/{x['code']}" for x in item.get("terms") or [] if isinstance(x, dict)]
                for q in terms:
                    self.quote(q, "currency", item.get("to"))
                self.out.members[ref] = terms
            else:
                self.add(partial(normalize.simple_quote, ref, kind, item, self.texts, self.ts), ref, item)
                self.quote(ref, kind, item.get("currency"))

    def future(self, ref: str, item: dict[str, Any]) -> None:
        self.add(lambda: normalize.future_class(ref, item, self.texts, self.ts), ref, item)
        deliveries = [dref for dref, _ in self.children(item, "deliveries", "delivery", normalize.delivery)]
        for dref in deliveries:
            self.quote(dref, "future", item.get("currency"))
        self.out.members[ref] = deliveries

    def option(self, ref: str, item: dict[str, Any]) -> None:
        self.add(lambda: normalize.option_class(ref, item, self.texts, self.ts), ref, item)
        series = self.children(item, "series", "option series", normalize.option_series)
        for sref, ser in series:
            strikes = [normalize.strike_ref(sref, s["code"]) for s in ser.get("strikes", []) if isinstance(s, dict)]
            for q in strikes:
                self.quote(q, "option", item.get("currency"))
            self.out.members[sref] = strikes
        self.out.members[ref] = [sref for sref, _ in series]

    def children(self, item: dict[str, Any], key: str, what: str,
                 make: Callable[..., Any]) -> list[tuple[str, dict[str, Any]]]:
        """The fetched children (deliveries, option series) of a class item, each normalized with
        ``make(ref, child, item, texts, ts)``; a missing one is a problem."""
        found: list[tuple[str, dict[str, Any]]] = []
        for cref in item.get(key, []):
            child: Any = self.child_items.get(cref)
            if _is_error(child):
                self.problem(cref, child, f"{what} not found")
                continue
            self.add(partial(make, cref, child, item, self.texts, self.ts), cref, child)
            found.append((cref, child))
        return found
