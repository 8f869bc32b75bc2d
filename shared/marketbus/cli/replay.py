"""``marketbus replay``: play stored history back onto the bus (the replay service).

``marketbus replay start 'trade.digitex.*.*' --start -10m --speed 10x`` starts a session, shows a
progress bar (events sent, simulated time, lag) and ends with the session; consumers subscribe
to ``<prefix>.md.>`` (the prefix is printed first). ``pause``, ``resume``, ``cancel`` and
``status`` control a session by id from another terminal, given the session's control token
(printed once, at the start, to the starter only): ``--token-file <file>`` (the safest: a command
line is visible to every user of the host), ``MARKETBUS_PLAYBACK_TOKEN`` or ``--token``. In the
terminal that started it, Ctrl-C cancels it without one.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from marketbus.clients import PlaybackClient, RequestError
from marketbus.clients.playback import TOKEN_ENV, make_start
from marketbus.contracts.replay import ENDED_STATES, PlaybackSession, PlaybackStatus

from .common import NatsUrlOption, connect
from .history import EndOpt, SelectorArg, StartOpt, _iso, parse_range
from .output import EXIT_CODES_HELP, OK, REFUSED, fail, json_line, progress_console, run

app = typer.Typer(help="Play stored history back onto the bus at market pace (replay service).",
                  no_args_is_help=True, epilog=EXIT_CODES_HELP)


@app.command()
def start(
    selector: str = SelectorArg,
    start: str = StartOpt,
    end: str = EndOpt,
    speed: str = typer.Option("1x", "--speed", help="1x = the original pace, 10x, 0.5x, or max"),
    prefix: str = typer.Option(None, "--prefix", help="replay.<name> (default replay.<session>)"),
    reference: str = typer.Option(None, "--ref", help="reference data selector: its values at --start first, "
                                                      "then its changes in order (e.g. 'instrument.digitex.*.*')"),
    detach: bool = typer.Option(False, "--detach", help="print the session and return; it runs on"),
    as_json: bool = typer.Option(False, "--json", help="the session, then one status per line, as JSON"),
    nats_url: str = NatsUrlOption,
) -> None:
    """Start a playback of SELECTOR in [--start, --end) and follow it to its end (Ctrl-C cancels it)."""
    code = run(_start(nats_url, selector, start, end, speed, prefix, reference, detach, as_json))
    raise typer.Exit(code)


async def _start(url: str | None, selector: str, start: str, end: str, speed: str, prefix: str | None,
                 reference: str | None, detach: bool, as_json: bool) -> int:
    start_ns, end_ns = parse_range(start, end)
    # a mistake (speed, selector, prefix) is one line before any connection is made
    make_start(selector, start_ns, end_ns, speed=speed, prefix=prefix, reference=reference)
    nc = await connect(url)
    try:
        client = PlaybackClient(nc)
        session = await client.start(selector, start_ns, end_ns, speed=speed, prefix=prefix, reference=reference,
                                     hold=not detach)
        _print_session(session, as_json)
        if detach:
            return OK
        return await _follow(client, session, as_json)
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()


def _print_session(session: PlaybackSession, as_json: bool) -> None:
    if as_json:
        json_line(session)
        return
    # the only place the token is shown: the service never publishes or logs it
    console = progress_console()
    console.print(f"session {session.session}: {session.expected} events to {session.prefix}.md.> (and .ref.>), "
                  f"end marker on {session.prefix}.end", highlight=False)
    console.print(f"control token (secret, shown once): {session.control_token}\n"
                  f"from another terminal: {TOKEN_ENV}=<token> marketbus replay pause|resume|cancel|status "
                  f"{session.session} (or --token-file <file>, or --token <token>)", highlight=False, soft_wrap=True)


async def _follow(client: PlaybackClient, session: PlaybackSession, as_json: bool) -> int:
    console = progress_console()
    bar = None
    if not as_json and console.is_terminal:
        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[sim]}  lag p99 {task.fields[lag]} ms  {task.fields[rate]} ev/s"),
                       TimeElapsedColumn(), console=console, transient=False)
        bar.start()
    task = bar.add_task(session.session, total=session.expected or None, sim="", lag="0", rate="0") if bar else None
    last: PlaybackStatus | None = None
    updates = client.follow(session, resume=True)  # subscribed to its status, then resumed
    try:
        status = await anext(updates)
        while True:
            last = status
            if as_json:
                json_line(status, session.status_subject)
            elif bar is not None and task is not None:
                bar.update(task, completed=status.sent, total=max(status.expected, status.sent) or None,
                           sim=_iso(status.sim_ts), lag=f"{status.lag_p99_ms:g}", rate=f"{status.rate:,.0f}")
            if status.state in ENDED_STATES:
                break
            status = await anext(updates)
    finally:
        if bar is not None:
            bar.stop()
        await updates.aclose()
        if last is None or last.state not in ENDED_STATES:  # interrupted: do not leave it running
            with contextlib.suppress(Exception):
                await asyncio.shield(client.cancel(session.session))
    if not as_json:
        reason = f" ({last.reason})" if last.reason else ""
        console.print(
            f"{last.state}: {last.sent} events sent to {session.prefix}, lag p99 {last.lag_p99_ms:g} ms{reason}"
        )
    return OK if last.state == "finished" else REFUSED


_DOCS = {"pause": "Pause a session (its schedule resumes where it stopped).", "resume": "Resume a paused session.",
         "cancel": "Cancel a session (its end marker says so).", "status": "Print a session's progress."}


def _control_command(action: str) -> Any:
    def command(
        session: str = typer.Argument(..., help="the session id (s + 12 hex digits)"),
        token: str = typer.Option(None, "--token", envvar=TOKEN_ENV, show_envvar=True,
                                  help="the session's control token, printed by `marketbus replay start` (a "
                                       "command line is visible to other users of the host: prefer --token-file "
                                       "or the environment)"),
        token_file: Path = typer.Option(None, "--token-file", dir_okay=False,
                                        help="a file holding the session's control token (its first line)"),
        as_json: bool = typer.Option(False, "--json", help="the status as one JSON line"),
        nats_url: str = NatsUrlOption,
    ) -> None:
        status = run(_control(nats_url, session, action, control_token(token, token_file)))
        if as_json:
            json_line(status)
        else:
            print(f"{status.session}: {status.state}, {status.sent}/{status.expected} events sent, "
                  f"simulated time {_iso(status.sim_ts) or '-'}, lag p99 {status.lag_p99_ms:g} ms")

    command.__doc__ = _DOCS[action]
    return command


def control_token(token: str | None, token_file: Path | None) -> str:
    """The token of ``--token`` / ``MARKETBUS_PLAYBACK_TOKEN`` or the first line of ``--token-file``
    ('' when none: the service then refuses with ``forbidden`` and says why)."""
    if token_file is not None:
        if token:
            fail("give the control token once: --token (or MARKETBUS_PLAYBACK_TOKEN) or --token-file")
        try:
            lines = token_file.read_text().splitlines()
        except OSError as exc:
            fail(f"cannot read the token file {token_file}: {exc.strerror or exc}")
        if not lines or not lines[0].strip():
            fail(f"the token file {token_file} is empty")
        return lines[0].strip()
    return (token or "").strip()


async def _control(url: str | None, session: str, action: str, token: str) -> PlaybackStatus:
    nc = await connect(url)
    try:
        try:
            return await PlaybackClient(nc, timeout=5.0).control(session, action, token=token)
        except RequestError as exc:
            if exc.code == "no_responders":  # its control subject is gone with it
                raise RequestError("not_found", f"no running session {session} (ended, or never started)") from None
            if exc.code == "forbidden" and not token:  # say how to give it
                raise RequestError(exc.code, f"{exc.message}; give it with --token-file, {TOKEN_ENV} or --token",
                                   exc.details) from None
            raise
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()


for _action in ("pause", "resume", "cancel", "status"):
    app.command(name=_action)(_control_command(_action))
