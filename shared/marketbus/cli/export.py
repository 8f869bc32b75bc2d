"""``marketbus export create|status|wait|download|cancel|list``: export jobs from the command line
(through ``marketbus.clients.ExportClient``).

Jobs are created and followed over NATS (``export.create``, ``export.get``, progress events on
``export.status.<id>``); artifacts are downloaded over the export HTTP API's signed URLs and
checked against their sha256.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from marketbus.clients import ExportClient
from marketbus.clients.exports import DEFAULT_API_URL, DEV_API_KEY
from marketbus.clients.selectors import parse_selector
from marketbus.contracts.jobs import ExportJob, ExportRequest
from marketbus.vendor.timeparse import ns_iso

from .common import NatsUrlOption, connect
from .output import (
    EXIT_CODES_HELP,
    REFUSED,
    check_not_negative,
    check_positive,
    fail,
    handled,
    json_line,
    print_table,
    progress_console,
    run,
)

app = typer.Typer(help="Export history to files (CSV.gz / Parquet) and download them.", no_args_is_help=True,
                  epilog=EXIT_CODES_HELP)
console = Console()
JsonOpt = typer.Option(False, "--json", help="print the job(s) as one JSON object per line")
JobIdArg = typer.Argument(..., help="the job id `marketbus export create` printed")

_REL = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str) -> int:
    """Nanoseconds, ISO 8601 (UTC when naive), ``now``, or relative to now: ``-15m``, ``-2h``, ``-1d``."""
    text = text.strip()
    if text == "now":
        return time.time_ns()
    if text.isdigit():
        return int(text)
    rel = _REL.match(text)
    if rel:
        return time.time_ns() - int(float(rel.group(1)) * _UNIT[rel.group(2)] * 1e9)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r}; use nanoseconds, ISO 8601, 'now' or -15m/-2h/-1d") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.replace(microsecond=0).timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def _fmt_ts(ns: int | None) -> str:
    if not ns:
        return "-"
    return ns_iso(ns, 3, sep=" ")


def _show(job: ExportJob) -> None:
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
    print_table(table, console)


async def _call(nats_url: str | None, method: str, *args: Any) -> Any:
    nc = await connect(nats_url)
    try:
        return await getattr(ExportClient(nc), method)(*args)
    finally:
        await nc.drain()


@app.command()
def create(
    selector: str = typer.Argument(..., help="kind.source.venue.symbol, '*' = any, e.g. 'trade.finx.*.BTC-USD'"),
    start: str = typer.Option(..., "--start", help="ns, ISO 8601, 'now' or relative (-1h)"),
    end: str = typer.Option("now", "--end", help="ns, ISO 8601, 'now' or relative (-5m)"),
    fmt: str = typer.Option("parquet", "--format", "-f", help="parquet | csv.gz"),
    columns: str = typer.Option("", "--columns", help="comma-separated columns (default: every field)"),
    schema: str = typer.Option("marketbus", "--schema", help="marketbus (the event's fields) | raw | normalized "
                               "(TickSupply's trade CSV columns)"),
    fill_gaps: bool = typer.Option(True, "--fill-gaps/--no-fill-gaps", help="ask the ingestors to replay holes first"),
    max_rows_per_file: int = typer.Option(1_000_000, "--max-rows-per-file",
                                          help="start a new file after this many rows"),
    key: str = typer.Option("", "--idempotency-key", help="default: a new random key"),
    wait_done: bool = typer.Option(False, "--wait", help="follow the job with a progress bar until it ends"),
    as_json: bool = JsonOpt,
    nats_url: str = NatsUrlOption,
) -> None:
    """Create an export job (idempotent per --idempotency-key); prints its id."""
    check_positive("--max-rows-per-file", max_rows_per_file)
    if fmt not in ("parquet", "csv.gz"):
        fail(f"--format {fmt}: use parquet or csv.gz")
    if schema not in ("marketbus", "raw", "normalized"):
        fail(f"--schema {schema}: use marketbus, raw or normalized")
    with handled():
        start_ns, end_ns = parse_time(start), parse_time(end)
        if end_ns < start_ns:
            raise ValueError(f"--end ({end}) is before --start ({start})")
        request = ExportRequest(
            idempotency_key=key or str(uuid.uuid4()), selector=parse_selector(selector), start_ns=start_ns,
            end_ns=end_ns, format=fmt,  # type: ignore[arg-type]  # checked above
            columns=[c.strip() for c in columns.split(",") if c.strip()] or None, fill_gaps=fill_gaps,
            max_rows_per_file=max_rows_per_file, schema=schema,  # type: ignore[arg-type]  # checked above
        )
    job = run(_call(nats_url, "create", request))
    if as_json:
        json_line(job)
    else:
        console.print(f"export [bold]{job.job_id}[/] {job.state}")
    if wait_done:
        raise typer.Exit(_wait_and_show(nats_url, job.job_id, 0, as_json))


@app.command()
def status(job_id: str = JobIdArg, as_json: bool = JsonOpt, nats_url: str = NatsUrlOption) -> None:
    """Show a job: state, progress, artifacts, coverage."""
    job = run(_call(nats_url, "get", job_id))
    if as_json:
        json_line(job)
    else:
        _show(job)


@app.command("list")
def list_jobs(as_json: bool = JsonOpt, nats_url: str = NatsUrlOption) -> None:
    """List export jobs."""
    jobs = run(_call(nats_url, "list"))
    if as_json:
        for job in jobs:
            json_line(job)
        return
    table = Table("job", "state", "streams", "rows", "files", "created")
    for job in jobs:
        s = job.request.selector
        table.add_row(job.job_id, job.state, f"{s.kind}.{s.source}.{s.venue}.{s.symbol}", f"{job.rows:,}",
                      str(len(job.artifacts)), _fmt_ts(job.created_ts))
    print_table(table, console)


@app.command()
def cancel(job_id: str = JobIdArg, as_json: bool = JsonOpt, nats_url: str = NatsUrlOption) -> None:
    """Cancel a queued or running job."""
    job = run(_call(nats_url, "cancel", job_id))
    if as_json:
        json_line(job)
    else:
        console.print(f"export {job.job_id}: {job.state}")


async def _wait(nats_url: str | None, job_id: str, timeout: float, as_json: bool) -> ExportJob:
    nc = await connect(nats_url)
    try:
        bar = progress_console()
        with Progress(TextColumn("[bold]{task.fields[state]}"), BarColumn(), TaskProgressColumn(),
                      TextColumn("{task.fields[rows]} rows"), TimeElapsedColumn(), console=bar,
                      disable=as_json or not bar.is_terminal) as progress:
            task = progress.add_task(job_id, total=100, state="", rows="0")

            def on_update(job: ExportJob) -> None:
                progress.update(task, completed=job.percent, state=job.state, rows=f"{job.rows:,}")

            return await ExportClient(nc).wait(job_id, timeout=timeout or None, on_update=on_update)
    finally:
        await nc.drain()


def _wait_and_show(nats_url: str | None, job_id: str, timeout: float, as_json: bool) -> int:
    job = run(_wait(nats_url, job_id, timeout, as_json))
    if as_json:
        json_line(job)
    else:
        _show(job)
    return 0 if job.state == "succeeded" else REFUSED


@app.command()
def wait(
    job_id: str = JobIdArg,
    timeout: float = typer.Option(0, "--timeout", help="give up after this many seconds (0 = never; exit 2)"),
    as_json: bool = JsonOpt,
    nats_url: str = NatsUrlOption,
) -> None:
    """Follow a job with a progress bar until it ends (exit 0 = succeeded, 1 = failed/cancelled)."""
    check_not_negative("--timeout", timeout, "never")
    raise typer.Exit(_wait_and_show(nats_url, job_id, timeout, as_json))


def default_api_url() -> str:
    """The export API of `marketbus up` on this machine: port 8710, plus MARKETBUS_UP_PORT_OFFSET
    when that moved it (a second system next to another one)."""
    raw = os.environ.get("MARKETBUS_UP_PORT_OFFSET", "").strip()
    if not raw or raw == "0":
        return DEFAULT_API_URL
    try:
        offset = int(raw)
    except ValueError:
        fail(f"MARKETBUS_UP_PORT_OFFSET={raw!r} is not an integer")
    host, port = DEFAULT_API_URL.rsplit(":", 1)
    return f"{host}:{int(port) + offset}"


def _api_key(value: str | None) -> str:
    if value:
        return value
    env = os.environ.get("MARKETBUS_EXPORT_API_KEY") or os.environ.get("MARKETBUS_EXPORT_API_KEYS", "")
    return env.split(",")[0].strip() or DEV_API_KEY


@app.command()
def download(
    job_id: str = JobIdArg,
    out: Path = typer.Option(Path("."), "--out", "-o", help="directory for the files"),
    api_url: str = typer.Option(
        None, "--api-url", envvar="MARKETBUS_EXPORT_API_URL",
        help=f"default {DEFAULT_API_URL}, moved by MARKETBUS_UP_PORT_OFFSET like `marketbus up`"),
    api_key: str = typer.Option(None, "--api-key", envvar="MARKETBUS_EXPORT_API_KEY", help="default: the dev key"),
    manifest: bool = typer.Option(True, "--manifest/--no-manifest", help="download manifest.json too"),
    as_json: bool = typer.Option(False, "--json", help="print each file written as one JSON object per line"),
) -> None:
    """Download a succeeded job's artifacts (signed URLs), verifying sizes and sha256."""
    paths = run(run_download(job_id, out, api_url or default_api_url(), _api_key(api_key), manifest, as_json))
    if as_json:
        for path in paths:
            json_line({"job_id": job_id, "path": str(path), "bytes": path.stat().st_size})
    else:
        console.print(f"{len(paths)} file(s) in {out} (sizes and sha256 verified)")


async def run_download(job_id: str, out: Path, api_url: str, api_key: str, manifest: bool = True,
                       quiet: bool = False) -> list[Path]:
    """The files written (RequestError when the API refuses or a file fails its checksum)."""
    client = ExportClient(None, api_url=api_url, api_key=api_key)  # downloads need no NATS
    bar = progress_console()
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=bar, disable=quiet or not bar.is_terminal) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(filename: str, done: int, total: int | None) -> None:
            if filename not in tasks:
                tasks[filename] = progress.add_task(f"  {filename}", total=total)
            progress.update(tasks[filename], completed=done)

        return await client.download(job_id, out, manifest=manifest, on_progress=on_progress)
