"""Subjects: build and parse are inverse; symbol normalization is token safe and round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketbus.contracts import subjects

token = st.text(alphabet=st.characters(codec="utf-8", exclude_characters=". *>\t\r\n"), min_size=1, max_size=10)


@pytest.mark.parametrize(("vendor", "normalized"), [
    ("BTC:USD", "BTC-USD"), ("FS:BTCUSD", "FS-BTCUSD"), ("EMAH16", "EMAH16"), ("BTCUSDT", "BTCUSDT"),
    ("BTC/USD", "BTC~2FUSD"), ("BTC-PERP", "BTC~2DPERP"), ("a.b", "a~2Eb"),
])
def test_known_symbols(vendor: str, normalized: str) -> None:
    assert subjects.normalize_symbol(vendor) == normalized
    assert subjects.denormalize_symbol(normalized) == vendor


@given(st.text(min_size=1, max_size=30))
def test_normalization_round_trips_and_is_one_safe_token(vendor: str) -> None:
    token_ = subjects.normalize_symbol(vendor)
    assert subjects.check_token(token_) == token_
    assert subjects.denormalize_symbol(token_) == vendor


@given(st.sampled_from(["md", "ref"]), token, token, token, st.text(min_size=1, max_size=20))
def test_build_and_parse_are_inverse(namespace: str, kind: str, source: str, venue: str, vendor_symbol: str) -> None:
    build = subjects.md if namespace == "md" else subjects.ref
    symbol = subjects.normalize_symbol(vendor_symbol)
    parsed = subjects.parse(build(kind, source, venue, symbol))
    assert parsed == (namespace, kind, source, venue, symbol)
    assert parsed.vendor_symbol == vendor_symbol


def test_status_subjects_parse() -> None:
    assert subjects.parse_status(subjects.heartbeat("ingest_finx")).what == "heartbeat"
    parsed = subjects.parse_status(subjects.feed_status("ingest_finx", "finx", "COINBASE", "BTC-USD"))
    assert parsed == ("ingest_finx", "feed", "finx", "COINBASE", "BTC-USD")


def test_parse_refuses_other_subjects() -> None:
    with pytest.raises(ValueError):
        subjects.parse("orders.cmd.digitex.FS-BTCUSD")
    with pytest.raises(ValueError):
        subjects.parse("md.trade.finx.COINBASE")
    with pytest.raises(ValueError):
        subjects.normalize_symbol("")


def test_wildcard_filters_match_the_scheme() -> None:
    assert subjects.md_filter(kind="trade") == "md.trade.*.*.*"
    assert subjects.order_events_filter("FS-BTCUSD") == "orders.evt.digitex.FS-BTCUSD.*"


def test_order_event_subjects_round_trip() -> None:
    subject = subjects.order_event("FS-BTCUSD", "2f1c6a52-8e7e-4c3b-9b0e-0d5f7d1e4a10")
    assert subjects.parse_order_event(subject) == ("FS-BTCUSD", "2f1c6a52-8e7e-4c3b-9b0e-0d5f7d1e4a10")
    with pytest.raises(ValueError):
        subjects.parse_order_event("orders.cmd.digitex.FS-BTCUSD")


def test_only_a_literal_short_subject_under_inbox_is_a_reply_inbox() -> None:
    assert subjects.is_reply_inbox("_INBOX.operator.abc123.1") and subjects.is_reply_inbox("_INBOX.abc")
    for bad in ("orders.evt.digitex.x", "$KV.order_state.k", "_INBOX", "_INBOX.", "_INBOX.a..b", "_INBOX.*",
                "_INBOX.>", "_INBOX.a b", "_INBOX.a\tb", "_INBOX.\u00e9", "_INBOX." + "a" * 300, ""):
        assert not subjects.is_reply_inbox(bad), bad
