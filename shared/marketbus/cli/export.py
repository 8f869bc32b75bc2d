"""``marketbus export create|status|wait|download|cancel|list``: export jobs from the command line.

Jobs are created and followed over NATS (``export.create``, ``export.get``, progress events on
``export.status.<id>``); artifacts are downloaded over the export HTTP API's signed URLs and
checked against their sha256.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

from .common import NatsUrlOption, connect

app = typer.Typer(help="Export history to files (CSV.gz / Parquet) and download them.", no_args_is_help=True)
console = Console()

DEFAULT_API_URL = "http://127.0.0.1:8710"
TERMINAL = ("succeeded", "failed", "cancelled")
_REL = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str) -> int:
    """Nanoseconds, ISO 8601 (UTC when naive), ``now``, or relative to now: ``-15m``, ``-2h``, ``-1d``."""
    text = text.strip()
    if text == "now":
        return time.time_ns()
    if text.lstrip("-").isdigit():
        return int(text)
    rel = _REL.match(text)
    if rel:
        return time.time_ns() - int(float(rel.group(1)) * _UNIT[rel.group(2)] * 1e9)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: use nanoseconds, ISO 8601, 'now' or -15m/-2h/-1d") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.replace(microsecond=0).timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def parse_selector(text: str) -> Any:
    from marketbus.contracts.jobs import StreamSelector

    parts = (text.split(".") + ["*"] * 4)[:4] if text else ["*"] * 4
    return StreamSelector(kind=parts[0] or "*", source=parts[1] or "*", venue=parts[2] or "*", symbol=parts[3] or "*")


def _fail(reply: bytes) -> None:
    try:
        body = msgspec.json.decode(reply)
    except msgspec.DecodeError:
        body = None
    if isinstance(body, dict) and "error" in body and "job_id" not in body:
        console.print(f"[red]error[/] ({body.get('status', '?')}): {body['error']}")
        raise typer.Exit(2)


async def _request(nats_url: str | None, subject: str, payload: bytes, timeout: float = 10.0) -> Any:
    from marketbus.contracts import codec
    from marketbus.contracts.jobs import ExportJob

    nc = await connect(nats_url)
    try:
        try:
            msg = await nc.request(subject, payload, timeout=timeout)
        except Exception as exc:  # noqa: BLE001
            console.print(f"[red]no export orchestrator answered on {subject}[/] ({type(exc).__name__})")
            raise typer.Exit(2) from None
        _fail(msg.data)
        return codec.decode_as(msg.data, ExportJob)
    finally:
        await nc.drain()


def _fmt_ts(ns: int | None) -> str:
    if not ns:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _show(job: Any) -> None:
    sel = job.request.selector
    table = Table(title=f"export {job.job_id}", show_header=False)
    color = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(job.state, "cyan")
    table.add_row("state", f"[{color}]{job.state}[/]" + (f"  ({job.reason})" if job.reason else ""))
    table.add_row("streams", f"{sel.kind}.{sel.source}.{sel.venue}.{sel.symbol}")
    table.add_row("range", f"{_fmt_ts(job.request.start_ns)} .. {_fmt_ts(job.request.end_ns)}")
    table.add_row("format", job.request.format)
    table.add_row("progress", f"{job.percent:.1f}%  {job.rows:,} rows  {job.bytes:,} bytes")
    for a in job.artifacts:
        table.add_row("artifact", f"{a.filename}  {a.rows:,} rows  {a.bytes:,} B  sha256 {a.sha256[:16]}…")
    for c in job.coverage:
        ranges = ", ".join(f"{_fmt_ts(r.start_ns)}..{_fmt_ts(r.end_ns)}" for r in c.covered) or "none"
        gaps = f"  gaps: {len(c.gaps)}" if c.gaps else ""
        table.add_row("coverage", f"{c.kind}.{c.source}.{c.venue}.{c.symbol}: {ranges} ({c.rows:,} rows){gaps}")
    console.print(table)


@app.command()
def create(
    selector: str = typer.Argument(..., help="kind.source.venue.symbol, '*' = any, e.g. 'trade.finx.*.BTC-USD'"),
    start: str = typer.Option(..., "--start", help="ns, ISO 8601, 'now' or relative (-1h)"),
    end: str = typer.Option("now", "--end", help="ns, ISO 8601, 'now' or relative (-5m)"),
    fmt: str = typer.Option("parquet", "--format", "-f", help="parquet | csv.gz"),
    columns: str = typer.Option("", "--columns", help="comma-separated columns (default: every field)"),
    fill_gaps: bool = typer.Option(True, "--fill-gaps/--no-fill-gaps", help="ask the ingestors to replay holes first"),
    max_rows_per_file: int = typer.Option(1_000_000, "--max-rows-per-file"),
    key: str = typer.Option("", "--idempotency-key", help="default: a new random key"),
    wait_done: bool = typer.Option(False, "--wait", help="follow the job with a progress bar until it ends"),
    nats_url: str = NatsUrlOption,
) -> None:
    """Create an export job (idempotent per --idempotency-key); prints its id."""
    from marketbus.contracts import codec, subjects
    from marketbus.contracts.jobs import ExportRequest

    if fmt not in ("parquet", "csv.gz"):
        raise typer.BadParameter("--format must be parquet or csv.gz")
    request = ExportRequest(
        idempotency_key=key or str(uuid.uuid4()), selector=parse_selector(selector), start_ns=parse_time(start),
        end_ns=parse_time(end), format=fmt,  # type: ignore[arg-type]
        columns=[c.strip() for c in columns.split(",") if c.strip()] or None, fill_gaps=fill_gaps,
        max_rows_per_file=max_rows_per_file,
    )
    job = asyncio.run(_request(nats_url, subjects.EXPORT_CREATE, codec.encode(request)))
    console.print(f"export [bold]{job.job_id}[/] {job.state}")
    if wait_done:
        raise typer.Exit(asyncio.run(_wait(nats_url, job.job_id, 0)))


@app.command()
def status(job_id: str, as_json: bool = typer.Option(False, "--json"), nats_url: str = NatsUrlOption) -> None:
    """Show a job: state, progress, artifacts, coverage."""
    from marketbus.contracts import codec, subjects

    job = asyncio.run(_request(nats_url, subjects.EXPORT_GET, msgspec.json.encode({"job_id": job_id})))
    if as_json:
        console.print_json(codec.encode(job).decode())
    else:
        _show(job)


@app.command("list")
def list_jobs(nats_url: str = NatsUrlOption) -> None:
    """List export jobs."""
    from marketbus.contracts import codec, subjects
    from marketbus.contracts.jobs import ExportJob

    async def run() -> list[Any]:
        nc = await connect(nats_url)
        try:
            msg = await nc.request(subjects.EXPORT_LIST, b"{}", timeout=10)
        finally:
            await nc.drain()
        return [codec.decode_as(j, ExportJob) for j in msgspec.json.decode(msg.data, type=dict[str, list[msgspec.Raw]])["jobs"]]

    table = Table("job", "state", "streams", "rows", "files", "created")
    for job in asyncio.run(run()):
        s = job.request.selector
        table.add_row(job.job_id, job.state, f"{s.kind}.{s.source}.{s.venue}.{s.symbol}", f"{job.rows:,}",
                      str(len(job.artifacts)), _fmt_ts(job.created_ts))
    console.print(table)


@app.command()
def cancel(job_id: str, nats_url: str = NatsUrlOption) -> None:
    """Cancel a queued or running job."""
    from marketbus.contracts import subjects

    job = asyncio.run(_request(nats_url, subjects.EXPORT_CANCEL, msgspec.json.encode({"job_id": job_id})))
    console.print(f"export {job.job_id}: {job.state}")


async def _wait(nats_url: str | None, job_id: str, timeout: float) -> int:
    from marketbus.contracts import codec, subjects
    from marketbus.contracts.jobs import ExportJob

    nc = await connect(nats_url)
    latest: dict[str, Any] = {}
    changed = asyncio.Event()

    async def on_status(msg: Any) -> None:
        with_job = codec.decode_as(msg.data, ExportJob)
        if "job" not in latest or with_job.updated_ts >= latest["job"].updated_ts:
            latest["job"] = with_job
            changed.set()

    sub = await nc.subscribe(subjects.export_status(job_id), cb=on_status)
    try:
        msg = await nc.request(subjects.EXPORT_GET, msgspec.json.encode({"job_id": job_id}), timeout=10)
        _fail(msg.data)
        first = codec.decode_as(msg.data, ExportJob)
        if "job" not in latest or first.updated_ts >= latest["job"].updated_ts:
            latest["job"] = first
        deadline = time.monotonic() + timeout if timeout else None
        with Progress(TextColumn("[bold]{task.fields[state]}"), BarColumn(), TaskProgressColumn(),
                      TextColumn("{task.fields[rows]} rows"), TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task(job_id, total=100, state=first.state, rows="0")
            while True:
                job = latest["job"]
                progress.update(task, completed=job.percent, state=job.state, rows=f"{job.rows:,}")
                if job.state in TERMINAL:
                    break
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), timeout=2.0)
                except asyncio.TimeoutError:
                    # events may be missed (reconnects): poll as well
                    msg = await nc.request(subjects.EXPORT_GET, msgspec.json.encode({"job_id": job_id}), timeout=10)
                    polled = codec.decode_as(msg.data, ExportJob)
                    if polled.updated_ts >= latest["job"].updated_ts:
                        latest["job"] = polled
                if deadline and time.monotonic() > deadline:
                    console.print(f"[yellow]still {latest['job'].state} after {timeout}s[/]")
                    return 3
    finally:
        await sub.unsubscribe()
        await nc.drain()
    _show(latest["job"])
    return 0 if latest["job"].state == "succeeded" else 1


@app.command()
def wait(
    job_id: str,
    timeout: float = typer.Option(0, "--timeout", help="give up after this many seconds (0 = never)"),
    nats_url: str = NatsUrlOption,
) -> None:
    """Follow a job with a progress bar until it ends (exit 0 = succeeded, 1 = failed/cancelled)."""
    raise typer.Exit(asyncio.run(_wait(nats_url, job_id, timeout)))


def _api_key(value: str | None) -> str:
    if value:
        return value
    env = os.environ.get("MARKETBUS_EXPORT_API_KEY") or os.environ.get("MARKETBUS_EXPORT_API_KEYS", "")
    return env.split(",")[0].strip() or "mb_export_dev_key"


@app.command()
def download(
    job_id: str,
    out: Path = typer.Option(Path("."), "--out", "-o", help="directory for the files"),
    api_url: str = typer.Option(DEFAULT_API_URL, "--api-url", envvar="MARKETBUS_EXPORT_API_URL"),
    api_key: str = typer.Option(None, "--api-key", envvar="MARKETBUS_EXPORT_API_KEY", help="default: the dev key"),
    manifest: bool = typer.Option(True, "--manifest/--no-manifest", help="download manifest.json too"),
) -> None:
    """Download a succeeded job's artifacts (signed URLs), verifying sizes and sha256."""
    raise typer.Exit(asyncio.run(run_download(job_id, out, api_url, _api_key(api_key), manifest)))


