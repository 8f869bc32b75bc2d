"""docs/schemas: the AsyncAPI document is generated, stable, accepted by the official parser
(@asyncapi/parser, installed from tools/asyncapi's lock file) and describes every request/reply;
the JSON Schemas are valid and validate real encoded events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import msgspec
import pytest

from marketbus.contracts import codec, subjects
from marketbus.contracts.schema import asyncapi_document
from tools.npm import NodeMissing, npm_ci, require

from .conftest import ROOT, book, quote, trade

SCHEMAS = ROOT / "docs" / "schemas"
TOOL = ROOT / "tools" / "asyncapi"


@pytest.fixture(scope="module")
def node() -> str:
    try:
        npm_ci(TOOL)
        return require("node")
    except NodeMissing as exc:
        pytest.fail(str(exc))


def _validate(node: str, *paths: Path) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    result = subprocess.run([node, str(TOOL / "validate.js"), *map(str, paths)],
                            capture_output=True, text=True, timeout=120, check=False)
    return result, [json.loads(line) for line in result.stdout.splitlines()]


def test_the_official_parser_accepts_the_document(node: str, tmp_path: Path) -> None:
    # and is not vacuous: a schema with an OpenAPI-style discriminator (msgspec's) is refused
    broken = {
        "asyncapi": "3.0.0", "info": {"title": "t", "version": "1"},
        "components": {"schemas": {"Union": {
            "oneOf": [{"type": "object"}], "discriminator": {"propertyName": "type", "mapping": {}}}}},
    }
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    result, diagnostics = _validate(node, SCHEMAS / "asyncapi.json", tmp_path / "broken.json")
    assert result.returncode == 1
    assert f"{SCHEMAS / 'asyncapi.json'}: valid AsyncAPI 3.0.0" in result.stderr, result.stdout + result.stderr
    errors = [d for d in diagnostics if d["severity"] == "error"]
    assert errors and all(d["file"].endswith("broken.json") for d in errors), errors
    assert '"discriminator" property type must be string' in {d["message"] for d in errors}


def test_the_committed_document_is_the_generated_one_in_a_stable_order() -> None:
    generated = msgspec.json.format(msgspec.json.encode(asyncapi_document()), indent=2)
    assert (SCHEMAS / "asyncapi.json").read_bytes() == generated, "run `make schemas`"
    other_process = subprocess.run(  # another hash seed: set/hash order must not leak into the document
        [sys.executable, "-c", "import msgspec; from marketbus.contracts.schema import asyncapi_document; "
         "print(msgspec.json.encode(asyncapi_document()).decode())"],
        env={**os.environ, "PYTHONHASHSEED": "12345"}, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()
    assert other_process == msgspec.json.encode(asyncapi_document()).decode()


def test_actions_and_replies() -> None:
    doc = json.loads((SCHEMAS / "asyncapi.json").read_text())
    operations = doc["operations"]
    by_address = {doc["channels"][op["channel"]["$ref"].rsplit("/", 1)[1]]["address"]: op for op in operations.values()}
    # what marketbus publishes is `send`; what it serves is `receive`
    for address in ("md.trade.{source}.{venue}.{symbol}", "ref.instrument.{source}.{venue}.{symbol}",
                    "orders.evt.digitex.{market}.{client_id}", "export.status.{job_id}", "dlq.{service}.{source}"):
        assert by_address[address]["action"] == "send" and "reply" not in by_address[address], address
    replies = {
        subjects.HISTORY_QUERY: ["HistoryChunk"], subjects.HISTORY_COVERAGE: ["CoverageReply"],
        subjects.EXPORT_CREATE: ["ExportJob", "ErrorReply"], subjects.EXPORT_GET: ["ExportJob", "ErrorReply"],
        subjects.EXPORT_CANCEL: ["ExportJob", "ErrorReply"], subjects.EXPORT_LIST: ["ExportList"],
        subjects.ORDER_CONTROL: ["CommandAck"], "orders.cmd.digitex.{market}": ["CommandAck"],
        "replay.{source}": ["ReplayReply"], subjects.SITAGRI_NEWS_PUBLISH: ["PublishReply"],
    }
    for address, names in replies.items():
        op = by_address[address]
        assert op["action"] == "receive", address
        assert [m["$ref"].rsplit("/", 1)[1] for m in op["reply"]["messages"]] == names, address
    assert by_address["orders.cmd.digitex.{market}"]["reply"]["address"]["location"] == \
        f"$message.header#/{codec.HEADER_REPLY_TO}"


def test_json_schemas_are_valid_and_validate_encoded_events() -> None:
    files = sorted(p for p in SCHEMAS.glob("*.json") if p.name != "asyncapi.json")
    assert len(files) > 30
    for path in files:
        jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))
    events = json.loads((SCHEMAS / "events.json").read_text())
    validator = jsonschema.Draft202012Validator(events)
    samples = [trade(1, "20000.5", "0.1", 1), quote(2, "1", "2"), book(3, "1", "2"),
               codec.make_batch([trade(4, "1", "1", 4), trade(5, "2", "1", 5)])]
    for event in samples:
        validator.validate(json.loads(codec.encode(event)))
        own = jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{type(event).__name__}.json").read_text()))
        own.validate(json.loads(codec.encode(event)))
    bad = json.loads(codec.encode(trade(6, "1", "1", 6)))
    bad["price"] = 12.5  # prices are decimal strings, never JSON numbers
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(json.loads((SCHEMAS / "Trade.json").read_text())).validate(bad)
