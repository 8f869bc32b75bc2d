"""End to end latency at a steady rate: vendor frame -> plain subscriber on ``md.>`` (issue #16).

A nats-server with the declared streams (``provision_url``, as ``marketbus provision`` does),
plain nats-py subscribers on ``md.`` subjects in processes of their own (each notes every
message's arrival time and its ``Nats-Msg-Id``), and, paced at ``--rate`` events/s:

- **marketbus**: at each frame's due time, the frame's bytes (a Sitagri ``marketPrice`` push, the
  live websocket path, one event per frame) go through ``decode_push`` + ``push`` (the normalizer)
  and ``JetStreamPublisher.publish_event`` (subject, ``codec`` encode, header block, pipelined
  JetStream publish with its ack), as the ingestor does;
- **reference** (same run, same rate, other events of the same corpus): a bare pipelined
  JetStream publish of the already encoded payload with nats-py (``nc.publish`` with an ack
  inbox and the same headers, ``codec.headers_for``: the same bytes on the wire, so the plain
  subscriber, which parses every header, has the same work for both), nothing else: the
  single-event reference of the ingest benches (``bench/common.py``), paced.

Latency is measured two ways: from the moment the frame is taken (``ts_recv``, the event's own
receive time) and from the frame's scheduled time (due time on the rate's grid: it adds the
pacing's lateness, so a path that falls behind is not let off by measuring from when it got
round to an event: no coordinated omission).

By default (``--mode processes``) each path runs in a process of its own (``--child``: its own
connection and event loop), both paced at ``--rate`` at the same time from one start time, into
the same nats-server and the same plain subscriber: both see the same host at the same moment,
and neither shares a loop or a socket with the other. Each path's events are the Sitagri pushes
of its own half of the corpus, one millisecond apart in event time (so no two share an id). A
path whose pacing falls behind (the host preempted it) handles its due events back to back; the
reference then takes the loop turn its client's flusher needs on the same bound as the marketbus
publisher (``--ref-yield``). Reported: p50, p99, p99.9 and max from the frame and from the
scheduled time, each marketbus percentile's ratio to the reference's, each path's in-process
split, and each child's CPU time per event (user / system).

The earlier in-process designs stay for comparison: ``--mode interleave`` (one paced stream,
events alternating between the paths: the reference then shares the marketbus path's loop and
socket writes, so its ratio is close to 1 by construction) and ``--mode alternate`` (rounds of
``--seconds`` per path; on this shared 2-core host it measured the load's swings: p99 ratios
0.21-9.6 across runs). In those, the process's own GC collections while the paths run are
printed (``--no-gc`` turns the GC off, a diagnosis). ``E2E_PROFILE=1``: each child's cProfile.

Run: ``.venv/bin/python bench/e2e_latency.py [--rate 5000] [--seconds 5] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "shared"), str(HERE)]

REF_SOURCE = "sitaref"  # the reference's subjects: md.<kind>.sitaref.<venue>.<symbol>

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
    await nc.subscribe(sys.argv[4] if len(sys.argv) > 4 else "md.>", cb=on_msg)
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


class WireTrace:
    """When the client's flusher hands bytes to the socket (nats-py writes its pending buffer with
    one writelines per flush; splits "publish returned -> on the wire" from "on the wire ->
    subscriber"), and how many acks came back."""

    def __init__(self, nc: Any) -> None:
        self.writes: list[int] = []
        self.acks = 0
        transport = nc._transport
        writelines = transport.writelines

        def traced_writelines(data: object) -> None:
            self.writes.append(time.time_ns())
            writelines(data)

        transport.writelines = traced_writelines

    async def on_ack(self, _msg: object) -> None:
        self.acks += 1


