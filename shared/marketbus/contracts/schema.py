"""JSON Schema for every event and the AsyncAPI document of the bus, generated from the code.

``python -m marketbus.contracts.schema docs/schemas`` (``make schemas``) writes
``<Type>.json`` per event type, ``events.json`` (all of them) and ``asyncapi.json``.
The AsyncAPI 3 document is built from :data:`CHANNELS` (every subject, what marketbus does on it,
and the replies of request/reply subjects) with msgspec's schemas of the contracts; the official
parser (``@asyncapi/parser``, tools/asyncapi) accepts it.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from . import feeds, jobs, market, orders, reference, replay, status
from .base import SCHEMA_VERSION
from .codec import ALL_TYPES, HEADER_MSG_ID, HEADER_REPLY_TO, HEADER_SCHEMA, HEADER_TYPE, Batch

REF_TEMPLATE = "#/components/schemas/{name}"
DEFS_TEMPLATE = "#/$defs/{name}"

@dataclass(frozen=True)
class Channel:
    """One subject pattern of the bus, seen from marketbus (its services as one application).

    ``action`` is what marketbus does on it: ``send`` (it publishes; you subscribe) or
    ``receive`` (it subscribes; you publish). ``reply`` lists the reply types of a request/reply
    subject; ``reply_header`` names the header carrying the reply subject when it is not the
    NATS reply subject (commands on a JetStream work queue).
    """

    name: str
    address: str
    messages: tuple[Any, ...]
    description: str
    action: Literal["send", "receive"] = "send"
    reply: tuple[Any, ...] = ()
    reply_header: str | None = None


def _first_line(t: type) -> str:
    return t.__doc__.strip().splitlines()[0] if t.__doc__ else t.__name__


# Payloads that are not contracts of their own (plain JSON the export orchestrator speaks)
JOB_REF = "JobRef"
ERROR_REPLY = "ErrorReply"
EXPORT_LIST = "ExportList"
EMPTY = "Empty"

CHANNELS: list[Channel] = [
    *[
        Channel(f"md-{t.__struct_config__.tag}", f"md.{t.__struct_config__.tag}.{{source}}.{{venue}}.{{symbol}}",
                (t, Batch), f"{_first_line(t)} Single events or batch envelopes (stream MD).")
        for t in market.MARKET_TYPES
    ],
    *[
        Channel(f"ref-{t.__struct_config__.tag}", f"ref.{t.__struct_config__.tag}.{{source}}.{{venue}}.{{symbol}}",
                (t, Batch), f"Reference data ({t.__name__}); stream REF keeps the last value per subject.")
        for t in reference.REFERENCE_TYPES
    ],
    Channel("status-feed", "status.{service}.feed.{source}.{venue}.{symbol}", (status.FeedStatus,),
            "Feed state changes: connected, disconnected, gap, resynced, stale; subscribed, unsubscribed, "
            "paused when an ingestor applies a feed-control change (stream STATUS)."),
    Channel("status-heartbeat", "status.{service}.heartbeat", (status.ServiceHeartbeat,),
            "Every service, every few seconds (stream STATUS)."),
    Channel("dead-letters", "dlq.{service}.{source}", (status.DeadLetter,),
            "Payloads that could not be processed, with the reason (stream DLQ)."),
    Channel("order-commands", "orders.cmd.digitex.{market}", orders.COMMAND_TYPES,
            "Order commands (stream ORDERS_CMD, a work queue). A command with a Marketbus-Reply-To header "
            "gets its CommandAck published there.", action="receive", reply=(orders.CommandAck,),
            reply_header=HEADER_REPLY_TO),
    Channel("order-events", "orders.evt.digitex.{market}.{client_id}", (orders.OrderEvent,),
            "Every state transition of an order, in order (stream ORDERS_EVT)."),
    Channel("order-fills", "orders.fill.digitex.{market}", (orders.Fill,), "Fills (stream ORDERS_EVT)."),
    Channel("order-positions", "orders.position.digitex.{market}", (orders.Position,),
            "Positions (stream ORDERS_EVT)."),
    Channel("order-balances", "orders.balance.digitex.{currency}", (orders.Balance,),
            "Balances (stream ORDERS_EVT)."),
    Channel("order-control", "orders.ctl.digitex", (orders.RouterControl,),
            "Kill switch: halt / resume the order router, or ask its status.", action="receive",
            reply=(orders.CommandAck,)),
    Channel("replay", "replay.{source}", (jobs.ReplayRequest,),
            "Ask an ingestor to re-publish a range from its vendor.", action="receive", reply=(jobs.ReplayReply,)),
    Channel("playback-start", "history.replay.start", (replay.PlaybackStart,),
            "Start a history playback session: stored events back onto the bus under a prefix.",
            action="receive", reply=(replay.PlaybackSession, ERROR_REPLY)),
    Channel("playback-control", "history.replay.{session}.control", (replay.PlaybackControl,),
            "Pause, resume or cancel a playback session.", action="receive",
            reply=(replay.PlaybackStatus, ERROR_REPLY)),
    Channel("playback-status", "replay.{session}.status", (replay.PlaybackStatus,),
            "Playback progress: events sent, simulated time, lag."),
    Channel("playback-end", "replay.{session}.end", (replay.PlaybackEnd,),
            "The last message of a playback session."),
    Channel("history-query", "history.query", (jobs.HistoryQuery,),
            "Query stored history; the reply is a sequence of chunks on the request's reply subject, "
            "the last one with more=false.", action="receive", reply=(jobs.HistoryChunk,)),
    Channel("history-coverage", "history.coverage", (jobs.CoverageQuery,),
            "Which ranges are stored, and the reported gaps.", action="receive", reply=(jobs.CoverageReply,)),
    Channel("export-create", "export.create", (jobs.ExportRequest,), "Create an export job (idempotent by key).",
            action="receive", reply=(jobs.ExportJob, ERROR_REPLY)),
    Channel("export-get", "export.get", (JOB_REF,), "The current state of an export job.",
            action="receive", reply=(jobs.ExportJob, ERROR_REPLY)),
    Channel("export-cancel", "export.cancel", (JOB_REF,), "Cancel an export job.",
            action="receive", reply=(jobs.ExportJob, ERROR_REPLY)),
    Channel("export-list", "export.list", (EMPTY,), "Every export job, oldest first.",
            action="receive", reply=(EXPORT_LIST,)),
    Channel("export-status", "export.status.{job_id}", (jobs.ExportJob,),
            "Export job state and progress (stream EXPORTS)."),
    Channel("sitagri-news-publish", "sitagri.news.publish", (jobs.PublishArticle,),
            "Publish an article to a writable Sitagri news source.", action="receive", reply=(jobs.PublishReply,)),
    Channel("feed-control", "feeds.ctl.{vendor}", (feeds.FeedCommand,),
            "Add, remove, pause or resume a feed of a vendor (its ingestor validates against the vendor's "
            "catalog and updates KV bucket feeds).", action="receive", reply=(feeds.FeedReply, ERROR_REPLY)),
]

PARAMETERS = {
    "source": "the vendor: finx, ticksupply, digitex, sitagri",
    "venue": "the exchange or market source, NATS-token safe; _ when there is none",
    "symbol": "the instrument, NATS-token safe (BTC:USD -> BTC-USD, other characters ~XX)",
    "service": "the marketbus service, e.g. ingest_finx",
    "market": "the Digitex market, e.g. FS-BTCUSD; _ for account-wide commands",
    "client_id": "the order's client id",
    "currency": "the balance's currency",
    "job_id": "the export job's id",
    "session": "the playback session's id (s + 12 hex digits)",
    "vendor": "the vendor whose feeds change: finx, ticksupply, digitex, sitagri",
}

def json_schemas(ref_template: str = REF_TEMPLATE) -> tuple[dict[str, Any], dict[str, Any]]:
    """(schema of each type by name, shared components)."""
    names = [t.__name__ for t in ALL_TYPES]
    schemas, components = msgspec.json.schema_components(ALL_TYPES, ref_template=ref_template)
    return dict(zip(names, schemas, strict=True)), components


_EXTRA_SCHEMAS: dict[str, dict[str, Any]] = {
    JOB_REF: {
        "title": JOB_REF, "description": "An export job by id: this object, or the id as a JSON string.",
        "oneOf": [
            {"type": "object", "properties": {"job_id": {"type": "string"}}, "required": ["job_id"]},
            {"type": "string"},
        ],
    },
    ERROR_REPLY: {
        "title": ERROR_REPLY, "description": "A refused request: the reason and an HTTP-like status.",
        "type": "object", "properties": {"error": {"type": "string"}, "status": {"type": "integer", "default": 400}},
        "required": ["error"],
    },
    EXPORT_LIST: {
        "title": EXPORT_LIST, "type": "object", "required": ["jobs"],
        "properties": {"jobs": {"type": "array", "items": {"$ref": REF_TEMPLATE.format(name="ExportJob")}}},
    },
    EMPTY: {"title": EMPTY, "description": "An empty request body.", "type": "string", "maxLength": 0},
    "MarketbusHeaders": {
        "type": "object", "description": "Headers of every marketbus message.",
        "properties": {
            HEADER_MSG_ID: {"type": "string", "description": "the event id (JetStream de-duplication)"},
            HEADER_SCHEMA: {"type": "string", "description": "the schema version of the payload"},
            HEADER_TYPE: {"type": "string", "description": "the payload's type tag"},
            HEADER_REPLY_TO: {"type": "string", "description": "commands: where to publish the CommandAck"},
        },
    },
}


def _name(payload: Any) -> str:
    return payload if isinstance(payload, str) else payload.__name__


def _asyncapi_schema(node: Any) -> Any:
    """msgspec's JSON Schema as an AsyncAPI 3 Schema: ``discriminator`` is the property name (a
    string) there, not OpenAPI's ``{"propertyName": ..., "mapping": ...}`` object."""
    if isinstance(node, dict):
        out = {k: _asyncapi_schema(v) for k, v in node.items()}
        if isinstance(out.get("discriminator"), dict):
            out["discriminator"] = out["discriminator"]["propertyName"]
        return out
    if isinstance(node, list):
        return [_asyncapi_schema(v) for v in node]
    return node


