"""What every sandbox shares: settings, the admin API, the server with reboot support.

A vendor sandbox package exposes ``SANDBOX = SandboxSpec(...)``; :class:`SandboxRunner` wraps
its Starlette app with the fault middleware and the ``/_sandbox`` admin API and serves it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from marketbus.runtime.http import AsgiServer
from marketbus.runtime.settings import Settings
from marketbus.runtime.tasks import cancel_and_wait

from .faults import ErrorBody, FaultInjector, FaultMiddleware, ScheduledFault


class SandboxSettings(Settings, kw_only=True):
    """Common knobs; each vendor subclass sets ``env_prefix`` and adds its own."""

    env_prefix: ClassVar[str] = "MARKETBUS_SANDBOX_"
    host: str = "127.0.0.1"
    port: int | None = None  # None = the sandbox's documented default port; 0 = any free port
    seed: int = 42
    rate: float = 100.0  # synthetic ticks per second per instrument
    fault_schedule: list[ScheduledFault] = []


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response encoded with msgspec (Decimals as strings, no float drift)."""
    return Response(msgspec.json.encode(data), status_code=status, headers=headers, media_type="application/json")


@dataclass
class SandboxSpec:
    name: str
    default_port: int
    settings_cls: type[SandboxSettings]
    # (settings, faults) -> (vendor Starlette app, admin routes of the vendor, e.g. ground truth)
    build: Callable[[Any, FaultInjector], tuple[Starlette, list[Route]]]
    error_body: ErrorBody
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def admin_routes(faults: FaultInjector, vendor_routes: list[Route]) -> list[Route]:
    async def get_faults(_: Request) -> Response:
        return json_response(faults.state())

    async def set_faults(request: Request) -> Response:
        body = await request.body()
        changes = msgspec.json.decode(body) if body else {}
        try:
            faults.set(**changes)
        except (msgspec.ValidationError, TypeError) as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response(faults.state())

    async def reset_faults(_: Request) -> Response:
        faults.reset()
        return json_response(faults.state())

    async def drop(_: Request) -> Response:
        # Respond first; the admin request itself must not be one of the dropped sockets' victims.
        asyncio.get_running_loop().call_later(0.01, lambda: asyncio.ensure_future(faults.drop_all()))
        return json_response({"dropping": True})

    async def reboot(request: Request) -> Response:
        seconds = float(request.query_params.get("seconds", "5"))
        asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(faults.reboot(seconds)))
        return json_response({"rebooting_for_s": seconds})

    async def healthz(_: Request) -> Response:
        return json_response({"ok": True})

    return [
        Route("/healthz", healthz),
        Route("/faults", get_faults, methods=["GET"]),
        Route("/faults", set_faults, methods=["POST"]),
        Route("/faults/reset", reset_faults, methods=["POST"]),
        Route("/drop", drop, methods=["POST"]),
        Route("/reboot", reboot, methods=["POST"]),
        *vendor_routes,
    ]


class SandboxRunner:
    """Serves one sandbox; a reboot stops the listener (connections refused) and restarts it."""

    def __init__(self, spec: SandboxSpec, settings: SandboxSettings | None = None, **overrides: Any) -> None:
        from marketbus.runtime.settings import load_settings

        self.spec = spec
        self.settings = settings or load_settings(spec.settings_cls, **overrides)
        self.faults = FaultInjector(self.settings.seed)
        self.faults.reboot_handler = self._reboot
        vendor_app, vendor_admin = spec.build(self.settings, self.faults)
        self.vendor_app = vendor_app
        app = Starlette(
            routes=[Mount("/_sandbox", routes=admin_routes(self.faults, vendor_admin)), Mount("/", app=vendor_app)]
        )
        self.app = FaultMiddleware(app, self.faults, spec.error_body)
        self.server: AsgiServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def ws_url(self) -> str:
        assert self.server is not None
        return self.server.ws_url

    async def start(self) -> SandboxRunner:
        port = self.spec.default_port if self.settings.port is None else self.settings.port
        self.server = AsgiServer(self.app, self.settings.host, port, lifespan="off")
        await self.server.start()
        # Background generators a vendor app declares in app.state.background (async callables).
        for job in getattr(self.vendor_app.state, "background", []):
            self._tasks.append(asyncio.create_task(job()))
        if self.settings.fault_schedule:
            self._tasks.append(asyncio.create_task(self.faults.run_schedule(self.settings.fault_schedule)))
        return self

    async def _reboot(self, seconds: float) -> None:
        assert self.server is not None
        port = self.server.port
        await self.faults.drop_all()
        await self.server.stop()
        await asyncio.sleep(seconds)
        self.server = AsgiServer(self.app, self.settings.host, port, lifespan="off")
        await self.server.start()

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        if self.server:
            await self.server.stop()

    async def __aenter__(self) -> SandboxRunner:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
