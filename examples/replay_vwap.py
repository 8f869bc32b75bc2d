"""A consumer that runs unchanged live and on a history playback: running VWAP per instrument.

Live::

    python examples/replay_vwap.py                          # md.trade.> as it happens

On a playback of the last hour at 10x (the prefix comes from ``marketbus replay start``, or pick
your own with ``--prefix replay.mytest``)::

    python examples/replay_vwap.py --prefix replay.mytest &
    marketbus replay start 'trade.*.*.*' --start -1h --speed 10x --prefix replay.mytest

The only difference is where it subscribes (``<prefix>.md.trade.>``): the messages are the same
bytes, so the same code computes the same numbers. It stops after ``--count`` trades, or at the
playback's end marker. It connects like the other examples: ``--nats-url`` / ``NATS_URL`` and
``NATS_NKEY_SEED_FILE``, else what ``make run`` wrote to ``.marketbus`` (``MARKETBUS_DATA_DIR``):
its URL and the ``consumer`` identity's seed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from decimal import Decimal
from typing import Any

import nats

from marketbus.contracts import codec, subjects
from marketbus.faststream import consumer_settings


class Vwap:
    """Running volume-weighted average price per (source, venue, symbol); one line per trade."""

    def __init__(self) -> None:
        self.notional: dict[tuple[str, str, str], Decimal] = {}
        self.volume: dict[tuple[str, str, str], Decimal] = {}

    def on_message(self, data: bytes) -> list[str]:
        lines = []
        for trade in codec.decode_events(data):  # single events and batch envelopes alike
            key = (trade.source, trade.venue, trade.symbol)
            self.notional[key] = self.notional.get(key, Decimal(0)) + trade.price * trade.size
            self.volume[key] = self.volume.get(key, Decimal(0)) + trade.size
            vwap = self.notional[key] / self.volume[key] if self.volume[key] else Decimal(0)
            lines.append(f"{trade.ts_event} {'.'.join(key)} {trade.price} x {trade.size} vwap={vwap:.6f}")
        return lines


async def consume(nc: Any, prefix: str | None = None, count: int | None = None, out: Any = print) -> None:
    """Print VWAP lines for trades on the live bus (``prefix=None``) or on a playback prefix."""
    vwap = Vwap()
    done = asyncio.Event()
    seen = 0

    async def on_trade(msg: Any) -> None:
        nonlocal seen
        for line in vwap.on_message(msg.data):
            out(line)
            seen += 1
        if count is not None and seen >= count:
            done.set()

    async def on_end(_msg: Any) -> None:
        done.set()

    live_filter = "md.trade.>"
    subs = [await nc.subscribe(subjects.playback_filter(prefix, live_filter) if prefix else live_filter, cb=on_trade)]
    if prefix:
        subs.append(await nc.subscribe(subjects.playback_end(prefix), cb=on_end))
    try:
        await done.wait()
    finally:
        for sub in subs:
            await sub.unsubscribe()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats-url", default=None,
                        help="default: NATS_URL, else the URL `make run` recorded in .marketbus/nats.url")
    parser.add_argument("--prefix", default=None, help="a playback prefix (replay.<session> or replay.<name>)")
    parser.add_argument("--count", type=int, default=None, help="stop after this many trades")
    args = parser.parse_args()
    # the URL and the credentials as every example finds them (NATS_URL / NATS_NKEY_SEED_FILE, else
    # what `make run` wrote to .marketbus: auth is on there, as the `consumer` identity)
    settings = consumer_settings({**os.environ, "NATS_URL": args.nats_url} if args.nats_url else None)
    nc = await nats.connect(**settings.connect_options("replay_vwap"))
    try:
        await consume(nc, args.prefix, args.count)
    finally:
        await nc.drain()


def run() -> int:
    """Ctrl-C stops it quietly (no traceback) with 130, the code of the marketbus CLI's Ctrl-C."""
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(run())
