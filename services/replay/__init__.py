"""Replay: stored history put back on the bus (or streamed over HTTP/WebSocket) at market pace,
byte for byte the messages live consumers receive, under a session's own prefix."""
