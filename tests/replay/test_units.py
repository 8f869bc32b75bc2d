"""Pure parts of playback: speeds, prefixes and subjects, the schedule, lag percentiles, the wire form."""

from __future__ import annotations

import math

import pytest

from marketbus.clients.playback import make_start
from marketbus.contracts import codec, subjects
from marketbus.contracts.replay import parse_speed
from marketbus.runtime.publisher import header_block as live_header_block
from services.replay.pacing import LagStats, Schedule
from services.replay.wire import decode_head, header_block, live_subject

from .conftest import T0, trade


def test_speeds() -> None:
    assert parse_speed("1x") == 1.0 and parse_speed("10X") == 10.0 and parse_speed("0.5x") == 0.5
    assert parse_speed("3") == 3.0 and math.isinf(parse_speed("max"))
    for bad, message in (("0x", "more than 0"), ("-1x", "more than 0"), ("fast", "<N>x or max"), ("", "<N>x or max")):
        with pytest.raises(ValueError, match=message):
            parse_speed(bad)


def test_prefixes_never_collide_with_sources_or_sessions() -> None:
    assert subjects.check_playback_prefix("replay.bt1") == "replay.bt1"
    for bad in ("md.x", "replay", "replay.a.b", "replay.*", "replay.>", "history.replay.x"):
        with pytest.raises(ValueError, match="replay.<name>"):
            subjects.check_playback_prefix(bad)
    with pytest.raises(ValueError, match="reserved"):
        subjects.check_playback_prefix("replay.finx", ("finx",))
    with pytest.raises(ValueError, match="reserved"):
        subjects.check_playback_prefix("replay.s0123456789ab")
    assert subjects.is_session_id("s0123456789ab") and not subjects.is_session_id("finx")
    assert subjects.playback_filter("replay.bt1", "md.trade.>") == "replay.bt1.md.trade.>"
    assert subjects.strip_prefix("replay.bt1.md.trade.a.b.c", "replay.bt1") == "md.trade.a.b.c"
    with pytest.raises(ValueError):
        make_start("trade.*.*.*", 10, 5)
    with pytest.raises(ValueError, match="unknown kind"):
        make_start("nope.*.*.*", 1, 5)


def test_schedule_is_anchored_at_the_first_event_and_shifted_by_pauses() -> None:
    s = Schedule(2.0)
    first = s.due(T0)
    assert s.due(T0 + 1_000_000_000) == pytest.approx(first + 0.5)  # 1 s of market time at 2x
    s.shift(3.0)
    assert s.due(T0 + 1_000_000_000) == pytest.approx(first + 3.5)


def test_lag_percentiles() -> None:
    lag = LagStats()
    for i in range(100):
        lag.add(0.001 if i < 98 else 0.020)
    assert lag.quantile_ms(0.5) == pytest.approx(1.1, abs=0.11)
    assert lag.quantile_ms(0.99) == pytest.approx(20.1, abs=0.11)
    lag.add(-0.5)  # early counts as on time
    assert lag.last_ms == 0.0


def test_wire_form_is_the_live_publishers() -> None:
    event = trade("W1", 3, T0)
    payload = codec.encode(event)
    head = decode_head(payload)
    assert live_subject(head) == subjects.for_event(event)
    assert header_block(head.type, head.id) == live_header_block(event, event.id)
    assert live_subject(decode_head(b'{"type":"feed_status","id":"x"}')) is None  # not replayed


async def test_the_history_source_follows_the_writer_backend_and_the_setting(tmp_path) -> None:
    """auto: the tables with the Iceberg backend, the NATS query with PostgreSQL;
    an explicit setting wins."""
    from services.replay.app import ReplayService
    from services.replay.source import HistorySource, TableSource

    async def kind(**settings: object) -> str:
        svc = ReplayService(nats_url="nats://127.0.0.1:1", http_port=0, history_dir=str(tmp_path), **settings)
        return type(await svc._open_source(None)).__name__  # no connection needed to choose

    assert [
        await kind(),
        await kind(history_backend="postgres"),
        await kind(history_backend="postgres", history_read="tables"),
        await kind(history_read="nats"),
    ] == [TableSource.__name__, HistorySource.__name__, TableSource.__name__, HistorySource.__name__]