def _message(name: str, payload: Any) -> dict[str, Any]:
    description = (
        _first_line(payload) if not isinstance(payload, str) else _EXTRA_SCHEMAS[payload].get("description", "")
    )
    return {
        "name": name, "title": name, "summary": description, "contentType": "application/json",
        "headers": {"$ref": "#/components/schemas/MarketbusHeaders"},
        "payload": {"$ref": REF_TEMPLATE.format(name=name)},
    }


def _channel(address: str | None, description: str, payloads: tuple[Any, ...]) -> dict[str, Any]:
    channel: dict[str, Any] = {"address": address, "description": description,
                               "messages": {_name(p): {"$ref": f"#/components/messages/{_name(p)}"} for p in payloads}}
    params = re.findall(r"{(\w+)}", address or "")
    if params:
        channel["parameters"] = {p: {"description": PARAMETERS[p]} for p in params}
    return channel


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the bus, in the order of :data:`CHANNELS` (stable output).

    marketbus is the application described: ``send`` operations are what it publishes,
    ``receive`` operations the requests and commands it serves, each with its reply.
    """
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for ch in CHANNELS:
        channels[ch.name] = _channel(ch.address, ch.description, ch.messages)
        operation: dict[str, Any] = {
            "action": ch.action, "channel": {"$ref": f"#/channels/{ch.name}"},
            "summary": ch.description.split(". ")[0],
            "messages": [{"$ref": f"#/channels/{ch.name}/messages/{_name(p)}"} for p in ch.messages],
        }
        if ch.reply:
            reply_name = f"{ch.name}-reply"
            where = f"the {ch.reply_header} header" if ch.reply_header else "the request's NATS reply subject"
            channels[reply_name] = _channel(None, f"Replies to {ch.address}, published on {where}.", ch.reply)
            operation["reply"] = {
                "channel": {"$ref": f"#/channels/{reply_name}"},
                "messages": [{"$ref": f"#/channels/{reply_name}/messages/{_name(p)}"} for p in ch.reply],
            }
            if ch.reply_header:
                operation["reply"]["address"] = {"location": f"$message.header#/{ch.reply_header}",
                                                 "description": "the subject the sender named"}
        operations[f"{ch.action}-{ch.name}"] = operation
        for payload in (*ch.messages, *ch.reply):
            messages.setdefault(_name(payload), _message(_name(payload), payload))

    contract_types = [t for t in (*ALL_TYPES, jobs.PublishArticle, jobs.PublishReply)]
    _, components = msgspec.json.schema_components(contract_types, ref_template=REF_TEMPLATE)
    schemas = {**components, **_EXTRA_SCHEMAS}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "marketbus",
            "version": f"schema-{SCHEMA_VERSION}",
            "description": "Normalized market data, reference data, status, orders and jobs on NATS. JSON messages "
            'tagged by "type"; headers: Nats-Msg-Id (event id), Marketbus-Schema (version), '
            "Marketbus-Type. Generated from the code by `make schemas`.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "development": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "`make run` (another port when 4222 is taken: .marketbus/nats.url)",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": dict(sorted(messages.items())),
            "schemas": _asyncapi_schema(dict(sorted(schemas.items()))),
        },
    }


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
    events.write_bytes(
        msgspec.json.format(msgspec.json.encode({"oneOf": list(by_name.values()), "$defs": components}), indent=2)
    )
    asyncapi = out_dir / "asyncapi.json"
    asyncapi.write_bytes(msgspec.json.format(msgspec.json.encode(asyncapi_document()), indent=2))
    return [*written, events, asyncapi]


if __name__ == "__main__":
    paths = write(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas"))
    print(f"wrote {len(paths)} files")
