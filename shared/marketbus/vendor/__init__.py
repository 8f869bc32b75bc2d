"""The vendor machinery, once: what every ingestor (and the order router) needs to talk to a
vendor, independent of which vendor it is.

- :mod:`.limits` — endpoints and rate limits as declared data per vendor (:class:`VendorSpec`),
  and one process-wide limiter per vendor built from them (:class:`LimiterHold`).
- :mod:`.http` — the HTTP-library-neutral pieces (:func:`parse_retry_after`, :func:`classify`) and
  :class:`VendorHttp`, the httpx client layer: pacing, Retry-After, back-off, retry/refuse.
- :mod:`.cursor` — :class:`CursorStore`, typed cursors in the ``ingest_state`` KV bucket under
  ``<source>.``, with keys encoded safely (:func:`kv_key`).
- :mod:`.dedup` — :class:`RecentIds`, de-duplication bounded by count and by age.
- :mod:`.gaps` — :class:`GapTracker`: an outage becomes a ``gap`` then ``resynced`` feed status.
- :mod:`.timeparse` — one set of time parsers, all to integer nanoseconds (sub-second kept).
- :mod:`.frames` — :class:`FrameGuard`: a declared normalizer error is counted, logged and
  dead-lettered in one place.

Adding a vendor: see docs/development.md, "Add a fifth vendor".
"""
