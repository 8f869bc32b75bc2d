"""A full disk under the data dir: the writer stops acking (the batch is kept with +WPI,
not redelivered), /healthz says 503 with the reason, and everything is stored once space
returns: nothing lost, nothing twice. The data dir is a small tmpfs mounted for the test
(needs root; skipped elsewhere)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from marketbus.runtime.natsserver import NatsServer
from services.history_writer.app import HistoryWriter
from tests.helpers import wait_for

from .common import trade, unique_symbol, writer_overrides
from .test_outage import _healthy, _ids, _publish, _stored, _unhealthy


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """A private nats-server per test: the held messages and consumers of this test are its own."""
    return nats_server.url


@pytest.fixture
def small_disk() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = Path(tempfile.mkdtemp(prefix="marketbus-disk-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        shutil.rmtree(mount, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        shutil.rmtree(mount, ignore_errors=True)


def _fill(path: Path) -> None:
    """Write ``path`` until the file system is full."""
    chunk = b"\0" * 65536
    with open(path, "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    with contextlib.suppress(OSError), open(path.with_suffix(".tail"), "wb") as fh:  # the last bytes too
        while True:
            fh.write(b"\0" * 512)
            fh.flush()


@pytest.mark.timeout(90)
async def test_a_full_disk_stops_acking_and_resumes_when_space_returns(nc, js, nats_url, small_disk) -> None:
    sym = unique_symbol("D")
    durable = f"d{uuid.uuid4().hex[:8]}"
    first = [trade(sym, i) for i in range(100)]
    second = [trade(sym, i) for i in range(100, 400)]
    writer = HistoryWriter(**writer_overrides(nats_url, "iceberg", str(small_disk / "history"), None, durable,
                                              ack_wait_s=1.0, store_retry_max_s=1.0))
    await writer.start()
    filler = small_disk / "filler"
    try:
        await _publish(nc, first)
        await wait_for(lambda: _stored(writer, sym, len(first)), 15, what="the first events stored")

        await asyncio.to_thread(_fill, filler)
        await _publish(nc, second)
        await wait_for(lambda: _unhealthy(writer), 15, what="/healthz 503 while the disk is full")
        await asyncio.sleep(2.5)  # over twice the ack wait: the kept batch is not redelivered, not acked
        info = await js.consumer_info("MD", f"{durable}_md")
        assert info.num_ack_pending > 0 and info.num_redelivered == 0, info

        filler.unlink()
        filler.with_suffix(".tail").unlink(missing_ok=True)
        await wait_for(lambda: _stored(writer, sym, len(first) + len(second)), 20, what="stored once space returned")
        await wait_for(lambda: _healthy(writer), 10, what="/healthz 200 again")
        assert sorted(await _ids(writer, sym)) == sorted(e.id for e in first + second)
        info = await js.consumer_info("MD", f"{durable}_md")
        assert info.num_ack_pending == 0
    finally:
        await writer.stop()
