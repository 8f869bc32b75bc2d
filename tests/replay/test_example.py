"""examples/replay_vwap.py run once live and once on a playback of the same period: the same output."""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from pathlib import Path
from typing import Any

from marketbus.clients import PlaybackClient

from .conftest import MS, T0, Stack, trade, unique_symbol


def load_example() -> Any:
    path = Path(__file__).resolve().parents[2] / "examples" / "replay_vwap.py"
    spec = importlib.util.spec_from_file_location("replay_vwap", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_vwap_example_prints_the_same_live_and_on_a_playback(stack: Stack) -> None:
    example = load_example()
    sym = unique_symbol("V")
    events = [trade(sym, i, T0 + i * 3 * MS) for i in range(90)]
    live: list[str] = []
    consumer = asyncio.create_task(example.consume(stack.nc, None, len(events), live.append))
    await asyncio.sleep(0.1)  # subscribed
    await stack.publisher.publish_group(events[:30])  # live: single events...
    await stack.publisher.publish_batch(events[30:60])  # ...a batch envelope (a backfill)...
    await stack.publisher.publish_group(events[60:])  # ...and single events again
    await stack.publisher.flush()
    await asyncio.wait_for(consumer, 10)
    await stack.stored(sym, len(events))

    replayed: list[str] = []
    prefix = f"replay.vwap{uuid.uuid4().hex[:6]}"
    consumer = asyncio.create_task(example.consume(stack.nc, prefix, None, replayed.append))  # ends at the end marker
    await asyncio.sleep(0.1)
    await PlaybackClient(stack.nc).start(f"trade.digitex.*.{sym}", T0, T0 + 10**12, speed="10x", prefix=prefix)
    await asyncio.wait_for(consumer, 10)

    mine = [line for line in live if sym in line]
    assert len(mine) == 90 and replayed == mine
