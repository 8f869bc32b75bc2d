"""What the TickSupply ingestor's parts (:mod:`.session`, :mod:`.catalog`, :mod:`.live`,
:mod:`.backfill`) may use of the ingestor that owns them: :class:`TickSupplyHost`, a narrow view,
so no part imports :mod:`.app` (which imports them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from marketbus.contracts.base import MarketEvent
from marketbus.runtime.backoff import Backoff
from marketbus.runtime.ingest import IngestHost
from marketbus.vendor.frames import FrameGuard

from .client import TickSupplyClient
from .normalize import DatastreamRef
from .progress import ProgressStore
from .settings import TickSupplySettings


class ExportRunner(Protocol):
    """What the backfill part asks of the export part (:class:`~.live.TickSupplyExports`)."""

    exports_created: int

    async def wait_export(self, export_id: str) -> dict[str, Any]: ...
    async def download_and_publish(self, ds: DatastreamRef, export_id: str, *, replay: bool, skip: set[str],
                                   on_artifact: Any = None, batch_salt: str | None = None) -> int: ...


class TickSupplyHost(IngestHost, Protocol):
    """The members of :class:`~.app.TickSupplyIngestor` its parts use."""

    @property
    def settings(self) -> TickSupplySettings: ...
    @property
    def api(self) -> TickSupplyClient: ...
    @property
    def store(self) -> ProgressStore: ...
    @property
    def frames(self) -> FrameGuard: ...
    @property
    def datastreams(self) -> dict[int, DatastreamRef]: ...
    @property
    def subscriptions(self) -> dict[int, dict[str, Any]]: ...
    def subscription_targets(self) -> dict[int, tuple[DatastreamRef, str]]: ...
    @property
    def exports(self) -> ExportRunner: ...

    async def guarded(self, what: str, coro_factory: Callable[[], Awaitable[Any]], backoff: Backoff) -> bool: ...
    async def feed_status(self, state: Any, ds: DatastreamRef | None = None, **kw: Any) -> None: ...
    async def publish_artifact(self, ds: DatastreamRef, data: bytes, *, channel: str = "artifact",
                               replay: bool = False, batch_salt: str | None = None) -> int: ...
    async def acked(self, futures: list[Any]) -> None: ...
    # The batch path publishes through the publisher itself and records its metrics this way.
    def _account(self, event: MarketEvent, n: int = 1) -> None: ...
