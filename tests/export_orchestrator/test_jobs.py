"""Completeness (gap -> replay -> complete coverage), restarts and takeovers, cancel."""

from __future__ import annotations

import json
import uuid

from marketbus.contracts import codec, subjects
from marketbus.contracts.jobs import ExportRequest, ReplayReply, ReplayRequest, StreamSelector
from marketbus.runtime.publisher import JetStreamPublisher
from services.export_orchestrator.jobs import JobStore

from .conftest import (
    T0,
    Harness,
    S,
    download_all,
    make_trades,
    publish,
    read_artifact,
    table_rows,
    trade_rows,
    wait_for,
)

MIN = 60 * S


async def test_gap_is_replayed_before_export(harness: Harness) -> None:
    await harness.start_writer()
    orch = await harness.start_orchestrator()
    grid = [T0 + i * 10 * S for i in range(720)]  # 2 hours, one trade every 10 s
    full = make_trades("replaysrc", "XCHG", "BTC-USD", grid)
    hole = (T0 + 30 * MIN, T0 + 90 * MIN)
    live = [t for t in full if not hole[0] <= t.ts_event < hole[1]]
    # a source that cannot replay, with the same hole
    other_full = make_trades("deadsrc", "XCHG", "BTC-USD", grid)
    other_live = [t for t in other_full if not hole[0] <= t.ts_event < hole[1]]
    await publish(harness.nc, live + other_live)
    await harness.wait_stored("trade.*.*.*", len(live) + len(other_live))

    # a small replay responder standing in for the replaysrc ingestor
    requests: list[ReplayRequest] = []
    pub = await JetStreamPublisher(harness.nc).start()

    async def on_replay(msg) -> None:
        req = codec.decode_as(msg.data, ReplayRequest)
        requests.append(req)
        events = [t for t in make_trades(req.source, req.venue, req.symbol, grid, replay=True)
                  if req.start_ns <= t.ts_event < req.end_ns]
        for i in range(0, len(events), 200):
            await pub.publish_batch(events[i:i + 200])
        await pub.flush()
        await msg.respond(codec.encode(ReplayReply(request_id=req.request_id, accepted=True, events=len(events))))

    sub = await harness.nc.subscribe(subjects.replay("replaysrc"), cb=on_replay)
    try:
        req = ExportRequest(idempotency_key=str(uuid.uuid4()), selector=StreamSelector(kind="trade", venue="XCHG"),
                            start_ns=T0, end_ns=T0 + 120 * MIN, format="csv.gz")
        job = await harness.wait_state((await harness.create(req)).job_id, timeout=40)
    finally:
        await sub.unsubscribe()
        await pub.close()
    assert job.state == "succeeded", job.reason
    # exactly one replay asked, for the hole of the stream that can replay
    assert len(requests) == 1
    r = requests[0]
    assert (r.kind, r.source, r.venue, r.symbol) == ("trade", "replaysrc", "XCHG", "BTC-USD")
    assert r.start_ns <= hole[0] and r.end_ns >= hole[1] - 10 * S and r.end_ns <= hole[1]
    # the export holds the replayed rows; the dead source's hole stays a hole
    _, files = await download_all(orch.api_url, job.job_id)
    tables = [read_artifact(a.filename, files[a.filename]) for a in job.artifacts]
    assert table_rows(tables) == trade_rows(full + other_live)
    manifest = json.loads(files["manifest.json"])
    cov = {c["source"]: c for c in manifest["coverage"]}
    assert cov["replaysrc"]["covered"] == [[T0, T0 + 7190 * S]] and cov["replaysrc"]["rows"] == 720
    assert len(cov["deadsrc"]["covered"]) == 2
    assert manifest["complete"] is False  # deadsrc could not be completed
    outcomes = {o["hole"][1]: o for o in manifest["replays"]}
    assert outcomes["replaysrc"]["accepted"] and outcomes["replaysrc"]["events"] == 360
    assert not outcomes["deadsrc"]["accepted"] and "cannot replay" in outcomes["deadsrc"]["reason"]


