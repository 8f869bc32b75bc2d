"""End to end latency at a steady rate: vendor frame -> plain subscriber on ``md.>`` (issue #16).

A nats-server with the declared streams (``provision_url``, as ``marketbus provision`` does), a
plain nats-py subscriber on ``md.>`` in its own process (it notes each message's arrival time and
its ``Nats-Msg-Id``), and in this process, paced at ``--rate`` events/s:

- **marketbus**: at each frame's due time, the frame's bytes (a Sitagri ``marketPrice`` push, the
  live websocket path, one event per frame) go through ``decode_push`` + ``push`` (the normalizer)
  and ``JetStreamPublisher.publish_event`` (subject, ``codec`` encode, header block, pipelined
  JetStream publish with its ack), as the ingestor does;
- **reference** (same run, same rate, other events of the same corpus): a bare pipelined
  JetStream publish of the already encoded payload with nats-py (``nc.publish`` with an ack
  inbox and a ``Nats-Msg-Id`` header), nothing else.

Latency is measured two ways: from the moment the frame is taken (``ts_recv``, the event's own
receive time) and from the frame's scheduled time (due time on the rate's grid: it adds the
pacing's lateness, which is the machine's). Rounds alternate marketbus and reference.

Run: ``.venv/bin/python bench/e2e_latency.py [--rate 5000] [--seconds 5] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "shared"), str(HERE)]

SUBSCRIBER = r"""
import asyncio, sys, time
import nats

async def main(url, expected):
    nc = await nats.connect(url)
    got = []
    done = asyncio.Event()
    async def on_msg(msg):
        got.append((msg.headers.get("Nats-Msg-Id") if msg.headers else "", time.time_ns()))
        if len(got) >= expected:
            done.set()
    await nc.subscribe("md.>", cb=on_msg)
    await nc.flush()
    print("ready", flush=True)
    try:
        await asyncio.wait_for(done.wait(), timeout=float(sys.argv[3]))
    except asyncio.TimeoutError:
        pass
    await nc.close()
    sys.stdout.write("".join(f"{i} {t}\n" for i, t in got))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import nats
    import peer_cryptofeed as pc

    from marketbus.contracts import codec, subjects
    from marketbus.runtime.natsserver import NatsServer
    from marketbus.runtime.provision import provision_url
    from marketbus.runtime.publisher import JetStreamPublisher
    from services.ingest_sitagri import normalize as sg

    per_path = int(args.rate * args.seconds)
    warm = args.rate // 2  # half a second of each path first, not counted (first-use costs)
    n_total = per_path * 2 * args.rounds + 2 * warm
    pushes = pc.sitagri_pushes(pc.corpus(n_total))
    # the reference's payloads: the same kind of events, encoded before the clock starts
    ref_events = [sg.push(sg.decode_push(raw), time.time_ns()) for raw in pushes]
    ref_msgs = [(subjects.for_event(e), codec.encode(e), {"Nats-Msg-Id": e.id}) for e in ref_events]
    del ref_events
    # the corpus (100k+ tuples and dicts) is the benchmark's, not the path's: out of the GC's
    # sight, or each full collection walks it and its pause lands on whichever path runs then
    gc.collect()
    gc.freeze()

    tmp = Path(tempfile.mkdtemp(prefix="marketbus-e2e-"))
    server = NatsServer(data_dir=tmp / "nats", port=0).start()
    sub = None
    try:
        await provision_url(server.url)
        (tmp / "sub.py").write_text(SUBSCRIBER)
        sub = subprocess.Popen([sys.executable, str(tmp / "sub.py"), server.url, str(n_total),
                                str(args.rounds * 2 * args.seconds + 60)], stdout=subprocess.PIPE, text=True)
        assert sub.stdout is not None
        assert sub.stdout.readline().strip() == "ready"
        nc = await nats.connect(server.url)
        pub = await JetStreamPublisher(nc).start()
        acks = 0

        async def on_ack(_msg: object) -> None:
            nonlocal acks
            acks += 1

        await nc.subscribe("_INBOX.e2eref.>", cb=on_ack)
        decode, push, publish_event = sg.decode_push, sg.push, pub.publish_event
        sent: dict[str, tuple[str, int, int]] = {}  # id -> (path, due ns, frame ns)
        interval = 1e9 / args.rate

        async def run(path: str, first: int, count: int) -> None:
            t0 = time.time_ns() + 20_000_000
            for k in range(count):
                i = first + k
                due = t0 + int(k * interval)
                now = time.time_ns()
                if now < due:
                    await asyncio.sleep((due - now) / 1e9)
                frame_ns = time.time_ns()
                if path == "marketbus":
                    event = push(decode(pushes[i]), frame_ns)
                    sent[event.id] = (path, due, frame_ns)
                    await publish_event(event)
                else:
                    subject, payload, headers = ref_msgs[i]
                    sent[headers["Nats-Msg-Id"]] = (path, due, frame_ns)
                    await nc.publish(subject, payload, reply=f"_INBOX.e2eref.{i}", headers=headers)
            await asyncio.sleep(0.2)

        await run("marketbus", 0, warm)
        await run("reference", warm, warm)
        sent.clear()
        first = 2 * warm
        for _ in range(args.rounds):
            for path in ("marketbus", "reference"):
                await run(path, first, per_path)
                first += per_path
        await pub.flush()
        out, _ = sub.communicate(timeout=120)
        await pub.close()
        await nc.close()
    finally:
        if sub is not None and sub.poll() is None:
            sub.kill()
        server.cleanup()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    lat: dict[str, dict[str, list[float]]] = {p: {"frame": [], "due": []} for p in ("marketbus", "reference")}
    for line in out.splitlines():
        mid, recv = line.split()
        if mid in sent:
            path, due, frame_ns = sent[mid]
            lat[path]["frame"].append((int(recv) - frame_ns) / 1e6)
            lat[path]["due"].append((int(recv) - due) / 1e6)
    got = {p: len(v["frame"]) for p, v in lat.items()}
    print("| figure (ms; subscriber in its own process) | p50 | p99 | p99.9 | max | delivered | p99 ratio to the reference |")
    print("|---|---|---|---|---|---|---|")
    ref99 = {k: pct(lat["reference"][k], 0.99) for k in ("frame", "due")}
    for path, label in (("marketbus", "marketbus: Sitagri push -> normalize -> JetStreamPublisher"),
                        ("reference", "reference: bare nats-py pipelined JetStream publish of encoded events")):
        for k, since in (("frame", "from the frame"), ("due", "from its scheduled time")):
            v = lat[path][k]
            ratio = f"{pct(v, 0.99) / ref99[k]:.2f} (target <= 1.5)" if path == "marketbus" else "-"
            print(f"| {label}, {since}, {args.rate:,} ev/s | {statistics.median(v):.2f} | {pct(v, 0.99):.2f} | "
                  f"{pct(v, 0.999):.2f} | {max(v):.2f} | {got[path]:,}/{per_path * args.rounds:,} | {ratio} |")
    print(f"| (reference acks received: {acks:,}) | | | | | | |")


if __name__ == "__main__":
    asyncio.run(main())
