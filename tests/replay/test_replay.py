"""The replay service against a real history writer on a real NATS: a recorded period played
back equals what a live consumer saw, pacing, isolation, refusals, the session limit, cleanup."""

from __future__ import annotations

import asyncio
import statistics
import time
from decimal import Decimal
from typing import Any

import msgspec
import nats
import pytest

from marketbus.clients import PlaybackClient, RequestError
from marketbus.contracts import Instrument, Tick, codec, event_id, subjects
from marketbus.contracts.errors import ErrorReply
from marketbus.contracts.jobs import StreamSelector
from marketbus.contracts.replay import PlaybackControl, PlaybackEnd, PlaybackStart, PlaybackStatus
from tests.helpers import wait_for

from .conftest import MS, T0, Recorder, Stack, trade, unique_symbol

END = T0 + 10**12


def tick(symbol: str, i: int, ts: int) -> Tick:
    return Tick(id=event_id("digitex", "tick", "DGTX", symbol, i), source="digitex", venue="DGTX", symbol=symbol,
                ts_event=ts, ts_recv=ts + 5, price=Decimal("99.5") + i)


def as_single_messages(recorded: list[tuple[str, bytes, dict[str, str]]]) -> list[tuple[str, bytes, dict[str, str]]]:
    """What a playback sends for a live recording: single-event messages as they are, each event
    of a batch envelope as the message it would have been alone."""
    out = []
    for subject, data, headers in recorded:
        message = codec.decode(data)
        if isinstance(message, codec.Batch):
            out.extend((subject, codec.encode(e), codec.headers_for(e)) for e in message.events)
        else:
            out.append((subject, data, headers))
    return out


async def play(
    stack: Stack, selector: str, start: int, end: int, **kw: Any
) -> list[tuple[str, bytes, dict[str, str], float]]:
    got = []
    prefix = None
    async for msg in PlaybackClient(stack.nc).play(selector, start, end, **kw):
        if prefix is None:
            prefix = ".".join(msg.subject.split(".")[:2])
        got.append((subjects.strip_prefix(msg.subject, prefix), msg.data, dict(msg.headers or {}), time.monotonic()))
    return got


async def test_recorded_period_replays_message_for_message(stack: Stack) -> None:
    sym = unique_symbol()
    trades = [trade(sym, i, T0 + i * MS) for i in range(300)]
    ticks = [tick(sym, i, T0 + i * 7 * MS) for i in range(40)]  # ties with trades at multiples of 7 ms
    live = await Recorder().start(stack.nc, f"md.*.digitex.DGTX.{sym}")
    pub = stack.publisher
    # publish in ts_event order: single events, then a batch envelope (a backfill), then single again
    merged = sorted([*trades, *ticks], key=lambda e: (e.ts_event, type(e) is Tick))
    firsts = [e for e in merged if e.ts_event < T0 + 150 * MS]
    await pub.publish_group(firsts)
    await pub.flush()
    await pub.publish_batch(trades[150:250])
    await pub.flush()
    lasts = [
        e
        for e in merged
        if e.ts_event >= T0 + 150 * MS and not (isinstance(e, type(trades[0])) and e.ts_event < T0 + 250 * MS)
    ]
    await pub.publish_group(lasts)
    await pub.flush()
    await live.wait(len(firsts) + 1 + len(lasts))
    await stack.stored(sym, len(merged))

    replayed = await play(stack, f"*.digitex.DGTX.{sym}", T0, END, speed="max")

    expected = as_single_messages(live.messages)
    assert len(replayed) == len(merged) == len(expected)
    # a batch's events sit between the singles of the same time: the history (and a live
    # consumer decoding envelopes) orders them by ts_event, so compare in that order
    expected.sort(key=lambda m: codec.decode(m[1]).ts_event)
    for (subject, data, headers, _), (live_subject, live_data, live_headers) in zip(replayed, expected, strict=True):
        assert subject == live_subject
        assert data == live_data  # byte for byte
        assert headers == live_headers  # Nats-Msg-Id, Marketbus-Schema, Marketbus-Type
    # the singles published live are the very messages a live consumer got, in the same order
    singles = [m for m in live.messages if not isinstance(codec.decode(m[1]), codec.Batch)]
    replayed_singles = [(s, d, h) for s, d, h, _ in replayed if d in {m[1] for m in singles}]
    assert replayed_singles == singles


