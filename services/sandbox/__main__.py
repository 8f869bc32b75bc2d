"""``python -m services.sandbox [finx|ticksupply|digitex|sitagri|all]``: serve sandboxes."""

from __future__ import annotations

import asyncio
import signal
import sys

from marketbus.runtime.loop import run as run_loop

from .common.base import SandboxRunner
from .registry import SANDBOXES, available, load_spec


async def serve(names: list[str]) -> None:
    runners = [SandboxRunner(load_spec(name)) for name in names]
    for runner in runners:
        await runner.start()
        print(f"sandbox {runner.spec.name:<11} {runner.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in runners:
        await runner.stop()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    which = args[0] if args else "all"
    names = available() if which == "all" else [which]
    if which != "all" and which not in SANDBOXES:
        raise SystemExit(f"unknown sandbox {which!r}; choose from {', '.join(SANDBOXES)} or all")
    run_loop(serve(names))


if __name__ == "__main__":
    main()