async def child(path: str, url: str, rate: int, per_path: int, warm: int, ref_yield: str) -> None:
    """``--child <path>``: one path alone in this process, on its own connection and event loop
    (the default ``--mode processes`` runs one child per path at the same time). Prepares its
    events, runs ``warm`` of them paced (not counted), prints ``ready``, waits for the start time
    (a line on stdin, ns since the epoch, the same for both children), runs ``per_path`` events
    paced at ``rate`` from it, and prints one line per event: id, due, frame, publish returned,
    normalizer returned (0 for the reference), the client's socket write that carried it (0 if
    none was seen)."""
    import nats
    import peer_cryptofeed as pc

    from marketbus.contracts import codec, subjects
    from marketbus.runtime.publisher import MAX_WRITE_DELAY_S, JetStreamPublisher
    from services.ingest_sitagri import normalize as sg

    max_write_delay_ns = int(MAX_WRITE_DELAY_S * 1e9)
    count = warm + per_path
    trades = pc.corpus(2 * count)
    t_ms = trades[0]["T"]
    # one millisecond of its own per event: Sitagri's id is the symbol's trade time, and two
    # trades of a symbol in one millisecond (~20% of this corpus at this size) would share one
    pushes = pc.sitagri_pushes([dict(t, T=t_ms + i) for i, t in enumerate(trades)])
    # the paths take disjoint halves of the corpus: no id is sent by both
    pushes = pushes[:count] if path == "marketbus" else pushes[count:]
    ref_msgs = []
    if path == "reference":
        for raw in pushes:
            e = sg.push(sg.decode_push(raw), time.time_ns())
            # its own source token in the subject (as long as "sitagri"), for its own subscriber
            subject = subjects.for_event(e).replace(".sitagri.", f".{REF_SOURCE}.", 1)
            ref_msgs.append((subject, codec.encode(e), codec.headers_for(e)))
    gc.collect()
    gc.freeze()  # the corpus is the benchmark's, not the path's (see the module docstring)
    nc = await nats.connect(url)
    pub = await JetStreamPublisher(nc).start() if path == "marketbus" else None
    trace = WireTrace(nc)
    writes, on_ack = trace.writes, trace.on_ack

    inbox = nc.new_inbox() + "."
    if pub is None:  # the reference's acks, on an inbox of its own connection
        await nc.subscribe(inbox + "*", cb=on_ack, pending_msgs_limit=-1, pending_bytes_limit=-1)
    decode, push = sg.decode_push, sg.push
    interval = 1e9 / rate
    records: list[tuple[str, int, int, int, int, int]] = []
    # When the pacing is late (the host preempted the process), the marketbus path runs as an
    # ingestor handles queued frames: back to back, its publisher bounding the wait for the socket
    # itself (one loop turn when the flush it asked for is MAX_WRITE_DELAY_S old). The reference
    # (--ref-yield): "bounded" (default) takes a loop turn on the same bound, the same write
    # batching with none of the marketbus work; "each" a loop turn per late event (a socket
    # write each: more CPU, which a saturated host makes later); "never" none (nats-py's flusher
    # then writes only once the late loop has caught up: messages wait in the client's buffer)
    ref_yield = "never" if pub is not None else ref_yield

    async def run(first: int, n: int, t0: int) -> None:
        turned = 0
        for k in range(n):
            i = first + k
            due = t0 + int(k * interval)
            now = time.time_ns()
            if now < due:
                await asyncio.sleep((due - now) / 1e9)
                turned = now
            elif ref_yield == "each" or (ref_yield == "bounded" and now - turned > max_write_delay_ns):
                await asyncio.sleep(0)  # late: one loop turn anyway (the client's flusher writes)
                turned = now
            frame_ns = time.time_ns()
            if pub is not None:
                event = push(decode(pushes[i]), frame_ns)
                normalized = time.time_ns()
                await pub.publish_event(event)
                mid = event.id
            else:
                subject, payload, headers = ref_msgs[i]
                await nc.publish(subject, payload, reply=f"{inbox}{i}", headers=headers)
                normalized = 0
                mid = headers["Nats-Msg-Id"]
            records.append((mid, due, frame_ns, time.time_ns(), normalized, len(writes)))

    await run(0, warm, time.time_ns() + 10_000_000)
    await (pub.flush() if pub is not None else nc.flush())
    records.clear()
    print("ready", flush=True)
    start_at = int(await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
    profile = None
    if os.environ.get("E2E_PROFILE"):  # diagnosis: top own-time functions of the paced run, on stderr
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    cpu, times0 = time.process_time(), os.times()
    await run(warm, per_path, start_at)
    cpu, times1 = time.process_time() - cpu, os.times()
    if profile is not None:
        import pstats

        profile.disable()
        sys.stderr.write(f"== profile of {path}\n")
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(14)
    await (pub.flush() if pub is not None else nc.flush())
    await asyncio.sleep(0.2)
    stats = ""
    if pub is not None:
        await pub.close()
        stats = f" published {pub.published} retries {pub.retries} duplicates {pub.duplicates} failed {pub.failed}"
    sys.stderr.write(f"{path}: messages received by its connection {nc.stats['in_msgs']}, sent {nc.stats['out_msgs']}"
                     f"{stats}\n")
    await nc.close()
    out = [f"cpu {cpu:.6f} {trace.acks} {times1.user - times0.user:.3f} {times1.system - times0.system:.3f}\n"]
    for mid, due, frame_ns, returned, normalized, k in records:
        out.append(f"{mid} {due} {frame_ns} {returned} {normalized} {writes[k] if k < len(writes) else 0}\n")
    sys.stdout.write("".join(out))


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def report(lat: dict[str, dict[str, list[float]]], split: dict[str, list[float]], rate: int, expected: int,
           acks: int, mode: str) -> None:
    """The table (p50, p99, p99.9, max; each marketbus figure's ratio to the reference's same
    percentile), then the in-process split."""
    got = {p: len(v["frame"]) for p, v in lat.items()}
    print(
        "| figure (ms; subscriber in its own process) | p50 | p99 | p99.9 | max | delivered "
        "| ratio to the reference: p50 / **p99** / p99.9 (target p99 <= 1.5) |"
    )
    print("|---|---|---|---|---|---|---|")
    for path, label in (("marketbus", "marketbus: Sitagri push -> normalize -> JetStreamPublisher"),
                        ("reference", "reference: bare nats-py pipelined JetStream publish of encoded events")):
        for k, since in (("frame", "from the frame"), ("due", "from its scheduled time")):
            v, r = lat[path][k], lat["reference"][k]
            ratio = (f"{statistics.median(v) / statistics.median(r):.2f} / **{pct(v, 0.99) / pct(r, 0.99):.2f}** / "
                     f"{pct(v, 0.999) / pct(r, 0.999):.2f}" if path == "marketbus" else "-")
            print(f"| {label}, {since}, {rate:,} ev/s, mode {mode} | {statistics.median(v):.2f} | {pct(v, 0.99):.2f} | "
                  f"{pct(v, 0.999):.2f} | {max(v):.2f} | {got[path]:,}/{expected:,} | {ratio} |")
    print(f"| (reference acks received: {acks:,}) | | | | | | |")
    for label, v in (("marketbus: frame -> publish call returned", lat["marketbus"]["inproc"]),
                     ("  of which the normalizer", split["normalize"]),
                     ("  of which publish_event", split["publish"]),
                     ("reference: frame -> publish call returned", lat["reference"]["inproc"]),
                     ("marketbus: publish returned -> socket write", lat["marketbus"]["to_wire"]),
                     ("reference: publish returned -> socket write", lat["reference"]["to_wire"]),
                     ("marketbus: socket write -> subscriber", lat["marketbus"]["after_wire"]),
                     ("reference: socket write -> subscriber", lat["reference"]["after_wire"])):
        if v:
            print(f"in-process, {label}, ms: p50 {statistics.median(v):.3f} p99 {pct(v, 0.99):.3f} "
                  f"max {max(v):.3f}; over 1 ms: {sum(x > 1 for x in v) / len(v):.2%}")


async def processes(args: argparse.Namespace) -> None:
    """``--mode processes`` (default): each path in its own process at ``--rate``, both at the
    same time, a plain subscriber process for each (see the module docstring)."""
    from marketbus.runtime.natsserver import NatsServer
    from marketbus.runtime.provision import provision_url

    per_path = int(args.rate * args.seconds * args.rounds)
    warm = args.rate // 2
    tmp = Path(tempfile.mkdtemp(prefix="marketbus-e2e-"))
    server = NatsServer(data_dir=tmp / "nats", port=0).start()
    procs: dict[str, subprocess.Popen[str]] = {}
    subs: dict[str, subprocess.Popen[str]] = {}
    try:
        await provision_url(server.url)
        (tmp / "sub.py").write_text(SUBSCRIBER)
        # a plain subscriber per path, each in its own process (one for both would receive twice
        # the rate, and on a busy host fall behind on both alike)
        for path, subject in (("marketbus", "md.*.sitagri.>"), (("reference", f"md.*.{REF_SOURCE}.>"))):
            subs[path] = subprocess.Popen([sys.executable, str(tmp / "sub.py"), server.url, str(per_path + warm),
                                           str(args.seconds * args.rounds + 90), subject],
                                          stdout=subprocess.PIPE, text=True)
        for one in subs.values():
            assert one.stdout is not None
            assert one.stdout.readline().strip() == "ready"
        for path in ("marketbus", "reference"):
            procs[path] = subprocess.Popen(
                [sys.executable, __file__, "--child", path, "--url", str(server.url), "--rate", str(args.rate),
                 "--seconds", str(args.seconds), "--rounds", str(args.rounds),
                 "--ref-yield", args.ref_yield],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for proc in procs.values():
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        start_at = time.time_ns() + 100_000_000
        outs = {}
        for proc in procs.values():
            assert proc.stdin is not None
            proc.stdin.write(f"{start_at}\n")
            proc.stdin.flush()
        for path, proc in procs.items():
            outs[path], _ = proc.communicate(timeout=args.seconds * args.rounds + 120)
        out = "".join(one.communicate(timeout=120)[0] for one in subs.values())
    finally:
        for proc in [*procs.values(), *subs.values()]:
            if proc.poll() is None:
                proc.kill()
        server.cleanup()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    arrived = dict(line.split() for line in out.splitlines())
    split: dict[str, list[float]] = {"normalize": [], "publish": []}
    lat: dict[str, dict[str, list[float]]] = {
        p: {"frame": [], "due": [], "inproc": [], "to_wire": [], "after_wire": []} for p in ("marketbus", "reference")
    }
    cpu, acks, twice, user_sys = {}, 0, {}, {}
    for path, text in outs.items():
        lines = text.splitlines()
        _, cpu_s, n_acks, user_s, sys_s = lines[0].split()
        cpu[path] = float(cpu_s)
        user_sys[path] = (float(user_s), float(sys_s))
        acks += int(n_acks) if path == "reference" else 0
        rows = [line.split() for line in lines[1:]]
        # an id sent twice (two trades of a symbol in the same millisecond have one Sitagri id;
        # the plain subscriber sees both): its arrival cannot be told apart, left out
        seen = Counter(r[0] for r in rows)
        twice[path] = sum(n for n in seen.values() if n > 1)
        for mid, due, frame_ns, returned, normalized, wire in rows:
            if mid not in arrived or seen[mid] > 1:
                continue
            recv = int(arrived[mid])
            lat[path]["frame"].append((recv - int(frame_ns)) / 1e6)
            lat[path]["due"].append((recv - int(due)) / 1e6)
            lat[path]["inproc"].append((int(returned) - int(frame_ns)) / 1e6)
            if int(wire):
                lat[path]["to_wire"].append((int(wire) - int(returned)) / 1e6)
                lat[path]["after_wire"].append((recv - int(wire)) / 1e6)
            if int(normalized):
                split["normalize"].append((int(normalized) - int(frame_ns)) / 1e6)
                split["publish"].append((int(returned) - int(normalized)) / 1e6)
    report(lat, split, args.rate, per_path, acks, f"processes, reference loop turns {args.ref_yield}")
    print("events left out, their id sent twice (two trades of a symbol in one millisecond): "
          + ", ".join(f"{p} {n:,}" for p, n in twice.items()))
    span = args.seconds * args.rounds
    print("| CPU time of each path's process over its paced run (user / system) | " + "; ".join(
        f"{p} {c:.2f} s = {c / per_path * 1e6:.1f} µs an event, {c / span:.0%} of a core ({u:.2f} / {y:.2f} s)"
        for (p, c), (u, y) in zip(cpu.items(), user_sys.values(), strict=True))
        + f" | | | | | marketbus / reference {cpu['marketbus'] / cpu['reference']:.2f} |")
    print(f"| load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} | | | | | | |")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--bare-publish", action="store_true",
                    help="diagnosis: the marketbus path publishes with nats-py, not JetStreamPublisher")
    ap.add_argument("--no-fast-path", action="store_true",
                    help="diagnosis: JetStreamPublisher on nats-py's public publish (no pre-built HPUB frames)")
    ap.add_argument("--yield-each", action="store_true",
                    help="diagnosis: when the pacing is late, yield to the event loop between events anyway")
    ap.add_argument("--no-gc", action="store_true", help="diagnosis: the cyclic GC off while the paths run")
    ap.add_argument("--mode", choices=("processes", "interleave", "alternate"), default="processes",
                    help="processes: each path in its own process, both at --rate at the same time (default); "
                         "interleave: one paced stream in this process, events alternating between the paths; "
                         "alternate: rounds of --seconds per path in this process")
    ap.add_argument("--ref-yield", choices=("bounded", "each", "never"), default="bounded",
                    help="processes mode: the reference's loop turns when its pacing is late (see child())")
    ap.add_argument("--child", choices=("marketbus", "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        await child(args.child, args.url, args.rate, int(args.rate * args.seconds * args.rounds), args.rate // 2,
                    args.ref_yield)
        return
    if args.mode == "processes":
        await processes(args)
        return

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
    # the same bytes as the marketbus path sends (its three headers too: the subscriber parses them)
    ref_msgs = [(subjects.for_event(e), codec.encode(e), codec.headers_for(e)) for e in ref_events]
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
        if args.no_fast_path:
            from marketbus.runtime import natsprivate

            natsprivate.AVAILABLE = False
        # when the client's flusher hands the bytes to the socket (nats-py writes its pending
        # buffer with one writelines per flush): splits "publish returned -> on the wire" from
        # "on the wire -> subscriber" (server, subscriber process, host)
        trace = WireTrace(nc)
        writes, on_ack = trace.writes, trace.on_ack

        await nc.subscribe("_INBOX.e2eref.>", cb=on_ack)
        decode, push, publish_event = sg.decode_push, sg.push, pub.publish_event
        sent: dict[str, tuple[str, int, int, int]] = {}  # id -> (path, due ns, frame ns, publish returned ns)
        interval = 1e9 / args.rate
        queued_at: dict[str, int] = {}
        busy: dict[str, list[float]] = {}  # alternate mode: the process's CPU share during each round
        normalized: dict[str, int] = {}  # id -> when the normalizer returned (the marketbus path)

        async def run(paths: tuple[str, ...], first: int, count: int) -> None:
            """``count`` events from ``first``, one every ``interval``, event k on ``paths[k % len]``."""
            t0 = time.time_ns() + 20_000_000
            n_paths = len(paths)
            for k in range(count):
                i = first + k
                path = paths[k % n_paths]
                due = t0 + int(k * interval)
                now = time.time_ns()
                if now < due:
                    await asyncio.sleep((due - now) / 1e9)
                elif args.yield_each:
                    await asyncio.sleep(0)  # late: still one loop turn per event (the flusher's)
                frame_ns = time.time_ns()
                if path == "marketbus":
                    event = push(decode(pushes[i]), frame_ns)
                    normalized[event.id] = time.time_ns()
                    if args.bare_publish:  # diagnosis: the normalizer's event, published without JetStreamPublisher
                        await nc.publish(subjects.for_event(event), codec.encode(event), reply=f"_INBOX.e2eref.m{i}",
                                         headers=codec.headers_for(event))
                    else:
                        await publish_event(event)
                    mid = event.id
                else:
                    subject, payload, headers = ref_msgs[i]
                    await nc.publish(subject, payload, reply=f"_INBOX.e2eref.{i}", headers=headers)
                    mid = headers["Nats-Msg-Id"]
                sent[mid] = (path, due, frame_ns, time.time_ns())
                queued_at[mid] = len(writes)  # its bytes go out with the next write
            await asyncio.sleep(0.2)

        # GC pauses while the paths run (the process's own, not the host's)
        pauses: list[tuple[int, int]] = []  # (generation, duration ns)
        gc_start = [0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                gc_start[0] = time.perf_counter_ns()
            elif info["generation"] >= 1:
                pauses.append((info["generation"], time.perf_counter_ns() - gc_start[0]))

        await run(("marketbus", "reference"), 0, 2 * warm)
        sent.clear()
        gc.callbacks.append(on_gc)
        if args.no_gc:
            gc.disable()
        first = 2 * warm
        if args.mode == "interleave":
            # one paced stream, events alternating between the paths: both see the same host
            await run(("marketbus", "reference"), first, 2 * per_path * args.rounds)
        else:
            for r in range(args.rounds):
                # ABBA order (marketbus first in even rounds, the reference in odd ones): a trend
                # of the host's load, or the first round's start-up, does not fall on one path
                for path in ("marketbus", "reference") if r % 2 == 0 else ("reference", "marketbus"):
                    cpu, wall = time.process_time(), time.perf_counter()
                    await run((path,), first, per_path)
                    busy.setdefault(path, []).append((time.process_time() - cpu) / (time.perf_counter() - wall))
                    first += per_path
        gc.callbacks.remove(on_gc)
        gc.enable()
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
    split: dict[str, list[float]] = {"normalize": [], "publish": []}
    lat: dict[str, dict[str, list[float]]] = {
        p: {"frame": [], "due": [], "inproc": [], "to_wire": [], "after_wire": []} for p in ("marketbus", "reference")
    }
    for line in out.splitlines():
        mid, recv = line.split()
        if mid in sent:
            path, due, frame_ns, returned = sent[mid]
            lat[path]["frame"].append((int(recv) - frame_ns) / 1e6)
            lat[path]["due"].append((int(recv) - due) / 1e6)
            lat[path]["inproc"].append((returned - frame_ns) / 1e6)
            k = queued_at[mid]
            if k < len(writes):
                lat[path]["to_wire"].append((writes[k] - returned) / 1e6)
                lat[path]["after_wire"].append((int(recv) - writes[k]) / 1e6)
            if mid in normalized:
                split["normalize"].append((normalized[mid] - frame_ns) / 1e6)
                split["publish"].append((returned - normalized[mid]) / 1e6)
    report(lat, split, args.rate, per_path * args.rounds, trace.acks, args.mode)
    for gen in (1, 2):
        d = [ns / 1e6 for g, ns in pauses if g == gen]
        if d:
            print(
                f"GC generation {gen} collections during the paths: {len(d)}, max {max(d):.2f} ms, "
                f"total {sum(d):.1f} ms"
            )
    for path, shares in busy.items():
        print(f"CPU of this process during the {path} rounds: " + ", ".join(f"{x:.0%}" for x in shares))
    print(f"mode {args.mode}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    asyncio.run(main())
