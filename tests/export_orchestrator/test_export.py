"""Exports of data published on the bus round-trip exactly (rows, decimals); artifacts, manifest
and progress events; idempotency; columns; failures with a reason."""

from __future__ import annotations

import hashlib
import json
import uuid

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from marketbus.contracts import codec, subjects
from marketbus.contracts.invariants import canonical_decimal
from marketbus.contracts.jobs import ExportJob, ExportRequest, StreamSelector

from .conftest import (
    T0,
    Harness,
    S,
    download_all,
    export_three_files,
    make_trades,
    publish,
    read_artifact,
    stored_names,
    table_rows,
    trade_rows,
)


async def test_round_trip_csv_and_parquet(harness: Harness) -> None:
    await harness.start_writer()
    orch = await harness.start_orchestrator()
    btc = make_trades("testsrc", "XCHG", "BTC-USD", [T0 + i * S // 10 for i in range(3000)])
    eth = make_trades("testsrc", "XCHG", "ETH-USD", [T0 + i * S // 7 for i in range(2000)], seed=5)
    other = make_trades("othersrc", "XCHG", "BTC-USD", [T0 + i * S for i in range(50)])
    await publish(harness.nc, btc + eth + other)
    await harness.wait_stored("trade.*.*.*", 5050)

    statuses: list[ExportJob] = []
    async def collect(msg) -> None:
        statuses.append(codec.decode_as(msg.data, ExportJob))

    sub = await harness.nc.subscribe(subjects.ALL_EXPORT_STATUS, cb=collect)
    start, end = T0, T0 + 400 * S
    req = ExportRequest(idempotency_key=str(uuid.uuid4()), selector=StreamSelector(kind="trade", source="testsrc"),
                        start_ns=start, end_ns=end, format="csv.gz", max_rows_per_file=1500, fill_gaps=False)
    job = await harness.create(req)
    assert job.state == "queued" and job.job_id.startswith("exp_")
    again = await harness.create(req)  # same idempotency key: the same job
    assert again.job_id == job.job_id
    done = await harness.wait_state(job.job_id)
    assert done.state == "succeeded", done.reason
    assert done.rows == 5000 and done.percent == 100.0
    assert len(done.artifacts) == 4  # 3000 BTC rows -> 2 files of 1500; 2000 ETH -> 1500 + 500
    assert all(a.rows <= 1500 for a in done.artifacts)

    _body, files = await download_all(orch.api_url, job.job_id)
    tables = []
    for art in done.artifacts:
        data = files[art.filename]
        assert len(data) == art.bytes and hashlib.sha256(data).hexdigest() == art.sha256
        tables.append(read_artifact(art.filename, data))
    assert table_rows(tables) == trade_rows(btc + eth)
    # CSV: decimals as the canonical text marketbus published (not 18 places)
    csv_prices = {p for t in tables for p in t.column("price").to_pylist()}
    assert csv_prices == {str(canonical_decimal(t.price)) for t in btc + eth}
    manifest = json.loads(files["manifest.json"])
    assert manifest["rows"] == 5000 and manifest["format"] == "csv.gz" and manifest["schema_version"] >= 1
    assert manifest["decimals"] == "exact decimal text of the vendor (strings)"
    assert {a["sha256"] for a in manifest["artifacts"]} == {a.sha256 for a in done.artifacts}
    assert {(c["symbol"], c["rows"]) for c in manifest["coverage"]} == {("BTC-USD", 3000), ("ETH-USD", 2000)}
    assert "price" in manifest["columns"]["trade"]

    # progress events were published, ending with the final state
    await harness.nc.flush()
    mine = [s for s in statuses if s.job_id == job.job_id]
    assert [s.state for s in mine][0] == "queued" and mine[-1].state == "succeeded"
    assert any(s.state == "running" and 0 < s.rows < 5000 for s in mine)
    await sub.unsubscribe()

    # parquet, a sub-range, chosen columns
    req2 = ExportRequest(
        idempotency_key=str(uuid.uuid4()),
        selector=StreamSelector(kind="trade", source="testsrc", symbol="BTC-USD"),
        start_ns=T0 + 10 * S,
        end_ns=T0 + 20 * S,
        format="parquet",
        columns=["ts_event", "price", "size", "id"],
        fill_gaps=False,
    )
    job2 = await harness.wait_state((await harness.create(req2)).job_id)
    assert job2.state == "succeeded", job2.reason
    _, files2 = await download_all(orch.api_url, job2.job_id)
    table = pq.read_table(__import__("io").BytesIO(files2[job2.artifacts[0].filename]))
    assert table.column_names == ["ts_event", "price", "size", "id"]
    expected = [t for t in btc if T0 + 10 * S <= t.ts_event < T0 + 20 * S]
    assert table.num_rows == len(expected) == 100
    # Parquet: prices and sizes are exact decimal columns (the history tables' decimal(38, 18)),
    # each value the one published, in the history order
    assert table.schema.field("price").type == pa.decimal128(38, 18)
    assert table.schema.field("size").type == pa.decimal128(38, 18)
    assert table.column("price").to_pylist() == [t.price for t in expected]
    assert table.column("size").to_pylist() == [t.size for t in expected]
    assert table.column("id").to_pylist() == [t.id for t in expected]
    assert json.loads(files2["manifest.json"])["decimals"] == "exact decimal(38, 18) columns"


async def test_bad_requests_fail_or_are_refused(harness: Harness) -> None:
    await harness.start_writer()
    await harness.start_orchestrator()
    key = str(uuid.uuid4())
    req = ExportRequest(idempotency_key=key, selector=StreamSelector(kind="trade"), start_ns=T0, end_ns=T0 + S,
                        columns=["price", "no_such_column"])
    msg = await harness.nc.request(subjects.EXPORT_CREATE, codec.encode(req), timeout=5)
    err = msgspec.json.decode(msg.data)  # the contracts' ErrorReply
    assert err["type"] == "error_reply" and err["code"] == "bad_request" and "no_such_column" in err["message"]
    ok = ExportRequest(idempotency_key=key, selector=StreamSelector(kind="trade"), start_ns=T0, end_ns=T0 + S)
    job = await harness.create(ok)
    other = msgspec.structs.replace(ok, end_ns=T0 + 2 * S)  # same key, different request
    msg = await harness.nc.request(subjects.EXPORT_CREATE, codec.encode(other), timeout=5)
    assert msgspec.json.decode(msg.data)["code"] == "conflict"
    done = await harness.wait_state(job.job_id)
    assert done.state == "succeeded" and done.rows == 0 and done.artifacts == []


async def test_artifacts_in_the_nats_object_store(harness: Harness) -> None:
    await harness.start_writer()
    orch = await harness.start_orchestrator(artifact_store="nats", artifact_bucket="export_artifacts")  # provisioned
    trades, job = await export_three_files(harness, "objsrc", "SOL-USD", "parquet")
    obs = await harness.nc.jetstream().object_store("export_artifacts")
    assert sorted(o.name for o in await obs.list()) == stored_names(job)
    _, files = await download_all(orch.api_url, job.job_id)
    tables = [read_artifact(a.filename, files[a.filename]) for a in job.artifacts]
    assert table_rows(tables) == trade_rows(trades)
    assert not any((orch.settings.artifact_path).glob("*/*.parquet"))  # nothing on local disk
