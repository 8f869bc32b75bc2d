"""marketbus.runtime.kv: a complete read of a KV bucket (the last value of every live key), ended
by the server's count rather than nats-py's watch marker, against a real nats-server."""

from __future__ import annotations

import uuid

from nats.js.api import KeyValueConfig

from marketbus.runtime import kv as kv_snapshot


async def test_latest_is_every_live_key_with_its_last_value_and_revision(js) -> None:
    bucket = "snap_" + uuid.uuid4().hex[:8]
    kv = await js.create_key_value(KeyValueConfig(bucket=bucket, history=3))
    try:
        empty = (await kv_snapshot.latest(js, bucket), await kv_snapshot.keys(js, bucket))
        for i in range(300):
            await kv.put(f"a.{i}", f"v{i}".encode())
        for i in range(0, 300, 7):
            await kv.put(f"a.{i}", f"w{i}".encode())  # a later value wins
        for i in range(0, 300, 10):
            await kv.delete(f"a.{i}")  # deleted keys are left out
        await kv.purge("a.1")
        await kv.put("b.x", b"other")
        expected = {}
        for i in range(300):
            if i % 10 and i != 1:
                entry = await kv.get(f"a.{i}")
                expected[f"a.{i}"] = (entry.value, entry.revision)
        got = await kv_snapshot.latest(js, bucket, "a.>")
        every_key = await kv_snapshot.keys(js, bucket)
        no_match = await kv_snapshot.latest(js, bucket, "c.>")
    finally:
        await js.delete_key_value(bucket)
    assert empty == ([], [])
    assert {e.key: (e.value, e.revision) for e in got} == expected and len(got) == len(expected)
    assert sorted(every_key) == sorted([*expected, "b.x"]) and no_match == []
