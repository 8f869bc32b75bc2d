"""The in-process uvicorn server leaves the process's signal handlers alone (uvicorn's
``Server.serve`` replaces the SIGINT/SIGTERM handlers while it runs; a service's graceful stop
must not wait for its health server to stop first)."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from marketbus.runtime.http import AsgiServer


def _app() -> Starlette:
    async def ok(_request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", ok)])


async def test_a_running_server_keeps_the_process_signal_handlers() -> None:
    loop = asyncio.get_running_loop()
    # the event loop is the session's: a test before this one may have left its own SIGTERM
    # handler on it, which the remove_signal_handler below would take away from under "before"
    loop.remove_signal_handler(signal.SIGTERM)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    got: list[int] = []
    loop.add_signal_handler(signal.SIGTERM, got.append, int(signal.SIGTERM))
    try:
        async with AsgiServer(_app()) as server:
            async with httpx.AsyncClient() as http:
                assert (await http.get(server.url)).text == "ok"
            assert signal.getsignal(signal.SIGINT) == before[signal.SIGINT]
            os.kill(os.getpid(), signal.SIGTERM)  # the owner's handler gets it, the server serves on
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.01)
            assert got == [signal.SIGTERM]
            async with httpx.AsyncClient() as http:
                assert (await http.get(server.url)).text == "ok"
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
