"""One bad message never holds back the others: a batch holding events the store cannot take (a
timestamp beyond int64, a text PostgreSQL refuses) or the contracts refuse (a price <= 0, -0, 1e30)
is split, its good events are stored, and only the culprits are dead-lettered (reason, payload,
subject) and terminated."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import msgspec
import pytest

from marketbus.contracts import DeadLetter, codec, subjects
from marketbus.runtime.natsserver import NatsServer
from services.history_writer.app import HistoryWriter
from services.history_writer.store.base import Selector
from tests.helpers import wait_for

from .common import trade, unique_symbol, writer_overrides


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """A private nats-server per test: the poison messages stay out of the session's MD stream (other tests' writers read it all)."""  # noqa: E501
    return nats_server.url


@pytest.fixture(params=["iceberg", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def dsn(backend: str, request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("pg_dsn") if backend == "postgres" else None


def _raw_trade(sym: str, i: int, **replace: str) -> tuple[bytes, dict[str, str], str]:
    """A good trade's JSON with some values replaced by raw JSON text (beyond what the encoder writes)."""
    event = trade(sym, i)
    data = codec.encode(event)
    for field, raw in replace.items():
        old = f'"{field}":'.encode() + msgspec.json.encode(getattr(event, field))
        assert old in data
        data = data.replace(old, f'"{field}":{raw}'.encode())
    return data, codec.headers_for(event), subjects.for_event(event)


async def _letters(nc: Any, received: list[DeadLetter], sym: str) -> Any:
    """Collects the writer's dead letters of ``sym`` (the session's MD stream holds other tests' too)."""

    async def on_msg(msg: Any) -> None:
        letter = codec.decode(msg.data)
        if isinstance(letter, DeadLetter) and (letter.subject or "").endswith(f".{sym}"):
            received.append(letter)

    return await nc.subscribe("dlq.history_writer.>", cb=on_msg)


async def _stored_ids(writer: HistoryWriter, sym: str) -> set[str]:
    tables = await writer.store.read_table(Selector(kind="trade", symbol=sym), 0, 2**63 - 1, columns=["id"])
    return set(tables["trade"].column("id").to_pylist()) if "trade" in tables else set()


async def _run_batch(nc, js, nats_url, tmp_path, backend, dsn, bad: dict[int, dict[str, str]]) -> None:
    sym = unique_symbol("I")
    durable = f"i{uuid.uuid4().hex[:8]}"
    good = [trade(sym, i) for i in range(40) if i not in bad]
    letters: list[DeadLetter] = []
    sub = await _letters(nc, letters, sym)
    # everything published before the writer starts: it all arrives in the first batch
    for i in range(40):
        if i in bad:
            data, headers, subject = _raw_trade(sym, i, **bad[i])
        else:
            event = trade(sym, i)
            data, headers, subject = codec.encode(event), codec.headers_for(event), subjects.for_event(event)
        await js.publish(subject, data, headers=headers)
    if dsn:
        from services.history_writer.store.postgres import PostgresStore

        stale = PostgresStore(dsn, table_prefix=f"h_{durable}_")
        await stale.open()
        await stale.drop_all()
        await stale.close()
    writer = HistoryWriter(**writer_overrides(nats_url, backend, str(tmp_path / "h"), dsn, durable,
                                              batch_max_wait_s=0.5))
    await writer.start()
    try:
        await wait_for(lambda: len(letters) >= len(bad), 20, what=f"{len(bad)} dead letters")
        await wait_for(lambda: _has(writer, sym, {e.id for e in good}), 10, what="the good events stored")
        assert await _stored_ids(writer, sym) == {e.id for e in good}
        # the payloads break the contracts: read them as the raw JSON they are
        assert sorted(msgspec.json.decode(letter.payload)["id"] for letter in letters) == sorted(
            trade(sym, i).id for i in bad
        )
        for letter in letters:
            assert letter.reason.startswith(("not storable:", "undecodable:")), letter.reason
            assert letter.subject is not None and letter.subject.startswith("md.trade.")
        info = await js.consumer_info("MD", f"{durable}_md")
        assert info.num_ack_pending == 0 and info.num_pending == 0  # the culprits are terminated
        async with httpx.AsyncClient() as http:
            health = await http.get(f"{writer.http_url}/healthz")
        assert health.status_code == 200 and health.json()["streams"]["MD"]["dead_lettered"] >= len(bad)
    finally:
        await sub.unsubscribe()
        if writer.store.backend == "postgres":
            await writer.store.drop_all()  # type: ignore[attr-defined]
        await writer.stop()


async def _has(writer: HistoryWriter, sym: str, ids: set[str]) -> bool:
    return await _stored_ids(writer, sym) == ids


async def test_an_out_of_range_timestamp_is_dead_lettered_and_its_batch_stored(nc, js, nats_url, tmp_path,
                                                                              backend, dsn) -> None:
    """ts_event beyond int64 (raw JSON, as anyone publishing on md.> can send it)."""
    await _run_batch(nc, js, nats_url, tmp_path, backend, dsn, {7: {"ts_event": str(2**63 + 5)},
                                                                 23: {"ts_recv": str(2**64 + 1)}})


async def test_a_value_postgres_refuses_is_dead_lettered_and_its_batch_stored(
    nc, js, nats_url, tmp_path, pg_dsn
) -> None:
    """A well-formed event PostgreSQL refuses to store (a NUL character in a text column): only it fails."""
    await _run_batch(nc, js, nats_url, tmp_path, "postgres", pg_dsn, {11: {"trade_id": '"11\\u0000"'}})


async def test_values_the_contracts_refuse_are_dead_lettered_not_stored(nc, js, nats_url, tmp_path) -> None:
    """Prices the Trade contract refuses (0, -1, -0, 1e30, a 30-digit integer part, a negative
    ts_event), mixed into a batch of good trades, on the default (Iceberg) store: the writer's
    fast Arrow path must not store what ``codec.decode`` refuses."""
    await _run_batch(nc, js, nats_url, tmp_path, "iceberg", None, {
        3: {"price": '"0"'}, 8: {"price": '"-1"'}, 13: {"price": '"-0"'}, 21: {"price": '"1E+30"'},
        27: {"price": '"1' + '0' * 29 + '.5"'}, 33: {"ts_event": "-1"}, 36: {"size": '"-0.0010"'},
    })
