"""JSON Schema for every event and the AsyncAPI document of the bus, generated from the code.

``python -m marketbus.contracts.schema docs/schemas`` (``make schemas``) writes
``<Type>.json`` per event type, ``events.json`` (all of them) and ``asyncapi.json``.
The AsyncAPI channels are built by FastStream from publishers declared below; FastStream's
schema generator speaks pydantic, so the message payloads are filled in with msgspec's schemas.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgspec

from . import jobs, market, orders, reference, replay, status
from .base import SCHEMA_VERSION
from .codec import ALL_TYPES, Batch

REF_TEMPLATE = "#/components/schemas/{name}"
DEFS_TEMPLATE = "#/$defs/{name}"

# (channel title, subject pattern, payload types, description)
CHANNELS: list[tuple[str, str, tuple[type, ...], str]] = [
    *[
        (f"md-{t.__struct_config__.tag}", f"md.{t.__struct_config__.tag}.{{source}}.{{venue}}.{{symbol}}", (t, Batch),
         f"{t.__doc__.strip().splitlines()[0] if t.__doc__ else t.__name__} Single events or batch envelopes.")
        for t in market.MARKET_TYPES
    ],
    *[
        (f"ref-{t.__struct_config__.tag}", f"ref.{t.__struct_config__.tag}.{{source}}.{{venue}}.{{symbol}}", (t, Batch),
         f"Reference data ({t.__name__}); the stream keeps the last value per subject.")
        for t in reference.REFERENCE_TYPES
    ],
    ("status-feed", "status.{service}.feed.{source}.{venue}.{symbol}", (status.FeedStatus,), "Feed state changes: connected, disconnected, gap, resynced."),
    ("status-heartbeat", "status.{service}.heartbeat", (status.ServiceHeartbeat,), "Every service, every few seconds."),
    ("dead-letters", "dlq.{service}.{source}", (status.DeadLetter,), "Payloads that could not be processed, with the reason."),
    ("order-commands", "orders.cmd.digitex.{market}", orders.COMMAND_TYPES, "Order commands (JetStream work queue; request/reply gives a CommandAck)."),
    ("order-events", "orders.evt.digitex.{market}.{client_id}", (orders.OrderEvent,), "Every state transition of an order, in order."),
    ("order-fills", "orders.fill.digitex.{market}", (orders.Fill,), "Fills from the exchange's trade history."),
    ("order-positions", "orders.position.digitex.{market}", (orders.Position,), "Positions."),
    ("order-balances", "orders.balance.digitex.{currency}", (orders.Balance,), "Balances."),
    ("order-control", "orders.ctl.digitex", (orders.RouterControl,), "Kill switch: halt / resume the order router."),
    ("replay", "replay.{source}", (jobs.ReplayRequest,), "Ask an ingestor to re-publish a range from its vendor (reply: ReplayReply)."),
    ("playback-start", "history.replay.start", (replay.PlaybackStart,), "Start a history playback session (reply: PlaybackSession)."),
    ("playback-control", "history.replay.{session}.control", (replay.PlaybackControl,), "Pause, resume, cancel a playback session (reply: PlaybackStatus)."),
    ("playback-status", "replay.{session}.status", (replay.PlaybackStatus,), "Playback progress: events sent, simulated time, lag."),
    ("playback-end", "replay.{session}.end", (replay.PlaybackEnd,), "The last message of a playback session."),
    ("history-query", "history.query", (jobs.HistoryQuery,), "Query stored history (replies: HistoryChunk)."),
    ("history-coverage", "history.coverage", (jobs.CoverageQuery,), "Which ranges are stored, and the reported gaps (reply: CoverageReply)."),
    ("export-create", "export.create", (jobs.ExportRequest,), "Create an export job (reply: ExportJob)."),
    ("export-status", "export.status.{job_id}", (jobs.ExportJob,), "Export job state and progress."),
]


def json_schemas(ref_template: str = REF_TEMPLATE) -> tuple[dict[str, Any], dict[str, Any]]:
    """(schema of each type by name, shared components)."""
    names = [t.__name__ for t in ALL_TYPES]
    schemas, components = msgspec.json.schema_components(ALL_TYPES, ref_template=ref_template)
    return dict(zip(names, schemas, strict=True)), components


def asyncapi_document() -> dict[str, Any]:
    from faststream.nats import NatsBroker
    from faststream.specification import AsyncAPI

    broker = NatsBroker("nats://127.0.0.1:4222")
    for title, subject, _types, description in CHANNELS:
        broker.publisher(subject, title=title, description=description)
    doc = AsyncAPI(
        broker, title="marketbus", version=f"schema-{SCHEMA_VERSION}",
        description="Normalized market data, reference data, status, orders and jobs on NATS. "
        "JSON messages (msgspec); headers: Nats-Msg-Id (event id), Marketbus-Schema (version), Marketbus-Type.",
    ).to_specification().to_jsonable()
    _, components = json_schemas()
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for title, _subject, types, _description in CHANNELS:
        refs = [{"$ref": REF_TEMPLATE.format(name=t.__name__)} for t in types]
        schemas[f"{title}:Message:Payload"] = refs[0] if len(refs) == 1 else {"oneOf": refs}
    schemas.update(components)
    return doc


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for event_type in ALL_TYPES:  # standalone documents, each with only the $defs it needs
        (schema,), defs = msgspec.json.schema_components([event_type], ref_template=DEFS_TEMPLATE)
        path = out_dir / f"{event_type.__name__}.json"
        path.write_bytes(msgspec.json.format(msgspec.json.encode({**schema, "$defs": defs}), indent=2))
        written.append(path)
    by_name, components = json_schemas(DEFS_TEMPLATE)
    events = out_dir / "events.json"
    events.write_bytes(msgspec.json.format(msgspec.json.encode({"oneOf": list(by_name.values()), "$defs": components}), indent=2))
    asyncapi = out_dir / "asyncapi.json"
    asyncapi.write_bytes(msgspec.json.format(msgspec.json.encode(asyncapi_document()), indent=2))
    return [*written, events, asyncapi]


if __name__ == "__main__":
    paths = write(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas"))
    print(f"wrote {len(paths)} files")
