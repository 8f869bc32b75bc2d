"""``marketbus replay`` as a user types it, and the HTTP (NDJSON) / WebSocket endpoints, against
a real history writer and replay service."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import websockets
from typer.testing import CliRunner

from marketbus.cli.main import app
from marketbus.contracts import codec
from marketbus.contracts.replay import PlaybackEnd
from tests.helpers import wait_for

from .conftest import MS, T0, Stack, trade, unique_symbol

END = T0 + 10**12


def invoke(args: list[str]) -> Any:
    return asyncio.to_thread(CliRunner().invoke, app, args, env={"COLUMNS": "200"})


async def stored_trades(stack: Stack, n: int) -> tuple[str, list[bytes]]:
    sym = unique_symbol("H")
    events = [trade(sym, i, T0 + i * MS) for i in range(n)]
    await stack.publisher.publish_group(events)
    await stack.publisher.flush()
    await stack.stored(sym, n)
    return sym, [codec.encode(e) for e in events]


async def test_cli_start_follows_to_the_end_and_refuses_in_one_line(stack: Stack) -> None:
    sym, _ = await stored_trades(stack, 50)
    base = ["replay", "start", f"trade.digitex.*.{sym}", "--start", str(T0), "--end", str(END), "--nats-url", stack.url]
    res = await invoke([*base, "--speed", "max", "--json"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert lines[0]["type"] == "playback_session" and lines[0]["expected"] == 50
    assert lines[-1]["state"] == "finished" and lines[-1]["sent"] == 50
    assert lines[-1]["subject"] == f"replay.{lines[0]['session']}.status"

    res = await invoke([*base, "--speed", "20x"])  # text mode: a summary line (no bar on a pipe)
    assert res.exit_code == 0, res.output
    assert "finished: 50 events sent to replay.s" in res.output

    res = await invoke([*base[:2], "bogus.*.*.*", *base[3:]])
    assert res.exit_code == 2 and res.output.strip().startswith("error: unknown kind 'bogus'")
    res = await invoke([*base, "--speed", "0x"])
    assert res.exit_code == 2 and "must be more than 0" in res.output
    res = await invoke([*base[:3], "--start", str(END), "--end", str(END + 10**9), *base[7:]])
    assert res.exit_code == 1 and "no stored events" in res.output and "Traceback" not in res.output
    res = await invoke(["replay", "status", "s0123456789ab", "--nats-url", stack.url])
    assert res.exit_code == 1 and "no running session s0123456789ab" in res.output
    res = await invoke([*base, "--nats-url", "nats://127.0.0.1:1"])
    assert res.exit_code == 2 and "cannot connect to NATS" in res.output


async def test_http_ndjson_and_websocket_carry_the_bus_json(stack: Stack) -> None:
    sym, payloads = await stored_trades(stack, 120)
    url = stack.replay.http_url
    params = {"selector": f"trade.digitex.*.{sym}", "start": str(T0), "end": "2026-01-01T00:00:00Z", "speed": "max"}
    async with httpx.AsyncClient(base_url=url, timeout=20) as client:
        async with client.stream("GET", "/replay", params=params) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/x-ndjson")
            lines = [line async for line in resp.aiter_lines() if line]
        assert [line.encode() for line in lines[:-1]] == payloads  # the JSON of the bus, byte for byte
        end = codec.decode(lines[-1])
        assert isinstance(end, PlaybackEnd) and end.state == "finished" and end.sent == 120

        resp = await client.get("/replay", params={**params, "speed": "-1x"})
        assert resp.status_code == 400 and resp.json()["code"] == "bad_request" and "speed" in resp.json()["message"]
        resp = await client.get(
            "/replay", params={**params, "start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}
        )
        assert resp.status_code == 404 and resp.json()["code"] == "not_found"
        resp = await client.get("/replay", params={"selector": "trade"})
        assert resp.status_code == 400 and "missing parameter(s): start, end" in resp.json()["message"]

    query = httpx.QueryParams({**params, "speed": "50x"})
    ws_url = url.replace("http://", "ws://") + f"/replay/ws?{query}"
    frames: list[str] = []
    async with websockets.connect(ws_url) as ws:
        await ws.send(json.dumps({"type": "playback_control", "action": "status"}))
        async for frame in ws:
            frames.append(frame)
    statuses = [f for f in frames if '"playback_status"' in f]
    events = [f.encode() for f in frames if '"type":"trade"' in f]
    assert len(statuses) == 1 and events == payloads
    assert isinstance(codec.decode(frames[-1]), PlaybackEnd)

    async with websockets.connect(url.replace("http://", "ws://") + "/replay/ws?selector=bogus&start=1&end=2") as ws:
        refusal = json.loads(await ws.recv())
    assert refusal["type"] == "error_reply" and refusal["code"] == "bad_request"
    # a client that goes away ends its session
    async with websockets.connect(
        url.replace("http://", "ws://") + f"/replay/ws?{httpx.QueryParams({**params, 'speed': '1x'})}"
    ) as ws:
        await ws.recv()
    for _ in range(100):
        if not stack.replay.sessions:
            break
        await asyncio.sleep(0.05)
    assert not stack.replay.sessions


async def test_cli_controls_a_session_from_another_terminal_with_its_token(stack: Stack, tmp_path: Any) -> None:
    """`replay start` shows the control token once; `pause|resume|cancel|status` in another
    terminal take it from --token, --token-file or MARKETBUS_PLAYBACK_TOKEN; without it, or with
    a wrong one, the refusal is `forbidden` and says how to give it."""
    sym = unique_symbol("K")
    events = [trade(sym, i, T0 + i * 1_000_000_000) for i in range(60)]  # one a second: a minute at 1x
    await stack.publisher.publish_group(events)
    await stack.publisher.flush()
    await stack.stored(sym, 60)
    base = ["replay", "start", f"trade.digitex.*.{sym}", "--start", str(T0), "--end", str(END), "--nats-url", stack.url]

    res = await invoke([*base, "--detach"])  # text: what a user reads
    assert res.exit_code == 0, res.output
    session = next(word for word in res.output.split() if word.startswith("s") and word.endswith(":"))[:-1]
    token = stack.replay.sessions[session].control_token
    assert res.output.count(token) == 1 and "control token (secret, shown once)" in res.output
    assert "--token-file" in res.output
    await invoke(["replay", "cancel", session, "--token", token, "--nats-url", stack.url])

    res = await invoke([*base, "--detach", "--json"])
    assert res.exit_code == 0, res.output
    started = json.loads(res.stdout.splitlines()[0])
    session, token = started["session"], started["control_token"]
    assert token == stack.replay.sessions[session].control_token
    url = ["--nats-url", stack.url]

    res = await invoke(["replay", "pause", session, *url])  # no token
    assert res.exit_code == 1, res.output
    assert res.output.startswith("error: control of session") and "carries no control token" in res.output
    assert "--token-file" in res.output and "Traceback" not in res.output
    res = await invoke(["replay", "pause", session, "--token", "not-the-token", *url])
    assert res.exit_code == 1 and "carries a wrong control token" in res.output
    assert stack.replay.sessions[session].state == "running"

    res = await invoke(["replay", "pause", session, "--token", token, "--json", *url])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["state"] == "paused"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    res = await invoke(["replay", "resume", session, "--token-file", str(token_file), *url])
    assert res.exit_code == 0 and f"{session}: running" in res.output, res.output
    res = await asyncio.to_thread(CliRunner().invoke, app, ["replay", "status", session, "--json", *url],
                                  env={"COLUMNS": "200", "MARKETBUS_PLAYBACK_TOKEN": token})
    assert res.exit_code == 0 and json.loads(res.stdout)["state"] == "running", res.output
    res = await invoke(["replay", "status", session, "--token-file", str(tmp_path / "missing"), *url])
    assert res.exit_code == 2 and "cannot read the token file" in res.output
    res = await invoke(["replay", "cancel", session, "--token-file", str(token_file), *url])
    assert res.exit_code == 0 and res.output.startswith(f"{session}: "), res.output
    await wait_for(lambda: session not in stack.replay.sessions, timeout=5, what="session cancelled")

    res = await invoke(["replay", "pause", "--help"])
    assert "--token-file" in res.output and "MARKETBUS_PLAYBACK_TOKEN" in res.output
