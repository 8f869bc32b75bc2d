"""History playback sessions: stored events put back on the bus at market pace (the replay service).

Not to be confused with ``replay.<source>`` (:class:`~marketbus.contracts.jobs.ReplayRequest`),
where an ingestor re-fetches a range from its vendor onto the normal ``md.`` subjects.

Protocol (subjects in :mod:`marketbus.contracts.subjects`):

- ``history.replay.start`` (request/reply, queue group of the replay services):
  :class:`PlaybackStart` -> :class:`PlaybackSession`, or an
  :class:`~marketbus.contracts.errors.ErrorReply` (``bad_request``: unknown selector, end before
  start, bad speed or prefix; ``not_found``: no stored events in the range; ``overloaded``: the
  session limit is reached; ``conflict``: the prefix is in use).
- The events go out in history order, a total order over every selected stream: ``ts_event``,
  then the JetStream stream (``MD`` before ``REF``), its sequence, the position in a batch
  envelope (the order the history writer stores and queries).
- They go to ``<prefix>.md.<kind>.<source>.<venue>.<symbol>`` (and ``<prefix>.ref....``),
  the prefix being ``replay.<session>`` unless the request names another one (``replay.<name>``):
  each one byte for byte the message a live consumer gets for that event published alone (same
  payload, same ``Nats-Msg-Id`` / ``Marketbus-Schema`` / ``Marketbus-Type`` headers). Events that
  went out live inside a ``batch`` envelope are replayed one message per event (history stores
  events, not envelopes), so ``codec.decode_events`` yields the same events either way.
- Last, a :class:`PlaybackEnd` marker on ``<prefix>.end``.
- ``history.replay.<session>.control``: :class:`PlaybackControl` (pause, resume, cancel, status)
  -> :class:`PlaybackStatus` or ErrorReply. Every control carries the session's ``control_token``
  (a secret of the start reply, given to the starter only): session ids are public (status
  subjects, /healthz) and NATS does not say who published, so without the token a control is
  refused (``forbidden``, with ``details["reason"]`` ``missing_token`` or ``wrong_token``)
  and counted.
- ``replay.<session>.status``: :class:`PlaybackStatus` events (progress: events sent, simulated
  time, lag) every ``status_interval_s`` and on every change of state.

Session ids are ``s`` + 12 hex digits: never the name of a source (``replay.<source>`` is the
ingestors' subject).
"""

from __future__ import annotations

import math
import re
from typing import Literal

from .base import Event
from .jobs import StreamSelector

PlaybackState = Literal["ready", "running", "paused", "finished", "cancelled", "failed"]
ENDED_STATES: tuple[str, ...] = ("finished", "cancelled", "failed")
ControlAction = Literal["pause", "resume", "cancel", "status"]
_SPEED = re.compile(r"\s*(?:(max)|([-+]?(?:\d+(?:\.\d+)?|\.\d+))\s*x?)\s*", re.IGNORECASE)


class PlaybackStart(Event, frozen=True, kw_only=True, tag="playback_start"):
    """Start a session: ``selector`` events with ``start_ns <= ts_event < end_ns`` in history
    order, at ``speed`` (``"1x"`` original pace, ``"10x"``, ``"0.5x"``, or ``"max"``)."""

    selector: StreamSelector
    start_ns: int
    end_ns: int
    speed: str = "1x"
    prefix: str | None = None  # ``replay.<name>``; default ``replay.<session>``
    reference: StreamSelector | None = None  # reference data: in effect at start_ns first, then in order
    hold: bool = False  # wait for a ``resume`` before sending (subscribe first, then resume)


class PlaybackSession(Event, frozen=True, kw_only=True, tag="playback_session"):
    """A session accepted (the reply to :class:`PlaybackStart`)."""

    session: str
    prefix: str  # events on <prefix>.md.> and <prefix>.ref.>, the end marker on <prefix>.end
    status_subject: str
    control_subject: str
    speed: str
    start_ns: int
    end_ns: int
    expected: int  # stored events in the range (market + reference), before the snapshot at start
    state: PlaybackState
    control_token: str = ""  # the secret every PlaybackControl of this session must carry; never published


class PlaybackControl(Event, frozen=True, kw_only=True, tag="playback_control"):
    action: ControlAction
    token: str = ""  # PlaybackSession.control_token: a control without it is refused


class PlaybackStatus(Event, frozen=True, kw_only=True, tag="playback_status"):
    """Progress of a session; ``lag`` is how late events go out against their schedule (paced
    speeds; 0 at ``max``)."""

    session: str
    state: PlaybackState
    sent: int = 0
    expected: int = 0
    sim_ts: int | None = None  # ts_event of the last event sent
    lag_ms: float = 0.0  # of the last event sent
    lag_p99_ms: float = 0.0  # over the session so far
    rate: float = 0.0  # events/s since the previous status
    reason: str | None = None
    ts: int


class PlaybackEnd(Event, frozen=True, kw_only=True, tag="playback_end"):
    """The last message of a session on ``<prefix>.end``: nothing follows it."""

    session: str
    state: PlaybackState  # finished | cancelled | failed
    sent: int
    reason: str | None = None
    ts: int


PLAYBACK_TYPES: tuple[type[Event], ...] = (PlaybackStart, PlaybackSession, PlaybackControl, PlaybackStatus, PlaybackEnd)


def parse_speed(text: str) -> float:
    """``"1x"``, ``"10x"``, ``"0.5x"``, ``"2"`` -> the factor; ``"max"`` -> ``inf``. ValueError for
    anything else, zero or a negative speed."""
    m = _SPEED.fullmatch(text or "")
    if m is None:
        raise ValueError(f"speed {text!r} is not <N>x or max (e.g. 1x, 10x, 0.5x, max)")
    if m.group(1):
        return math.inf
    factor = float(m.group(2))
    if factor <= 0 or not math.isfinite(factor):
        raise ValueError(f"speed {text!r} must be more than 0")
    return factor