async def run_download(job_id: str, out: Path, api_url: str, api_key: str, manifest: bool = True) -> int:
    import httpx

    out.mkdir(parents=True, exist_ok=True)
    async with httpx.AsyncClient(base_url=api_url.rstrip("/"), timeout=60) as client:
        resp = await client.get(f"/v1/exports/{job_id}/download", headers={"X-Api-Key": api_key})
        if resp.status_code != 200:
            try:
                err = resp.json()["error"]["message"]
            except Exception:  # noqa: BLE001
                err = resp.text[:200]
            console.print(f"[red]cannot download {job_id}[/]: {resp.status_code} {err}")
            return 2
        body = resp.json()
        items = list(body["artifacts"])
        if manifest and body.get("manifest"):
            items.append({**body["manifest"], "bytes": None, "sha256": None})
        bad = 0
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      console=console) as progress:
            overall = progress.add_task(f"{job_id} ({body['count']} files)", total=body["total_bytes"] or None)
            for art in items:
                task = progress.add_task(f"  {art['filename']}", total=art.get("bytes"))
                h = hashlib.sha256()
                dest = out / Path(art["filename"]).name
                tmp = dest.with_name(dest.name + ".part")
                size = 0
                async with client.stream("GET", art["url"]) as r:
                    if r.status_code != 200:
                        console.print(f"[red]{art['filename']}: HTTP {r.status_code}[/]")
                        bad += 1
                        continue
                    with open(tmp, "wb") as fh:
                        async for chunk in r.aiter_bytes(1 << 20):
                            fh.write(chunk)
                            h.update(chunk)
                            size += len(chunk)
                            progress.update(task, advance=len(chunk))
                            if art.get("bytes") is not None:
                                progress.update(overall, advance=len(chunk))
                if art.get("sha256") and (h.hexdigest() != art["sha256"] or size != art["bytes"]):
                    console.print(f"[red]{art['filename']}: checksum mismatch[/]")
                    tmp.unlink(missing_ok=True)
                    bad += 1
                    continue
                tmp.replace(dest)
    console.print(f"{len(items) - bad} file(s) in {out}" + (f", [red]{bad} failed[/]" if bad else ""))
    return 1 if bad else 0
