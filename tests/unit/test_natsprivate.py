"""The nats-py private API marketbus relies on (marketbus.runtime.natsprivate): this test fails
loudly when a nats-py release changes it, and shows the fast path and its fallback both work on
a real server."""

from __future__ import annotations

from typing import Any

import nats
import pytest

from marketbus.runtime import natsprivate
from tests.helpers import wait_for


def test_the_installed_nats_py_has_the_private_api_marketbus_uses() -> None:
    assert natsprivate.PROBLEMS == [], (
        f"nats-py {natsprivate.NATS_PY_VERSION} changed its private API: {natsprivate.PROBLEMS}. The publisher and "
        "the history writer now take the slow public paths: adapt marketbus/runtime/natsprivate.py")
    assert natsprivate.AVAILABLE
    assert natsprivate.NATS_PY_VERSION in natsprivate.TESTED_VERSIONS, (
        f"nats-py {natsprivate.NATS_PY_VERSION} is not among the versions natsprivate was checked against "
        f"{natsprivate.TESTED_VERSIONS}: run the history and publisher tests and add it")


def test_a_changed_private_api_is_reported() -> None:
    class Renamed:
        async def _send_command(self, cmd: bytes) -> None: ...  # a parameter less

    class Bare:
        pass

    found = natsprivate.problems(
        methods=((Renamed, "_send_command", ["self", "cmd", "priority"]), (Renamed, "_flush_pending", ["self"])),
        attributes=((Bare, "_id", Bare), (Bare, "_x", lambda: 1 / 0)))
    assert len(found) == 4, found
    assert "Renamed._send_command('self', 'cmd')" in found[0] and "gone" in found[1]
    assert "no ._id" in found[2] and "ZeroDivisionError" in found[3]


@pytest.mark.parametrize("fast", [True, False])
async def test_frames_written_on_the_fast_path_or_published_on_the_fallback_arrive(
        nats_url: str, monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    from services.history_writer.consumer import ack_all  # the frames' user: +ACK to many replies

    monkeypatch.setattr(natsprivate, "AVAILABLE", fast)
    nc = await nats.connect(nats_url)
    got: list[tuple[str, bytes]] = []

    async def cb(msg: Any) -> None:
        got.append((msg.subject, msg.data))

    try:
        inbox = nc.new_inbox()
        await nc.subscribe(inbox + ".>", cb=cb)
        await nc.flush()
        assert natsprivate.fast_path(nc) is fast
        await ack_all(nc, [f"{inbox}.{i}".encode() for i in range(5000)], b"+WPI")
        await wait_for(lambda: len(got) == 5000, timeout=10, what="5000 acks")
        assert {data for _, data in got} == {b"+WPI"} and got[-1][0] == f"{inbox}.4999"
        if fast:  # one frame by hand, flushed only when no flush is queued
            await natsprivate.write_frame(nc, f"PUB {inbox}.raw 2\r\nhi\r\n".encode())
            await natsprivate.flush(nc, only_if_idle=True)
            await wait_for(lambda: (f"{inbox}.raw", b"hi") in got, timeout=5, what="the raw frame")
    finally:
        await nc.close()
