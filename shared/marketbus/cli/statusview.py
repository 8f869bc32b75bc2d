"""The status table: one row per feed of every running service, from their heartbeats."""

from __future__ import annotations

import time

from rich.table import Table

from marketbus.contracts.status import ServiceHeartbeat

STATE_STYLE = {"connected": "green", "resynced": "green", "gap": "yellow", "stale": "yellow", "disconnected": "red",
               "subscribed": "green", "paused": "dim", "unsubscribed": "dim"}


def _age(ts_ns: int | None, now_ns: int) -> str:
    if ts_ns is None:
        return "-"
    seconds = max(0.0, (now_ns - ts_ns) / 1e9)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def render(heartbeats: dict[str, ServiceHeartbeat], title: str = "marketbus", max_feeds: int | None = None) -> Table:
    """The table; ``max_feeds`` keeps the busiest feeds of each service (the live view must fit
    the terminal) and sums up the rest in one row."""
    now = time.time_ns()
    table = Table(title=title, expand=False)
    for column in ("service", "state", "feed", "feed state", "events/s", "events", "last event"):
        table.add_column(column, justify="right" if column in ("events/s", "events") else "left")
    for key in sorted(heartbeats):
        hb = heartbeats[key]
        stale = now - hb.ts > 15e9
        service_state = "stale" if stale else hb.state
        service_style = "red" if stale or hb.state == "degraded" else "green"
        if not hb.feeds:
            table.add_row(hb.service, f"[{service_style}]{service_state}[/]", "-", "-", "-", "-", "-")
        feeds = hb.feeds
        hidden = []
        if max_feeds is not None and len(feeds) > max_feeds:
            ranked = sorted(feeds, key=lambda f: (f.state != "connected", -f.events_per_s, -f.events_total))
            feeds, hidden = sorted(ranked[:max_feeds], key=lambda f: f.feed), ranked[max_feeds:]
        for i, feed in enumerate(feeds):
            style = STATE_STYLE.get(feed.state, "white")
            table.add_row(
                hb.service if i == 0 else "", f"[{service_style}]{service_state}[/]" if i == 0 else "",
                feed.feed, f"[{style}]{feed.state}[/]", f"{feed.events_per_s:,.1f}", f"{feed.events_total:,}",
                _age(feed.last_event_ts, now),
            )
        if hidden:
            table.add_row(
                "", "", f"[dim]… {len(hidden)} more feeds[/]", "", f"{sum(f.events_per_s for f in hidden):,.1f}",
                f"{sum(f.events_total for f in hidden):,}", "",
            )
    if not heartbeats:
        table.add_row("(no service has reported yet)", "", "", "", "", "", "")
    return table
