"""Small helpers for tests."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` (sync or async) until truthy; fail with ``what`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def scrape(url: str | None) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A service's ``/metrics`` (``url`` its health/metrics URL), as {(sample name, labels): value}."""
    assert url is not None, "the service serves no HTTP"
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{url}/metrics")).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def per_book(samples: dict[Any, float], name: str, **labels: str) -> dict[tuple[str, str], float]:
    """The samples ``name`` with ``labels`` of a :func:`scrape`, by (venue, symbol)."""
    out = {}
    for (sample, sample_labels), value in samples.items():
        got = dict(sample_labels)
        if sample == name and all(got.get(k) == v for k, v in labels.items()):
            out[(got["venue"], got["symbol"])] = value
    return out
