"""``marketbus status``: the latest heartbeat of every service, read from the STATUS stream."""

from __future__ import annotations

import asyncio
import time

from nats.js.api import ConsumerConfig, DeliverPolicy

from marketbus.contracts import codec, subjects
from marketbus.contracts.status import ServiceHeartbeat

from .common import connect


async def fetch_heartbeats(url: str | None, max_age_s: float = 60.0) -> dict[str, ServiceHeartbeat]:
    nc = await connect(url)
    heartbeats: dict[str, ServiceHeartbeat] = {}
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            subjects.ALL_HEARTBEATS, ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT),
        )
        now = time.time_ns()
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except (asyncio.TimeoutError, TimeoutError):
                break
            hb = codec.decode(msg.data)
            if isinstance(hb, ServiceHeartbeat) and now - hb.ts < max_age_s * 1e9:
                heartbeats[f"{hb.service}/{hb.instance}"] = hb
            if msg.metadata.num_pending == 0:  # caught up; live heartbeats would never end the loop
                break
        await sub.unsubscribe()
    except Exception:  # noqa: BLE001 - no STATUS stream yet: nothing has reported
        pass
    finally:
        await nc.drain()
    return heartbeats
