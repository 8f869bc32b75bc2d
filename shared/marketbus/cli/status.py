"""``marketbus status``: the latest heartbeat of every service, read from the STATUS stream."""

from __future__ import annotations

import sys
import time

from nats.js.api import ConsumerConfig, DeliverPolicy
from rich.console import Console

from marketbus.contracts import codec, subjects
from marketbus.contracts.status import ServiceHeartbeat
from marketbus.runtime.ordered import ordered_subscribe

from .common import connect
from .output import json_line
from .statusview import render


async def fetch_heartbeats(url: str | None, max_age_s: float = 60.0) -> dict[str, ServiceHeartbeat]:
    nc = await connect(url)
    heartbeats: dict[str, ServiceHeartbeat] = {}
    try:
        js = nc.jetstream()
        sub = await ordered_subscribe(js, subjects.ALL_HEARTBEATS,
                                      config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT))
        now = time.time_ns()
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except TimeoutError:
                break
            hb = codec.decode(msg.data)
            if (isinstance(hb, ServiceHeartbeat) and subjects.published_by(msg.subject, hb.service)
                    and now - hb.ts < max_age_s * 1e9):
                heartbeats[f"{hb.service}/{hb.instance}"] = hb
            if msg.metadata.num_pending == 0:  # caught up; live heartbeats would never end the loop
                break
        await sub.unsubscribe()
    except Exception:
        pass
    finally:
        await nc.drain()
    return heartbeats


def print_status(heartbeats: dict[str, ServiceHeartbeat], as_json: bool, console: Console | None = None) -> None:
    """The table (at its natural width when piped: nothing cut), or one heartbeat per JSON line."""
    if as_json:
        for key in sorted(heartbeats):
            hb = heartbeats[key]
            json_line(hb, subjects.heartbeat(hb.service))
        return
    if console is None:
        # piped or redirected: no terminal width to fit, so render everything at its natural width
        console = Console() if sys.stdout.isatty() else Console(width=10_000, no_color=True, highlight=False)
    console.print(render(heartbeats), crop=False)
