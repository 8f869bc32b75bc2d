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


async def test_hostile_publish_requests_on_the_bus_get_a_reply_and_the_next_one_is_published(nats_url: str) -> None:
    """The same bodies (and garbage, truncated JSON, wrong types, a payload near the server's
    max_payload) sent on ``sitagri.news.publish`` through the bus, as a user would: each gets a
    refusal with a reason (the subscriber's decoder parsed the body as JSON before the handler:
    a deep one raised there, no reply, a traceback in the log) and a good request after them is
    published."""
    import msgspec
    import nats

    from marketbus.contracts import subjects
    from marketbus.contracts.jobs import PublishReply

    from .conftest import ingestor, sandbox

    nc = await nats.connect(nats_url)
    try:
        huge = b'{"source":"PRIVDEMO","title":"' + b"t" * (nc.max_payload - 4096) + b'"}'
        hostile = [DEEP_OBJECT, DEEP_ARRAY, b"", b"\xff\xfe", b'{"source":', b'{"source":5,"title":[]}', b"null",
                   huge]
        async with sandbox() as sb, ingestor(nats_url, sb) as ing:
            await ing.ready(30)
            for body in hostile:
                msg = await nc.request(subjects.SITAGRI_NEWS_PUBLISH, body, timeout=10)
                reply = msgspec.json.decode(msg.data, type=PublishReply)
                assert not reply.ok and reply.error, (body[:40], reply)
            good = await nc.request(subjects.SITAGRI_NEWS_PUBLISH, msgspec.json.encode(
                {"source": "PRIVDEMO", "title": "Wheat up", "lang": "EN", "content": "<p>up</p>"}), timeout=10)
            reply = msgspec.json.decode(good.data, type=PublishReply)
            assert reply.ok and reply.id, reply
    finally:
        await nc.close()
