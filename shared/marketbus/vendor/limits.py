"""Endpoints and rate limits as declared data, one :class:`VendorSpec` per vendor (the way
cryptofeed declares an exchange class), and one limiter per vendor and process.

Every caller of a vendor in a process (the Digitex ingestor and the order router alike) paces with
the same :func:`shared_limiter`, built from the vendor's declared windows by
:func:`window_safe_limiter`, so two components cannot together exceed the vendor's limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from marketbus.runtime.ratelimit import SlidingWindowLimiter


@dataclass(frozen=True)
class RateWindow:
    """At most ``calls`` in any sliding window of ``per_s`` seconds (the vendor's own wording)."""

    calls: int
    per_s: float


@dataclass(frozen=True)
class VendorSpec:
    """What a vendor declares: its name (the ``source``), default base URL, the paths the code
    calls (``endpoints``, by name) and its documented rate windows."""

    source: str
    base_url: str
    limits: tuple[RateWindow, ...]
    endpoints: dict[str, str] = field(default_factory=dict)
    doc_url: str = ""

    def with_limits(self, *windows: RateWindow) -> VendorSpec:
        """The same vendor with other (e.g. tighter, advertised or configured) windows."""
        return VendorSpec(self.source, self.base_url, tuple(windows), self.endpoints, self.doc_url)


def per_second(rate: float) -> RateWindow:
    """A rate setting (calls per second, e.g. ``requests_per_s``) as a window: ``rate`` calls per
    second when it is at least 1 (rounded down: never more than asked), else one call per
    ``1 / rate`` seconds."""
    if rate <= 0:
        raise ValueError("a rate must be > 0")
    if rate >= 1:
        return RateWindow(int(rate), 1.0)
    return RateWindow(1, 1.0 / rate)


def window_safe_limiter(windows: tuple[RateWindow, ...] | list[RateWindow]) -> SlidingWindowLimiter:
    """The vendor counts sliding windows of arrivals. A token bucket (even at half the limit as
    burst and half as rate, b + r*T = limit) sits exactly at the limit and passes more once calls
    let through before an event-loop stall arrive with those let through after it: 429s under
    load. A :class:`SlidingWindowLimiter` counts each call from its send until a window after its
    reply, so no window of the vendor's ever sees more than the documented number of calls."""
    return SlidingWindowLimiter(limits_of(windows))


def limits_of(windows: tuple[RateWindow, ...] | list[RateWindow]) -> list[tuple[int, float]]:
    return [(w.calls, w.per_s) for w in windows]


def host_of(url: str) -> str:
    """``scheme://host:port`` of a URL: the vendor endpoint a limit is counted against."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def tighten(a: tuple[RateWindow, ...], b: tuple[RateWindow, ...]) -> tuple[RateWindow, ...]:
    """Both sets of windows at once: per window length, the lower number of calls."""
    calls: dict[float, int] = {}
    for window in (*a, *b):
        calls[window.per_s] = min(calls.get(window.per_s, window.calls), window.calls)
    return tuple(RateWindow(n, per_s) for per_s, n in sorted(calls.items()))


class _Shared:
    """The limiter of one vendor host in this process and who holds it."""

    def __init__(self, windows: tuple[RateWindow, ...]) -> None:
        self.windows = windows
        self.limiter = window_safe_limiter(windows)
        self.holds: list[LimiterHold] = []

    def repace(self) -> None:
        effective: tuple[RateWindow, ...] = ()
        for hold in self.holds:
            effective = tighten(effective, hold.windows)
        if effective and effective != self.windows:
            self.windows = effective
            self.limiter.set_limits(limits_of(effective))  # every holder sees them


_SHARED: dict[tuple[str, str], _Shared] = {}


class LimiterHold:
    """A hold on the process's limiter of a vendor host (``hold.limiter``): every component of a
    process calling that host (the Digitex ingestor and the order router alike) paces on the
    same buckets, and the tightest windows of the current holders apply. ``release()`` when the
    client closes; once nobody holds it, the next hold starts afresh (other windows, full
    buckets). Limits are per process: processes do not share a budget."""

    def __init__(self, spec: VendorSpec, url: str | None = None) -> None:
        self.key = (spec.source, host_of(url or spec.base_url))
        self.windows = spec.limits
        shared = _SHARED.get(self.key)
        if shared is None:
            shared = _SHARED[self.key] = _Shared(spec.limits)
        shared.holds.append(self)
        shared.repace()
        self._shared: _Shared | None = shared
        self.limiter = shared.limiter

    def tighten(self, *windows: RateWindow) -> None:
        """Narrow this holder's windows (e.g. the vendor advertised lower limits)."""
        self.windows = tighten(self.windows, windows)
        if self._shared is not None:
            self._shared.repace()

    def release(self) -> None:
        shared, self._shared = self._shared, None
        if shared is None:
            return  # released already
        shared.holds.remove(self)
        if not shared.holds:
            if _SHARED.get(self.key) is shared:
                del _SHARED[self.key]
        else:
            shared.repace()


# --- the four vendors ------------------------------------------------------------------------------
DIGITEX = VendorSpec(
    source="digitex",
    base_url="http://127.0.0.1:8703/dapi",
    limits=(RateWindow(50, 1.0), RateWindow(500, 60.0)),  # exchange_info.rate_limits: SECOND, MINUTE
    endpoints={"bot": "/v1/exchange/bot/", "exchange_info": "exchange_info/", "currency": "currency/",
               "markets": "markets/", "order_book": "order_book/", "recent_trades": "recent_trades/",
               "ohlcv": "history/ohlcv/"},
)

TICKSUPPLY = VendorSpec(
    source="ticksupply",
    base_url="http://127.0.0.1:8702/v1",
    limits=(RateWindow(10, 1.0),),  # our own pacing; the vendor answers 429 + Retry-After beyond it
)

SITAGRI = VendorSpec(
    source="sitagri",
    base_url="http://127.0.0.1:8704",
    limits=(RateWindow(20, 1.0),),
    endpoints={"api": "/api", "login": "/api/login", "keep_alive": "/api/keepAlive", "netbus": "/api/netbus"},
)

FINX = VendorSpec(
    source="finx",
    base_url="ws://127.0.0.1:8701",
    limits=(),  # a websocket in lock-step: one request in flight is the pacing
    endpoints={"streamer": "/streamer/{key}"},
)
