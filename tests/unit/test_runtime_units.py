"""Runtime pieces that need no server: settings, secrets in logs, back-off, rate limiting."""

from __future__ import annotations

import asyncio
import io
import logging
import random
import time
from collections.abc import Iterator

import msgspec
import pytest

from marketbus.runtime.backoff import Backoff
from marketbus.runtime.logging import register_secret, setup_logging
from marketbus.runtime.ratelimit import MultiWindowLimiter, RateLimiter
from marketbus.runtime.settings import Secret, Settings, SettingsError, env_names, load_settings


class DemoSettings(Settings, kw_only=True):
    env_prefix = "DEMO_"
    api_key: Secret
    port: int = 8080
    tickers: list[str] = msgspec.field(default_factory=lambda: ["BTC"])
    ratio: float = 0.5
    verbose: bool = False


def test_settings_are_typed_from_the_environment() -> None:
    s = load_settings(DemoSettings, {"DEMO_API_KEY": "k-123456", "DEMO_PORT": "9000", "DEMO_TICKERS": "BTC, ETH",
                                     "DEMO_VERBOSE": "true", "DEMO_RATIO": "1.5"})
    assert (s.port, s.tickers, s.verbose, s.ratio) == (9000, ["BTC", "ETH"], True, 1.5)
    assert s.api_key.get() == "k-123456"
    assert load_settings(DemoSettings, {"DEMO_API_KEY": "x", "DEMO_TICKERS": '["A","B"]'}).tickers == ["A", "B"]


def test_missing_and_bad_values_name_the_variable() -> None:
    with pytest.raises(SettingsError, match="DEMO_API_KEY is required"):
        load_settings(DemoSettings, {})
    with pytest.raises(SettingsError, match="DEMO_PORT='http' is invalid"):
        load_settings(DemoSettings, {"DEMO_API_KEY": "x", "DEMO_PORT": "http"})


def test_secrets_never_show_in_repr_and_can_come_from_files(tmp_path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cr3t-from-file\n")
    s = load_settings(DemoSettings, {"DEMO_API_KEY_FILE": str(key_file)})
    assert s.api_key.get() == "s3cr3t-from-file"
    assert "s3cr3t" not in repr(s) and "s3cr3t" not in str(s.redacted())
    with pytest.raises(SettingsError, match="DEMO_API_KEY_FILE"):
        load_settings(DemoSettings, {"DEMO_API_KEY_FILE": str(tmp_path / "missing")})


def test_env_names_lists_every_variable() -> None:
    assert env_names(DemoSettings)["api_key"] == "DEMO_API_KEY"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """setup_logging configures the process (root handlers and level, the noisy libraries'
    levels): put it back, or every later test on this xdist worker would log at INFO into a
    StringIO and see other loggers' INFO lines in its caplog."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in ("uvicorn.access", "nats.aio.client", "httpx", "httpcore")}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, was in noisy.items():
            logging.getLogger(name).setLevel(was)


@pytest.mark.usefixtures("restored_logging")
def test_registered_secrets_are_scrubbed_from_log_lines() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "json", stream=stream)
    register_secret("tok-abcdef-123")
    logging.getLogger("t").info("connecting to wss://x/streamer/tok-abcdef-123", extra={"url": "tok-abcdef-123"})
    line = stream.getvalue()
    assert "tok-abcdef-123" not in line and "**********" in line and '"level":"info"' in line


def test_backoff_grows_with_jitter_and_resets() -> None:
    b = Backoff(initial_s=1, max_s=8, rng=random.Random(1))
    ceilings = [1, 2, 4, 8, 8, 8]
    delays = [b.next_delay() for _ in ceilings]
    assert all(0.05 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jitter
    b.reset()
    assert b.attempt == 0


async def test_rate_limiter_paces_to_the_rate() -> None:
    limiter = RateLimiter(rate=200, burst=10)
    start = time.monotonic()
    for _ in range(50):
        await limiter.acquire()
    elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 1.0  # 10 free (burst) + 40 at 200/s = 0.2 s


async def test_multi_window_limiter_enforces_every_window() -> None:
    limiter = MultiWindowLimiter([(1000, 1), (20, 0.2)])  # the tighter window rules
    start = time.monotonic()
    for _ in range(40):
        await limiter.acquire()
    assert time.monotonic() - start >= 0.18


async def test_penalize_honours_retry_after() -> None:
    limiter = RateLimiter(rate=100, burst=100)
    limiter.penalize(0.2)
    start = time.monotonic()
    await asyncio.wait_for(limiter.acquire(), 2)
    assert time.monotonic() - start >= 0.18


async def test_cancel_and_wait_stops_a_loop_that_swallows_its_cancellation() -> None:
    """A loop whose first cancellation is lost (as Python 3.11's wait_for may lose one) is
    cancelled again, and the caller does not hang; a well-behaved task simply ends."""
    import asyncio

    from marketbus.runtime.tasks import cancel_and_wait

    rounds = 0

    async def stubborn() -> None:
        nonlocal rounds
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if rounds == 0:  # the first cancellation is swallowed: the loop goes on
                    rounds += 1
                    continue
                raise

    async def polite() -> None:
        await asyncio.sleep(10)

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(polite())]
    await asyncio.sleep(0.05)
    left = await asyncio.wait_for(cancel_and_wait(tasks, again_after_s=0.1), timeout=5)
    assert not left and all(t.cancelled() for t in tasks) and rounds == 1