async def _slow_job(harness: Harness, rows: int) -> tuple[list, ExportRequest]:
    trades = make_trades("restartsrc", "XCHG", "BTC-USD", [T0 + i * S // 100 for i in range(rows)])
    await publish(harness.nc, trades, batch=1000)
    await harness.wait_stored("trade.restartsrc.*.*", rows)
    req = ExportRequest(idempotency_key=str(uuid.uuid4()), selector=StreamSelector(kind="trade", source="restartsrc"),
                        start_ns=T0, end_ns=T0 + 10**6 * S, format="parquet", max_rows_per_file=2000, fill_gaps=False)
    return trades, req


async def test_restart_resumes_from_checkpoint(harness: Harness) -> None:
    await harness.start_writer()
    slow = dict(throttle_rows_per_s=8000, read_batch_rows=1000)
    a = await harness.start_orchestrator(**slow)
    trades, req = await _slow_job(harness, 20_000)
    job = await harness.create(req)
    await wait_for(lambda: _rows_at_least(harness, job.job_id, 6000), timeout=20, what="a third of the job done")
    await harness.stop_orchestrator(a)  # graceful: the job goes back to the queue with its checkpoint
    kv = await harness.nc.jetstream().key_value("export_jobs")
    _, record = await JobStore(kv).get(job.job_id)
    assert record.state == "queued" and len(record.files) >= 2 and record.checkpoint.position is not None
    first_files = [f.filename for f in record.files]

    b = await harness.start_orchestrator()
    done = await harness.wait_state(job.job_id)
    assert done.state == "succeeded", done.reason
    assert done.rows == 20_000 and len(done.artifacts) == 10
    assert [a.filename for a in done.artifacts][: len(first_files)] == first_files  # kept, not redone
    _, files = await download_all(b.api_url, job.job_id)
    tables = [read_artifact(a.filename, files[a.filename]) for a in done.artifacts]
    assert table_rows(tables) == trade_rows(trades)  # nothing lost, nothing twice


async def test_crashed_worker_is_taken_over_after_its_lease(harness: Harness) -> None:
    await harness.start_writer()
    a = await harness.start_orchestrator(throttle_rows_per_s=8000, read_batch_rows=1000, lease_s=1.0)
    trades, req = await _slow_job(harness, 12_000)
    job = await harness.create(req)
    await wait_for(lambda: _rows_at_least(harness, job.job_id, 4000), timeout=20, what="part of the job done")

    async def no_release(*_: object) -> None:  # a crash: the lease is never handed back
        return None

    a.jobs.runner._release = no_release  # type: ignore[method-assign]
    await harness.stop_orchestrator(a)
    b = await harness.start_orchestrator(lease_s=1.0)
    done = await harness.wait_state(job.job_id)
    assert done.state == "succeeded", done.reason
    kv = await harness.nc.jetstream().key_value("export_jobs")
    _, record = await JobStore(kv).get(job.job_id)
    assert record.attempts == 2
    _, files = await download_all(b.api_url, job.job_id)
    tables = [read_artifact(x.filename, files[x.filename]) for x in done.artifacts]
    assert table_rows(tables) == trade_rows(trades)


async def test_two_orchestrators_share_the_queue_and_cancel(harness: Harness) -> None:
    await harness.start_writer()
    await harness.start_orchestrator(throttle_rows_per_s=5000, read_batch_rows=500, workers=1)
    await harness.start_orchestrator(throttle_rows_per_s=5000, read_batch_rows=500, workers=1)
    _trades, req = await _slow_job(harness, 6000)
    jobs = []
    for _ in range(4):
        r = ExportRequest(idempotency_key=str(uuid.uuid4()), selector=req.selector, start_ns=req.start_ns,
                          end_ns=req.end_ns, format="csv.gz", max_rows_per_file=2500, fill_gaps=False)
        jobs.append((await harness.create(r)).job_id)
    victim = jobs[-1]
    msg = await harness.nc.request(subjects.EXPORT_CANCEL, json.dumps({"job_id": victim}).encode(), timeout=5)
    assert codec.decode(msg.data).job_id == victim
    results = [await harness.wait_state(j, timeout=40) for j in jobs]
    assert [r.state for r in results[:3]] == ["succeeded"] * 3
    assert all(r.rows == 6000 and len(r.artifacts) == 3 for r in results[:3])
    assert results[3].state == "cancelled"
    kv = await harness.nc.jetstream().key_value("export_jobs")
    owners = set()
    for j in jobs[:3]:
        _, record = await JobStore(kv).get(j)
        assert record.attempts == 1  # each ran exactly once
        owners.add(record.files[0].filename)
    # both orchestrators worked (each has one worker; three jobs ran in parallel pairs)
    assert {o.jobs.jobs_done for o in harness.orchestrators} != {0} and sum(
        o.jobs.jobs_done for o in harness.orchestrators
    ) == 3


async def _rows_at_least(harness: Harness, job_id: str, n: int) -> bool:
    job = await harness.get(job_id)
    return job.state == "running" and job.rows >= n
