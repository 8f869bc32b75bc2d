"""News: synthetic articles (random-access, like a tape) plus articles published through /edit.

Synthetic article ``i`` of a source is published at ``ORIGIN + i * interval + jitter`` with id
``FIRST_ID + i``; anything can be computed from (seed, source, i), so search, fetch-by-id and live
pushes agree. Published articles get per-source ids from 1 and live in memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..common.tape import stable_hash, unit

ORIGIN = 1_577_836_800  # 2020-01-01
FIRST_ID = 50_000
SEARCH_LIMIT = 200  # articles per search reply (newest first)
SCAN_LIMIT = 20_000  # synthetic articles a keyword search may scan

PRODUCTS = ["wheat", "corn", "rapeseed", "soybeans", "barley", "sugar", "salmon"]
PLACES = ["Rouen", "Chicago", "Black Sea", "Brazil", "Argentina", "Ukraine", "Australia"]
MOVES = ["rise", "fall", "steady", "rebound", "slip"]
TAGS = re.compile(r"<[^>]+>")


@dataclass
class NewsBook:
    seed: int
    interval: float
    synthetic: dict[str, list[str]]  # source code -> languages of its synthetic articles
    metadata_sources: set[str]
    published: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)  # source -> id -> article

    # --- synthetic ------------------------------------------------------------------------
    def _pub_date(self, source: str, i: int) -> int:
        jitter = unit(self.seed, stable_hash(source), i) * self.interval * 0.5
        return ORIGIN + int(i * self.interval + jitter)

    def _index_before(self, source: str, ts: int) -> int:
        """Largest i with pub_date(i) <= ts."""
        i = int((ts - ORIGIN) // self.interval)
        while i >= 0 and self._pub_date(source, i) > ts:
            i -= 1
        return i

    def synthetic_article(self, source: str, i: int, content: bool = True) -> dict[str, Any]:
        langs = self.synthetic[source]
        h = stable_hash(self.seed, source, i)
        product, place, move = PRODUCTS[h % 7], PLACES[(h >> 8) % 7], MOVES[(h >> 16) % 5]
        lang = langs[(h >> 24) % len(langs)]
        pub = self._pub_date(source, i)
        title = f"{product.capitalize()} prices {move} on {place} news"
        body = (f"<p>{product.capitalize()} quotations {move} as traders weigh supply from {place}.</p>"
                f"<p>Volumes were {'light' if h & 1 else 'heavy'} on report #{i}.</p>")
        art: dict[str, Any] = {"code": "newsArticle", "source": f"/news/sources/{source}", "id": FIRST_ID + i,
                               "copyright": f"{source} ©", "lang": lang, "publicationDate": pub,
                               "modificationDate": pub, "title": title,
                               "snippet": f"<p>{product.capitalize()}: {place}</p>", "words": words(body)}
        if content:
            art["content"] = body
        if source in self.metadata_sources:
            art["metadata"] = {"dayTendency": (h >> 32) % 12, "shortTermTendency": (h >> 40) % 12}
        return art

    def due(self, source: str, after: int, now: int) -> list[dict[str, Any]]:
        """Synthetic articles published in (after, now]: what listeners get pushed."""
        if source not in self.synthetic:
            return []
        lo, hi = self._index_before(source, after), self._index_before(source, now)
        return [self.synthetic_article(source, i) for i in range(lo + 1, hi + 1)]

    # --- published ------------------------------------------------------------------------
    def publish(self, source: str, body: dict[str, Any]) -> dict[str, Any]:
        book = self.published.setdefault(source, {})
        art_id = len(book) + 1
        content = str(body.get("content", ""))
        art = {"code": "newsArticle", "source": f"/news/sources/{source}", "id": art_id,
               "copyright": str(body.get("copyright", "")), "lang": str(body["lang"]),
               "publicationDate": body["publicationDate"], "modificationDate": body.get(
                   "modificationDate", body["publicationDate"]),
               "title": str(body["title"]), "snippet": str(body.get("snippet", "")), "content": content,
               "words": words(content)}
        book[art_id] = art
        return art

    # --- queries --------------------------------------------------------------------------
    def article(self, source: str, art_id: str, now: int) -> dict[str, Any] | None:
        if not art_id.isdigit():
            return None
        n = int(art_id)
        if n in self.published.get(source, {}):
            return self.published[source][n]
        if source in self.synthetic and n >= FIRST_ID:
            i = n - FIRST_ID
            if self._pub_date(source, i) <= now:  # articles from the future do not exist yet
                return self.synthetic_article(source, i)
        return None

    def search(self, source: str, start: int, end: int, langs: list[str] | None, keyword: str | None,
               now: int) -> list[dict[str, Any]]:
        lo, hi = min(start, end), min(max(start, end), now)
        kw = keyword.lower() if keyword else None

        def keep(art: dict[str, Any]) -> bool:
            if not lo <= art["publicationDate"] <= hi or (langs and art["lang"] not in langs):
                return False
            return kw is None or any(kw in str(art.get(f, "")).lower() for f in ("title", "snippet", "content"))

        found = [a for a in self.published.get(source, {}).values() if keep(a)]
        if source in self.synthetic and hi >= ORIGIN:
            i = self._index_before(source, hi)
            scanned = 0
            while i >= 0 and len(found) < SEARCH_LIMIT and scanned < SCAN_LIMIT:
                art = self.synthetic_article(source, i)
                if art["publicationDate"] < lo:
                    break
                if keep(art):
                    found.append(art)
                i, scanned = i - 1, scanned + 1
        found.sort(key=lambda a: a["publicationDate"], reverse=True)
        # search replies may omit the content: fetch the article for it
        return [{k: v for k, v in a.items() if k != "content"} for a in found[:SEARCH_LIMIT]]


def words(html: str) -> int:
    return len(TAGS.sub(" ", html).split())
