"""A news-publish request nested too deep to decode (msgspec raises RecursionError, not a
DecodeError) is refused with a reason; it used to escape the handler: no reply, a traceback."""

from __future__ import annotations

from services.ingest_sitagri.app import SitagriIngestor

DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000


async def test_a_deeply_nested_publish_request_is_refused_with_a_reason() -> None:
    ing = SitagriIngestor(nats_url="nats://127.0.0.1:1", base_url="http://127.0.0.1:1", quotes=[], news_sources=[])
    for body in (DEEP_OBJECT, DEEP_ARRAY):
        reply = await ing.publish_article(body)
        assert not reply.ok and reply.error and "bad request" in reply.error
