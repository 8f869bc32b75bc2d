"""Test helpers shared by the ingestor tests: read what is stored in a JetStream stream."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError, ServiceUnavailableError

from marketbus.contracts import codec


async def read_stream(js: Any, subject: str, limit: int = 2_000_000) -> list[Any]:
    """Every message stored on ``subject`` (wildcards allowed), decoded, in stream order."""
    for _ in range(20):  # a cluster that just lost a node may answer with a timeout for a while
        try:
            info = await js.find_stream_name_by_subject(subject)
            break
        except NotFoundError:
            return []
        except Exception:
            await asyncio.sleep(0.5)
    else:
        return []
    sub = await js.pull_subscribe(subject, stream=info, config=ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE))  # no ack-pending cap
    out: list[Any] = []
    unavailable = 0
    try:
        while len(out) < limit:
            try:
                msgs = await sub.fetch(2000, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            except ServiceUnavailableError:  # a cluster electing a leader answers 503 for a while
                unavailable += 1
                if unavailable > 40:
                    raise
                await asyncio.sleep(0.25)
                continue
            for msg in msgs:
                out.append(codec.decode(msg.data))
            if msgs and msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


def events_of(messages: list[Any]) -> list[Any]:
    return [e for m in messages for e in codec.iter_events(m)]


def duplicates(events: list[Any]) -> list[str]:
    return [i for i, n in Counter(e.id for e in events).items() if n > 1]
