"""marketbus.clients without a server: selectors, error replies, command builders, CLI output."""

from __future__ import annotations

from decimal import Decimal

import pytest

from marketbus.cli.output import plain, plain_builtins
from marketbus.clients import RequestError, SelectorError, parse_selector
from marketbus.clients import orders as client_orders
from marketbus.clients.errors import as_error_reply, decode_reply
from marketbus.contracts import codec
from marketbus.contracts.errors import ErrorReply, code_for_http_status
from marketbus.contracts.jobs import CoverageReply, StreamSelector


@pytest.mark.parametrize(("text", "parts"), [
    ("", ("*", "*", "*", "*")),
    ("trade", ("trade", "*", "*", "*")),
    ("trade.finx.*.BTC*", ("trade", "finx", "*", "BTC*")),
    ("trade..CB", ("trade", "*", "CB", "*")),
    ("md.trade.digitex.>", ("trade", "digitex", "*", "*")),  # the subject form
    ("md.trade.finx.CB.BTC-USD", ("trade", "finx", "CB", "BTC-USD")),
    ("ref.instrument.>", ("instrument", "*", "*", "*")),
    ("book*", ("book*", "*", "*", "*")),
    (">", ("*", "*", "*", "*")),
])
def test_selectors(text: str, parts: tuple[str, ...]) -> None:
    assert parse_selector(text) == StreamSelector(kind=parts[0], source=parts[1], venue=parts[2], symbol=parts[3])


@pytest.mark.parametrize(("text", "message"), [
    ("trdae", "unknown kind 'trdae'"),
    ("md.nothing.>", "unknown kind 'nothing'"),
    ("trade.a.b.c.d", "has 5 parts"),
    ("md.trade.a.b.c.d", "has 5 parts"),
    ("trade.>.x", "'>' may only be the last part"),
])
def test_bad_selectors(text: str, message: str) -> None:
    with pytest.raises(SelectorError, match=message):
        parse_selector(text)


def test_an_error_reply_becomes_a_request_error() -> None:
    data = codec.encode(ErrorReply(code="not_found", message="export x not found", details={"job_id": "x"}))
    assert data.startswith(b'{"type":"error_reply"')
    with pytest.raises(RequestError) as raised:
        decode_reply(data, CoverageReply)
    assert (raised.value.code, raised.value.message, raised.value.details) == ("not_found", "export x not found",
                                                                              {"job_id": "x"})
    assert as_error_reply(data) is not None and as_error_reply(codec.encode(CoverageReply())) is None
    assert decode_reply(codec.encode(CoverageReply()), CoverageReply) == CoverageReply()
    with pytest.raises(RequestError) as raised:
        decode_reply(b"not json", CoverageReply)
    assert raised.value.code == "internal"
    assert [code_for_http_status(s) for s in (400, 404, 409, 429, 503, 500, 418)] == [
        "bad_request", "not_found", "conflict", "overloaded", "unavailable", "internal", "bad_request"]


def test_command_builders_refuse_what_the_router_would_choke_on() -> None:
    cmd = client_orders.place("FS-BTCUSD", "buy", "1.50", "20000")
    assert (
        cmd.quantity == Decimal("1.50") and cmd.price == Decimal(20000) and cmd.command_id == f"place-{cmd.client_id}"
    )
    for bad, message in ((("abc", None), "quantity 'abc' is not a number"), (("1", "x"), "price 'x' is not a number"),
                         (("Infinity", None), "quantity 'Infinity' is not a finite number")):
        with pytest.raises(ValueError, match=message):
            client_orders.place("FS-BTCUSD", "buy", *bad)
    with pytest.raises(ValueError, match="order type 'stop' is not one of market, limit"):
        client_orders.place("FS-BTCUSD", "buy", 1, order_type="stop")
    assert client_orders.cancel().market is None and client_orders.cancel("M", ["a"]).client_ids == ["a"]


def test_decimals_print_as_plain_numbers() -> None:
    cases = {"0E-18": "0", "41060.000000000000000000": "41060", "1E+3": "1000", "0.0010": "0.001", "-2.50": "-2.5",
             "-0": "0", "123456789.123456789": "123456789.123456789"}
    assert {text: plain(Decimal(text)) for text in cases} == cases
    assert plain_builtins({"a": [Decimal("1.0")], "b": Decimal("0E-18"), "c": "0E-18"}) == {
        "a": ["1"],
        "b": "0",
        "c": "0E-18",
    }