class LoopStalls:
    """When this process's event loop could not run, and for how long: a task that asks for 1 ms
    sleeps and notes how much later it woke. The replay service, the writer and this subscriber
    share the loop; on a loaded host the process is also descheduled for tens of ms at a time.
    An event that arrives just after such a stall says nothing about the pacer."""

    NOISE_S = 0.002  # timer jitter of an idle loop: not a stall

    def __init__(self) -> None:
        self.stalls: list[tuple[float, float]] = []  # (from, to) in time.monotonic()

    async def watch(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(0.001)
            woke = time.monotonic()
            if woke - asked - 0.001 > self.NOISE_S:
                self.stalls.append((asked + 0.001, woke))

    def overlap(self, start: float, end: float) -> float:
        return sum(max(0.0, min(to, end) - max(since, start)) for since, to in self.stalls)


PACING_ATTEMPTS = 5  # the stalls of nats-server (another process) are not seen: a run is tried again


def pacing_errors_ms(arrivals: list[float], due: list[float], stalls: LoopStalls) -> list[float]:
    """Each event's distance from its schedule (``due``: seconds after the first event), less the
    time the loop could not run between when the event was due and when it arrived. The
    schedule is anchored at the median offset (one late first event, the anchor of the playback,
    must not count against every later one), computed again once the stalls are taken off."""
    offsets = [a - d for a, d in zip(arrivals, due, strict=True)]
    anchor = statistics.median(offsets)
    for _ in range(2):
        late = [max(0.0, o - anchor) for o in offsets]
        own = [o - min(lag, stalls.overlap(a - lag, a)) for o, lag, a in zip(offsets, late, arrivals, strict=True)]
        anchor = statistics.median(own)
    return [abs(o - anchor) * 1000 for o in own]


async def test_pacing_at_1x_and_4x_follows_the_recorded_gaps(stack: Stack) -> None:
    sym = unique_symbol()
    gaps_ms = [0, 1, 3, 10, 40, 0, 25, 2, 60, 5]
    ts = [T0]
    for i in range(1, 50):
        ts.append(ts[-1] + gaps_ms[i % len(gaps_ms)] * MS)
    events = [trade(sym, i, t) for i, t in enumerate(ts)]
    await stack.publisher.publish_group(events)
    await stack.publisher.flush()
    await stack.stored(sym, len(events))
    span_s = (ts[-1] - ts[0]) / 1e9  # ~0.73 s

    for speed, factor in (("1x", 1.0), ("4x", 4.0)):
        due = [(t - ts[0]) / 1e9 / factor for t in ts]
        tried = []
        for _ in range(PACING_ATTEMPTS):
            stalls = LoopStalls()
            watcher = asyncio.create_task(stalls.watch())
            try:
                got = await play(stack, f"trade.digitex.*.{sym}", T0, END, speed=speed)
            finally:
                watcher.cancel()
            assert [codec.decode(d).id for _, d, _, _ in got] == [e.id for e in events]
            arrivals = [t for *_, t in got]
            errors_ms = pacing_errors_ms(arrivals, due, stalls)
            # the first and the last event's own times (a stall before either is not the pacer's)
            first, last = (a - stalls.overlap(a - 0.05, a) for a in (arrivals[0], arrivals[-1]))
            median, p90 = statistics.median(errors_ms), sorted(errors_ms)[int(0.9 * len(errors_ms))]
            tried.append({"median_ms": round(median, 1), "p90_ms": round(p90, 1),
                          "total_s": round(last - first, 3), "stalled_s": round(stalls.overlap(0, 1e12), 2)})
            # the median holds tight; a few events may wait behind a stall nothing saw
            if median < 5 and p90 < 40 and abs(last - first - span_s / factor) < 0.08:  # no drift
                break
        else:
            raise AssertionError(f"{speed}: pacing off in every run (span {span_s / factor:.3f}s): {tried}")


async def test_two_sessions_at_once_see_only_their_own_events(stack: Stack) -> None:
    a, b = unique_symbol("A"), unique_symbol("B")
    ea = [trade(a, i, T0 + i * MS) for i in range(200)]
    eb = [trade(b, i, T0 + i * MS, source="finx", venue="CB") for i in range(120)]
    await stack.publisher.publish_group(ea + eb)
    await stack.publisher.flush()
    await stack.stored(a, 200)
    await stack.stored(b, 120)
    ra, rb = await asyncio.gather(play(stack, f"trade.digitex.*.{a}", T0, END, speed="20x"),
                                  play(stack, f"trade.finx.*.{b}", T0, END, speed="max"))
    assert [codec.decode(d).id for _, d, _, _ in ra] == [e.id for e in ea]
    assert [codec.decode(d).id for _, d, _, _ in rb] == [e.id for e in eb]


async def _raw_start(stack: Stack, req: PlaybackStart | bytes) -> ErrorReply:
    data = req if isinstance(req, bytes) else codec.encode(req)
    msg = await stack.nc.request(subjects.PLAYBACK_START, data, timeout=10)
    return codec.decode_as(msg.data, ErrorReply)


async def test_bad_requests_get_a_clear_refusal(stack: Stack) -> None:
    sym = unique_symbol()
    await stack.publisher.publish_group([trade(sym, i, T0 + i * MS) for i in range(5)])
    await stack.publisher.flush()
    await stack.stored(sym, 5)
    sel = StreamSelector(kind="trade", source="digitex", symbol=sym)

    def start(**kw: Any) -> PlaybackStart:
        return PlaybackStart(**{"selector": sel, "start_ns": T0, "end_ns": END, **kw})

    bad = await _raw_start(stack, start(selector=StreamSelector(kind="bogus")))
    assert bad.code == "bad_request" and "unknown kind 'bogus'" in bad.message
    bad = await _raw_start(stack, start(end_ns=T0 - 1))
    assert bad.code == "bad_request" and "must be after the start" in bad.message
    for speed in ("0x", "-2x", "fast"):
        bad = await _raw_start(stack, start(speed=speed))
        assert bad.code == "bad_request" and "speed" in bad.message, speed
    bad = await _raw_start(stack, start(start_ns=END, end_ns=END + 10**9))
    assert bad.code == "not_found" and "no stored events" in bad.message
    assert "in [2025-11-21T04:56:40Z, 2025-11-21T04:56:41Z)" in bad.message, bad.message  # END: times, not ns
    bad = await _raw_start(stack, start(prefix="md.mine"))
    assert bad.code == "bad_request" and "replay.<name>" in bad.message
    bad = await _raw_start(stack, start(prefix="replay.finx"))  # replay.<source> is the ingestors'
    assert bad.code == "bad_request" and "reserved" in bad.message
    bad = await _raw_start(stack, b'{"type": "playback_start", "selector": 5}')
    assert bad.code == "bad_request" and "undecodable" in bad.message
    # the client checks what it can before sending
    client = PlaybackClient(stack.nc)
    with pytest.raises(ValueError, match="unknown kind"):
        await client.start("bogus.digitex.*.*", T0, END)
    with pytest.raises(ValueError, match="must be more than 0"):
        await client.start(f"trade.digitex.*.{sym}", T0, END, speed="0x")
    with pytest.raises(RequestError) as exc:
        await client.start(f"trade.digitex.*.{sym}", END, END + 1)
    assert exc.value.code == "not_found"


async def test_session_limit_control_and_cleanup(stack: Stack) -> None:
    sym = unique_symbol()
    await stack.publisher.publish_group([trade(sym, i, T0 + i * 100 * MS) for i in range(30)])  # 2.9 s at 1x
    await stack.publisher.flush()
    await stack.stored(sym, 30)
    js = stack.nc.jetstream()
    streams_before = sorted(s.config.name for s in await js.streams_info())
    consumers_before = (await js.stream_info("MD")).state.consumer_count
    subs_before = len(stack.replay.nc._subs)

    client = PlaybackClient(stack.nc)
    limit = stack.replay.settings.max_sessions
    held = [await client.start(f"trade.digitex.*.{sym}", T0, END, hold=True) for _ in range(limit)]
    assert len({s.session for s in held}) == limit and all(subjects.is_session_id(s.session) for s in held)
    assert all(s.prefix == f"replay.{s.session}" and s.expected == 30 for s in held)
    with pytest.raises(RequestError) as exc:
        await client.start(f"trade.digitex.*.{sym}", T0, END)
    assert exc.value.code == "overloaded" and "session limit" in exc.value.message

    # one runs at 1x: pause, resume, progress on its status subject, then cancel
    first = held[0]
    statuses: list[PlaybackStatus] = []
    ends: list[PlaybackEnd] = []

    async def on_status(msg: Any) -> None:
        statuses.append(codec.decode(msg.data))

    async def on_end(msg: Any) -> None:
        ends.append(codec.decode(msg.data))

    s1 = await stack.nc.subscribe(first.status_subject, cb=on_status)
    s2 = await stack.nc.subscribe(subjects.playback_end(first.prefix), cb=on_end)
    assert (await client.resume(first.session)).state == "running"
    await wait_for(lambda: any(s.sent > 2 for s in statuses), timeout=5, what="progress")
    paused = await client.pause(first.session)
    assert paused.state == "paused"
    await asyncio.sleep(0.4)
    still = await client.status(first.session)
    assert still.state == "paused" and still.sent - paused.sent <= 1
    assert (await client.resume(first.session)).state == "running"
    await wait_for(lambda: any(s.sent > still.sent for s in statuses), timeout=5, what="progress after resume")
    cancelled = await client.cancel(first.session)
    assert cancelled.state in ("running", "cancelled")
    await wait_for(lambda: ends, timeout=5, what="end marker")
    assert ends[0].state == "cancelled" and 0 < ends[0].sent < 30
    last = statuses[-1]
    assert last.state == "cancelled" and last.sim_ts is not None and last.expected == 30

    for s in held[1:]:
        await client.cancel(s.session)
    await wait_for(lambda: not stack.replay.sessions, timeout=5, what="every session gone")
    with pytest.raises(RequestError) as exc:
        await client.status(first.session)
    assert exc.value.code == "no_responders"  # its control subscription is gone
    await s1.unsubscribe()
    await s2.unsubscribe()
    # nothing left on the server: no stream, no consumer, no subscription of the service
    await wait_for(lambda: len(stack.replay.nc._subs) == subs_before, timeout=5, what="subscriptions released")
    assert sorted(s.config.name for s in await js.streams_info()) == streams_before
    assert (await js.stream_info("MD")).state.consumer_count == consumers_before
    # the heartbeat says it too: no session running, events sent so far
    heartbeat = await stack.nc.subscribe(subjects.heartbeat("replay"))
    hb = codec.decode((await heartbeat.next_msg(timeout=5)).data)
    await heartbeat.unsubscribe()
    assert hb.counters["sessions"] == 0 and hb.counters["events_sent"] > 0
    # a held session never resumed is cancelled after hold_timeout_s (here: a short one)
    stack.replay.settings = msgspec.structs.replace(stack.replay.settings, hold_timeout_s=0.3)
    try:
        lonely = await client.start(f"trade.digitex.*.{sym}", T0, END, hold=True)
        await wait_for(lambda: lonely.session not in stack.replay.sessions, timeout=5, what="held session dropped")
    finally:
        stack.replay.settings = msgspec.structs.replace(stack.replay.settings, hold_timeout_s=30.0)


async def test_reference_data_in_effect_at_the_start_goes_first(stack: Stack) -> None:
    sym = unique_symbol("I")

    def instrument(i: int, ts: int, name: str) -> Instrument:
        return Instrument(id=event_id("digitex", "instrument", sym, i), source="digitex", venue="DGTX", symbol=sym,
                          ts_event=ts, ts_recv=ts, instrument_type="perpetual", vendor_symbol=sym, name=name)

    before = [instrument(0, T0 - 10 * MS, "old"), instrument(1, T0 - 5 * MS, "current")]
    during = instrument(2, T0 + 5 * MS + 1, "changed")
    trades = [trade(sym, i, T0 + i * 2 * MS) for i in range(6)]
    # REF keeps the last value per subject: each is stored before the next replaces it in the stream
    for n, ev in enumerate(before, 1):
        await (await stack.publisher.publish_event(ev))
        await stack.stored(sym, n, kind="instrument")
    await stack.stored(sym, 2, kind="instrument")
    await stack.publisher.publish_group(trades[:3])
    await stack.publisher.flush()
    await (await stack.publisher.publish_event(during))
    await stack.publisher.publish_group(trades[3:])
    await stack.publisher.flush()
    await stack.stored(sym, 9)

    got = await play(stack, f"trade.digitex.*.{sym}", T0, END, speed="max", reference=f"instrument.digitex.*.{sym}")
    names = [
        (s.split(".")[0], getattr(codec.decode(d), "name", None) or codec.decode(d).trade_id) for s, d, _, _ in got
    ]
    assert names == [("ref", "current"), ("md", "0"), ("md", "1"), ("md", "2"), ("ref", "changed"),
                     ("md", "3"), ("md", "4"), ("md", "5")]


async def test_only_the_starter_can_control_a_session(stack: Stack) -> None:
    """A reader that learns a session id (its status events, /healthz) cannot stop or pause it:
    controls carry the secret token of the start reply; the owner's client passes it itself."""
    sym = unique_symbol()
    await stack.publisher.publish_group([trade(sym, i, T0 + i * MS) for i in range(5)])
    await stack.publisher.flush()
    await stack.stored(sym, 5)
    owner = PlaybackClient(stack.nc)
    session = await owner.start(f"trade.digitex.*.{sym}", T0, END, hold=True)
    assert session.control_token  # given to the starter only
    health = msgspec.json.encode(stack.replay.health())
    assert session.control_token.encode() not in health
    status_sub = await stack.nc.subscribe(session.status_subject)
    status_event = (await status_sub.next_msg(timeout=5)).data  # what every reader sees
    await status_sub.unsubscribe()
    assert session.session.encode() in status_event and session.control_token.encode() not in status_event

    other_nc = await nats.connect(stack.url)
    try:
        other = PlaybackClient(other_nc, timeout=5.0)  # knows the id, not the token
        for action in ("cancel", "pause", "resume"):
            with pytest.raises(RequestError) as exc:
                await other.control(session.session, action)
            assert exc.value.code == "forbidden" and "control token" in exc.value.message
            assert exc.value.details == {"reason": "missing_token"}
        with pytest.raises(RequestError) as exc:  # a wrong token is refused too
            await other.control(session.session, "cancel", token="not-the-token")
        assert exc.value.code == "forbidden" and "control token" in exc.value.message
        assert exc.value.details == {"reason": "wrong_token"}
        # a plain publish (no reply subject) is dropped just the same
        await other_nc.publish(session.control_subject, codec.encode(PlaybackControl(action="cancel")))
        await other_nc.flush()
    finally:
        await other_nc.close()
    assert session.session in stack.replay.sessions
    assert (await owner.status(session.session)).state == "ready"
    refused = stack.replay.metrics.registry.get_sample_value("marketbus_replay_control_refused_total",
                                                             {"reason": "missing_token"})
    assert refused is not None and refused >= 4

    cancelled = await owner.cancel(session.session)  # the owner can
    assert cancelled.state in ("ready", "cancelled")
    await wait_for(lambda: session.session not in stack.replay.sessions, timeout=5, what="session cancelled")
