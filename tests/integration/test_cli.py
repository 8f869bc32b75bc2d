"""The `marketbus` CLI as a user runs it: a real process against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from decimal import Decimal
from pathlib import Path

import nats
import pytest
from typer.testing import CliRunner

from marketbus.cli.main import app
from marketbus.contracts import codec, subjects
from marketbus.contracts.ids import event_id
from marketbus.contracts.market import Trade
from marketbus.contracts.orders import OrderEvent
from marketbus.runtime.natsserver import NatsServer
from marketbus.runtime.service import Service

MARKETBUS = str(Path(sys.executable).parent / "marketbus")


async def run_cli(*args: str, env: dict[str, str], timeout: float = 30) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one `marketbus` run, stdout piped (not a terminal)."""
    proc = await asyncio.create_subprocess_exec(
        MARKETBUS, *args, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


def trade(i: int, venue: str = "TAIL", price: str = "42.125", size: str = "0.5") -> Trade:
    return Trade(id=event_id("test", "trade", venue, i), source="test", venue=venue, symbol="BTC-USD", ts_event=i,
                 ts_recv=i, price=Decimal(price), size=Decimal(size), side="sell")


async def _publish_until_exit(proc: asyncio.subprocess.Process, nc: nats.NATS, publish: object,
                              tries: int = 400) -> None:
    for i in range(tries):
        if proc.returncode is not None:
            return
        await publish(i)  # type: ignore[operator]
        await asyncio.sleep(0.05)


async def wait_until_printing(proc: asyncio.subprocess.Process, nc: nats.NATS, subject: str, payload: bytes) -> bytes:
    """Publish ``payload`` every 0.1 s until ``proc`` prints a line (it is connected and subscribed)."""
    reader = asyncio.ensure_future(proc.stdout.readline())  # type: ignore[union-attr]
    for _ in range(150):
        await nc.publish(subject, payload)
        done, _ = await asyncio.wait({reader}, timeout=0.1)
        if done:
            return reader.result()
    reader.cancel()
    raise AssertionError(f"nothing printed for {subject}")


async def test_tail_decodes_and_prints_what_a_publisher_sends(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    proc = await asyncio.create_subprocess_exec(
        MARKETBUS,
        "tail",
        "md.trade.test.>",
        "--count",
        "3",
        env={**os.environ, "NATS_URL": nats_url, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async def publish(i: int) -> None:  # until tail has printed 3 events
            event = trade(i + 1)
            await nc.publish(subjects.for_event(event), codec.encode(event))

        await _publish_until_exit(proc, nc, publish)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
        await nc.close()
    text = out.decode()
    assert proc.returncode == 0, text
    assert text.count("md.trade.test.TAIL.BTC-USD trade") == 3
    assert "price=42.125" in text and "size=0.5" in text and "side=sell" in text


async def test_tail_json_prints_one_object_per_line_with_the_subject_and_plain_decimals(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    proc = await asyncio.create_subprocess_exec(
        MARKETBUS, "tail", "md.trade.test.>", "--json", "-n", "3", env={**os.environ, "NATS_URL": nats_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async def publish(i: int) -> None:  # a batch envelope of two trades: two lines
            batch = codec.make_batch([trade(10 * i + 1, "JSON", "41060.000000000000000000", "0E-18"),
                                      trade(10 * i + 2, "JSON", "41061.5", "2")])
            await nc.publish("md.trade.test.JSON.BTC-USD", codec.encode(batch))

        await _publish_until_exit(proc, nc, publish)
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
        await nc.close()
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == 3, out
    first, second = json.loads(lines[0]), json.loads(lines[1])
    assert first["subject"] == "md.trade.test.JSON.BTC-USD" and first["type"] == "trade"
    assert first["price"] == "41060" and first["size"] == "0"  # not 41060.000000000000000000 / 0E-18
    assert second["price"] == "41061.5" and second["size"] == "2"


async def test_tail_json_shows_json_that_is_not_a_contract_message(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    proc = await asyncio.create_subprocess_exec(
        MARKETBUS, "tail", "md.tick.test.>", "--json", "-n", "1", env={**os.environ, "NATS_URL": nats_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async def publish(_: int) -> None:
            await nc.publish("md.tick.test.V.S", b'{"type":"tick","price":"1.0"}')

        await _publish_until_exit(proc, nc, publish, 200)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
        await nc.close()
    assert json.loads(out.decode()) == {"subject": "md.tick.test.V.S", "type": "tick", "price": "1.0"}


async def test_tail_refuses_a_bad_subject_in_one_line(nats_url: str) -> None:
    code, _out, err = await run_cli("tail", "md..>", env={"NATS_URL": nats_url})
    assert code == 2
    assert err.strip().splitlines() == [
        "error: bad subject 'md..>': has an empty token (two dots in a row, or a dot at an end); "
        "e.g. 'md.trade.finx.>' or 'md.*.digitex.*.BTC-USD'"]
    result = await asyncio.to_thread(CliRunner().invoke, app, ["tail", "md.tr*de.>", "--nats-url", nats_url])
    assert result.exit_code == 2 and "'*' must be a whole token" in result.stderr and "Traceback" not in result.output


async def test_tail_last_without_a_stream_for_the_subject_says_so(nats_server: NatsServer) -> None:
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["tail", "foo.bar", "--last", "--nats-url", nats_server.url]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --last: no stream on this server stores 'foo.bar'")


async def test_tail_and_order_watch_exit_with_a_message_when_the_server_does_not_come_back(
        nats_server: NatsServer) -> None:
    env = {**os.environ, "NATS_URL": nats_server.url}
    tail = await asyncio.create_subprocess_exec(MARKETBUS, "tail", "md.>", "--reconnect", "1", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    watch = await asyncio.create_subprocess_exec(MARKETBUS, "order", "watch", "--reconnect", "1", env=env,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        nc = await nats.connect(nats_server.url)
        await wait_until_printing(tail, nc, subjects.for_event(trade(1)), codec.encode(trade(1)))
        await wait_until_printing(watch, nc, subjects.order_event("FS-BTCUSD", "c1"), codec.encode(order_event(1)))
        await nc.close()
        nats_server.kill()
        results = [await asyncio.wait_for(p.communicate(), 20) for p in (tail, watch)]
    finally:
        for p in (tail, watch):
            if p.returncode is None:
                p.kill()
    for proc, (_, err) in zip((tail, watch), results, strict=True):
        text = err.decode()
        assert proc.returncode == 2, text
        assert f"error: lost the connection to NATS at {nats_server.url} and could not reconnect within 1s" in text
        assert "Traceback" not in text


def order_event(seq: int) -> OrderEvent:
    return OrderEvent(id=f"o-{seq}", client_id="c1", market="FS-BTCUSD", state="accepted", seq=seq,
                      quantity=Decimal("2.000000000000000000"), filled_quantity=Decimal("0E-18"), ts_event=seq,
                      ts_recv=seq)


async def test_tail_and_order_watch_reconnect_when_the_server_restarts(nats_server: NatsServer) -> None:
    env = {**os.environ, "NATS_URL": nats_server.url}
    tail = await asyncio.create_subprocess_exec(MARKETBUS, "tail", "md.trade.test.>", "--reconnect", "20", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    watch = await asyncio.create_subprocess_exec(MARKETBUS, "order", "watch", "--json", env=env,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    order_subject = subjects.order_event("FS-BTCUSD", "c1")
    first, second = trade(1, "RC"), trade(2, "RC", price="7")
    try:
        nc = await nats.connect(nats_server.url)
        assert b"md.trade.test.RC.BTC-USD trade" in await wait_until_printing(
            tail, nc, subjects.for_event(first), codec.encode(first))
        line = json.loads(await wait_until_printing(watch, nc, order_subject, codec.encode(order_event(1))))
        assert line["subject"] == "orders.evt.digitex.FS-BTCUSD.c1" and line["type"] == "order"
        assert line["quantity"] == "2" and line["filled_quantity"] == "0"  # plain decimals
        await nc.close()
        nats_server.kill()  # the server goes away, and comes back on the same port
        await asyncio.sleep(1.0)
        nats_server.start()
        nc = await nats.connect(nats_server.url)
        while b"price=7" not in await wait_until_printing(tail, nc, subjects.for_event(second), codec.encode(second)):
            pass
        while json.loads(await wait_until_printing(watch, nc, order_subject, codec.encode(order_event(2))))["seq"] != 2:
            pass
        await nc.close()
        for proc in (tail, watch):
            proc.send_signal(signal.SIGINT)  # how a user ends them: exit 0
        results = [await asyncio.wait_for(p.communicate(), 10) for p in (tail, watch)]
    finally:
        for p in (tail, watch):
            if p.returncode is None:
                p.kill()
    for proc, (_, err) in zip((tail, watch), results, strict=True):
        text = err.decode()
        assert proc.returncode == 0, text  # and they printed what was published after the restart
        assert "Traceback" not in text and "UnexpectedEOF" not in text


async def test_status_prints_a_row_per_feed_from_heartbeats(nats_url: str) -> None:
    class Feeder(Service):
        name = "feeder"

    long_feed = "sitagri/EURONEXT_MATIF_PARIS/" + "A-VERY-LONG-SYMBOL-NAME-" * 4 + "END"  # wider than 80 columns
    service = Feeder(nats_url=nats_url, heartbeat_interval_s=0.2)
    await service.start()
    try:
        service.feeds.set_state("finx/COINBASE/BTC-USD", "connected")
        service.feeds.count("finx/COINBASE/BTC-USD", 1234)
        service.feeds.set_state(long_feed, "connected")
        await asyncio.sleep(0.6)
        env = {"NATS_URL": nats_url, "COLUMNS": ""}
        code, out, err = await run_cli("status", env=env)  # piped: no terminal width
        json_code, json_out, _ = await run_cli("status", "--json", env=env)
    finally:
        await service.stop()
    assert code == 0, err
    assert "feeder" in out and "finx/COINBASE/BTC-USD" in out and "connected" in out and "1,234" in out
    assert long_feed in out  # not cut at 80 columns
    assert json_code == 0
    beats = [json.loads(line) for line in json_out.splitlines()]
    mine = [b for b in beats if b["service"] == "feeder"]
    assert mine and mine[0]["subject"] == "status.feeder.heartbeat"
    assert {f["feed"] for f in mine[0]["feeds"]} >= {"finx/COINBASE/BTC-USD", long_feed}


async def test_cli_says_clearly_when_nats_is_unreachable() -> None:
    code, _, err = await run_cli("tail", "md.>", env={"NATS_URL": "nats://127.0.0.1:1"})
    assert code == 2
    assert "cannot connect to NATS at nats://127.0.0.1:1" in err and "Traceback" not in err


@pytest.mark.parametrize(("args", "message"), [
    (["nosuch"], "error: No such command 'nosuch'; see `marketbus --help`"),
    (["history", "query", "trade", "--limit", "abc"],
     "error: Invalid value for '--limit' / '-n': Input should be a valid integer"),
    (["order", "place", "FS-BTCUSD", "sell", "-1", "--price", "1"],
     "error: No such option: -1; see `marketbus order place --help`"),
    (["order", "place"], "error: Missing argument 'market'; see `marketbus order place --help`"),
    (["tail", "md.>", "--count", "x"], "error: Invalid value for '--count'"),
])
def test_usage_mistakes_click_finds_are_one_line_errors_with_exit_2(args: list[str], message: str) -> None:
    """What the parser refuses before a command runs reads like the commands' own errors."""
    result = CliRunner().invoke(
        app, args, env={"COLUMNS": "200", "NATS_URL": "nats://127.0.0.1:1"}, prog_name="marketbus"
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output and "╭" not in result.output


def test_a_group_without_a_command_still_prints_its_help() -> None:
    result = CliRunner().invoke(app, ["order"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "place" in result.output and "Usage" in result.output


def test_help_documents_the_exit_codes() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Exit codes: 0 ok, 1 refused or failed (by the server), 2 usage or connection error." in result.output


async def test_tail_last_shows_the_current_reference_values_then_exits_at_the_count(nats_url: str, js) -> None:
    from marketbus.contracts.reference import Unit

    for code, factor in (("TON", "1000"), ("USWSBS", "27.2155"), ("KILO", "1")):
        unit = Unit(id=event_id("test", "unit", code), source="tailtest", venue="_", symbol=code, ts_event=1, ts_recv=1,
                    code=code, factor=Decimal(factor), unit_type="MASS")
        await js.publish(subjects.for_event(unit), codec.encode(unit), headers=codec.headers_for(unit))
    # published before tail starts: only --last can show them
    code, out, err = await run_cli("tail", "ref.unit.tailtest.>", "--last", "-n", "2",
                                   env={"NATS_URL": nats_url, "COLUMNS": "200"})
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("ref.unit.tailtest")]
    assert len(lines) == 2, out
    assert "code=TON" in lines[0] and "factor=1000" in lines[0]


@pytest.mark.parametrize(("args", "message"), [
    (["history", "compact", "--retention", "trade=abc"], "error: --retention 'trade=abc': write kind=days"),
    (["history", "compact", "--retention", "trades=30"], "error: --retention 'trades=30': unknown kind 'trades'"),
    (["history", "migrate", "--from-dir", "{tmp}/missing"], "error: Invalid value: {tmp}/missing: no embedded history"),
    (["history", "migrate", "--from-parquet", "{tmp}/missing"], "error: Invalid value: {tmp}/missing: not a directory"),
    (["history", "query", "trade", "--out", "{tmp}/missing/trades.parquet"],
     "error: --out {tmp}/missing/trades.parquet: no directory {tmp}/missing"),
    (["credentials", "{tmp}/a-file/credentials"], "error: cannot write the credentials to {tmp}/a-file/credentials"),
    (["order", "place", "FS-BTCUSD", "buy", "1", "--price", "-5"], "error: price '-5' must not be negative"),
    (["up", "--data-dir", "{tmp}/a-file/mb"], "error: --data-dir {tmp}/a-file/mb: cannot create it"),
    (["sandbox", "nope"], "error: unknown sandbox 'nope'; choose from finx, ticksupply, digitex, sitagri or all"),
    (["feed", "add", "acme", "X"], "error: unknown vendor 'acme': one of finx, ticksupply, digitex, sitagri"),
    (["feed", "list", "acme"], "error: unknown vendor 'acme': one of finx, ticksupply, digitex, sitagri"),
    (["replay", "start", "trade", "--start", "-1h", "--speed", "fast"], "error: speed 'fast' is not <N>x or max"),
    (["tail", "md.>"], "error: no NATS server: `marketbus up` has not recorded one in {tmp}/nats.url"),
    (["order", "place", "FS-BTCUSD", "buy", "1", "--price", "5", "--client-id", "notauuid"],
     "error: --client-id 'notauuid': not a UUID"),
    (["tail", "md.>", "--count", "-1"], "error: --count -1: give 0 (forever) or a positive number"),
    (["tail", "md.>", "--reconnect", "-5"], "error: --reconnect -5: give 0"),
    (["order", "watch", "-n", "-2"], "error: --count -2: give 0 (forever) or a positive number"),
    (["order", "place", "FS-BTCUSD", "buy", "1", "--timeout", "0"], "error: --timeout 0: give a number > 0"),
    (["order", "cancel", "--all", "--timeout", "-1"], "error: --timeout -1: give a number > 0"),
    (["history", "query", "trade", "--limit", "-3"], "error: --limit -3: give 0 (all) or a positive number"),
    (["history", "query", "trade", "--timeout", "0"], "error: --timeout 0: give a number > 0"),
    (["history", "coverage", "trade", "--timeout", "-2"], "error: --timeout -2: give a number > 0"),
    (["export", "wait", "job-1", "--timeout", "-1"], "error: --timeout -1: give 0 (never) or a positive number"),
    (["export", "create", "trade", "--start", "-1h", "--max-rows-per-file", "0"],
     "error: --max-rows-per-file 0: give a number > 0"),
])
def test_mistakes_the_commands_check_are_one_line_errors_with_exit_2(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A newcomer's mistakes (a bad --retention, a data dir or output directory that does not
    exist, an unknown sandbox, no `make run` running) end in one line and exit 2, not a traceback,
    and create nothing."""
    (tmp_path / "a-file").write_text("not a directory")
    monkeypatch.delenv("NATS_URL", raising=False)
    result = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in args], prog_name="marketbus",
                                env={"COLUMNS": "200", "MARKETBUS_DATA_DIR": str(tmp_path), "NATS_URL": ""})
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(message.format(tmp=tmp_path)), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output and "╭" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing created


async def test_tail_piped_prints_one_line_per_event(nats_url: str) -> None:
    """`marketbus tail ... | grep X` sees whole events: one line each, however long (rich would
    wrap them at 80 columns when stdout is not a terminal)."""
    nc = await nats.connect(nats_url)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = await asyncio.create_subprocess_exec(
        MARKETBUS, "tail", "md.trade.test.>", "--count", "2", env={**env, "NATS_URL": nats_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    long_venue = "WRAP" + "V" * 60
    try:
        async def publish(i: int) -> None:
            event = trade(i + 1, venue=long_venue, price="123456789.123456789", size="987654321.987654321")
            await nc.publish(subjects.for_event(event), codec.encode(event))

        await _publish_until_exit(proc, nc, publish)
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
        await nc.close()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == 2, lines
    assert all(line.startswith(f"md.trade.test.{long_venue}.BTC-USD trade ") and "side=sell" in line
               for line in lines), lines


def test_export_download_finds_the_export_api_moved_by_the_port_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`MARKETBUS_UP_PORT_OFFSET=N marketbus up` serves the export API on 8710 + N: `export download`
    in the same shell looks there (it dialled 8710, another system's or nobody's)."""
    from marketbus.cli.export import default_api_url

    monkeypatch.delenv("MARKETBUS_UP_PORT_OFFSET", raising=False)
    assert default_api_url() == "http://127.0.0.1:8710"
    monkeypatch.setenv("MARKETBUS_UP_PORT_OFFSET", "100")
    assert default_api_url() == "http://127.0.0.1:8810"


async def test_provision_prints_its_summary_once(nats_url: str, tmp_path: Path) -> None:
    """The summary is on stdout once, not again as a log line on stderr."""
    code, out, err = await run_cli("provision", env={"NATS_URL": nats_url, "MARKETBUS_DATA_DIR": str(tmp_path),
                                                     "COLUMNS": "200"})
    assert code == 0, err
    assert "provisioned" in out
    assert (out + err).count("provisioned") == 1, (out, err)


@pytest.mark.parametrize(("args", "shown"), [
    (["history", "query", "--help"], "-30s, -5m, -1h, -2d"),  # was "-<N> before now": rich ate "[smhd]"
    (["history", "book", "--help"], "-30s, -5m, -1h, -2d"),
    (["order", "place", "--help"], "a UUID (a new one when omitted)"),
    (["order", "place", "--help"], "limit with --price, market without"),
    (["history", "migrate", "--help"], "progress, then the report: one JSON object per line"),
    (["export", "wait", "--help"], "the job id `marketbus export create` printed"),
])
def test_help_says_what_the_options_take(args: list[str], shown: str) -> None:
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250"}, prog_name="marketbus")
    assert result.exit_code == 0, result.output
    assert shown in " ".join(result.output.replace("│", " ").split()), result.output
