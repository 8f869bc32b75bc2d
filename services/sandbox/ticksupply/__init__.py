"""TickSupply REST sandbox: the ``/v1`` API of api.ticksupply.com, served locally (default port 8702).

Catalog over binance/coinbase/kraken, subscriptions with spans, export jobs whose gzipped-CSV
artifacts (see :mod:`.exports` for files and columns) come from deterministic TickTapes, and
presigned artifact URLs served by the sandbox itself. Ground truth: :func:`expected_rows` and
``GET /_sandbox/ticksupply/rows``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from services.sandbox.common.base import SandboxSpec
from services.sandbox.common.faults import FaultInjector

from .api import error_body
from .catalog import Catalog, Datastream
from .exports import export_rows
from .routes import TickSupplyApi
from .schemas import STREAM_CATEGORY, compile_built_in
from .settings import TickSupplySettings


def build(settings: TickSupplySettings, faults: FaultInjector) -> tuple[Starlette, list[Route]]:
    api = TickSupplyApi(settings, faults)
    app = api.app()
    app.state.api = api  # tests reach the in-process state (store, catalog) through this
    app.state.background = []
    return app, api.admin()


def expected_rows(ds: Datastream, ranges: list[tuple[int, int]], schema: str = "raw") -> list[list[str]]:
    """Ground truth: the CSV data rows (all artifacts, in order) of an export covering ``ranges``.

    ``ranges`` are the [from, to) ns intervals the export covers: its [start_time, end_time)
    intersected with the subscription spans (see ``GET /_sandbox/ticksupply/rows?api_key=``).
    """
    return list(export_rows(ds, compile_built_in(STREAM_CATEGORY[ds.stream_type], schema), ranges))


SANDBOX = SandboxSpec(
    name="ticksupply",
    default_port=8702,
    settings_cls=TickSupplySettings,
    build=build,
    error_body=error_body,
    description="TickSupply REST API (/v1): catalog, subscriptions, exports, availability, billing, schemas",
)

__all__ = ["SANDBOX", "Catalog", "TickSupplySettings", "build", "expected_rows"]
