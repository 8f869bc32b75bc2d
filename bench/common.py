"""What several benchmarks share: a vendor sandbox in its own process (so its CPU is not the
benchmark's), started on a free port, and a wait until it answers; a fresh nats-server; the
single-event reference of the ingest benchmarks (:func:`raw_pipelined_rate`) and alternating
rounds with ratios to the same round's reference (:class:`Rounds`)."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared")]

from marketbus.runtime.http import free_port  # noqa: E402


def start_sandbox(name: str, env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m services.sandbox <name>`` on a free port; returns (process, "host:port")."""
    port = free_port()
    env = os.environ | {f"MARKETBUS_SANDBOX_{name.upper()}_PORT": str(port), "PYTHONPATH": f"{ROOT}:{ROOT / 'shared'}"}
    env |= env_extra or {}
    proc = subprocess.Popen([sys.executable, "-m", "services.sandbox", name], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"127.0.0.1:{port}"


async def wait_ready(url: str, deadline_s: float = 20) -> None:
    """Poll the sandbox's admin health route until it answers."""
    deadline = time.monotonic() + deadline_s
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            try:
                if (await http.get(f"{url}/_sandbox/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"sandbox at {url} did not start within {deadline_s}s")


class FreshNats:
    """``async with FreshNats() as url``: a fresh nats-server (its own data directory) with the
    marketbus streams, so no phase is de-duplicated against another's message ids."""

    async def __aenter__(self) -> str:
        import tempfile

        import nats

        from marketbus.contracts.streams import ensure_all
        from marketbus.runtime.natsserver import NatsServer

        self.dir = tempfile.TemporaryDirectory()
        self.server = NatsServer(data_dir=Path(self.dir.name), port=0).start()
        nc = await nats.connect(self.server.url)
        await ensure_all(nc.jetstream())
        await nc.close()
        return str(self.server.url)

    async def __aexit__(self, *exc: object) -> None:
        self.server.cleanup()
        self.dir.cleanup()


RAW_WINDOW = 8192  # messages in flight: the publisher's default max_inflight


async def raw_pipelined_rate(url: str, subjects: Sequence[str], payloads: Sequence[bytes],
                             window: int = RAW_WINDOW) -> tuple[float, float]:
    """The reference of every ``bench/ingest_*.py``: the bus's own limit for single events.

    Bare nats-py, on a connection of its own: ``publish`` of each pre-encoded payload on its
    subject with a reply inbox and a ``Nats-Msg-Id`` header (unique to this call), one wildcard
    subscription for the JetStream acks, at most ``window`` unacked; returns acked messages per
    second from the first publish to the last ack, and per second of this process's CPU time
    over the same span (on a busy host the wall rate follows the load; see :class:`Rounds`).
    Give it the encoded events of the path it is compared with (same subjects, sizes, count)."""
    import nats

    nc = await nats.connect(url)
    prefix = nc.new_inbox() + "."
    run = f"raw-{time.time_ns()}-"
    total = len(payloads)
    acked = 0
    done = asyncio.Event()
    slots = asyncio.Semaphore(window)

    async def on_ack(_msg: object) -> None:
        nonlocal acked
        acked += 1
        slots.release()
        if acked == total:
            done.set()

    await nc.subscribe(prefix + "*", cb=on_ack, pending_msgs_limit=-1, pending_bytes_limit=-1)
    began, cpu = time.perf_counter(), time.process_time()
    for i in range(total):
        await slots.acquire()
        await nc.publish(subjects[i], payloads[i], reply=f"{prefix}{i}", headers={"Nats-Msg-Id": f"{run}{i}"})
    await asyncio.wait_for(done.wait(), 120)
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    await nc.close()
    return total / elapsed, total / cpu


class Rounds:
    """Rates of alternating rounds (reference and paths measured in turn, so each round's
    paths see the same host) and each path's ratio to the reference of its own round.

    Each path also gives its rate per second of the benchmark process's CPU time (name
    ``<path>/cpu``): on a 2-core host shared with other work the wall rates swing with the load,
    the CPU cost per event much less (nats-server's CPU is not in it: the same for every path)."""

    def __init__(self) -> None:
        self.rates: dict[str, list[float]] = {}

    def add(self, name: str, rate: float | tuple[float, float]) -> None:
        """``rate``: events/s, or (events/s, events per CPU second)."""
        if isinstance(rate, tuple):
            rate, cpu = rate
            self.rates.setdefault(f"{name}/cpu", []).append(cpu)
        self.rates.setdefault(name, []).append(rate)

    def median(self, name: str) -> float:
        return statistics.median(self.rates[name])

    def ratios(self, name: str, reference: str) -> list[float]:
        return sorted(a / b for a, b in zip(self.rates[name], self.rates[reference], strict=True))

    def ratio_text(self, name: str, reference: str) -> str:
        """``median (min-max of N paired rounds)`` of the ratios to the same round's reference."""
        r = self.ratios(name, reference)
        text = f"{statistics.median(r):.2f} ({r[0]:.2f}-{r[-1]:.2f}, {len(r)} rounds)"
        if f"{name}/cpu" in self.rates and f"{reference}/cpu" in self.rates:
            c = self.ratios(f"{name}/cpu", f"{reference}/cpu")
            text += f"; CPU time {statistics.median(c):.2f} ({c[0]:.2f}-{c[-1]:.2f})"
        return text
