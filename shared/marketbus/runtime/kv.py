"""A KV bucket's current contents, read completely: the last value of every key, or the keys.

Why not nats-py's ``KeyValue.keys()`` / ``watch()`` for a snapshot: a watch signals "initial
values done" (the ``None`` marker) when the server has no message pending for its consumer and
the *client* has counted none delivered yet. Under load the server has already delivered the
messages (nothing pending) while the client's callback has not run (nothing counted), so the
marker comes first: ``keys()`` then ends empty (``NoKeysError``) or short, and a caller that
trusts it loses records (an order router restarting with no open orders, a job list missing
jobs). Here the end is the server's count: the consumer's own delivered/pending numbers at
creation, then each message's ``num_pending``. The rights are those of a KV watch (an ordered
consumer on ``KV_<bucket>``, see ``marketbus.security.identities.kv_read``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from nats.js.api import DeliverPolicy

DELETED = ("DEL", "PURGE")  # the KV-Operation header of a deleted or purged key
# nats-server 2.11+ places its own delete markers (a key's TTL, max age) with this header instead
MARKER_REASON = "Nats-Marker-Reason"


class KvEntry(NamedTuple):
    key: str
    value: bytes
    revision: int  # the stream sequence of this value (what ``kv.update(..., last=)`` expects)


async def latest(js: Any, bucket: str, key_filter: str = ">", *, timeout: float = 5.0,
                 headers_only: bool = False) -> list[KvEntry]:
    """The last value of every key of ``bucket`` matching ``key_filter`` (deleted keys left out),
    in stream order. ``headers_only``: keys and revisions only (values empty)."""
    prefix = f"$KV.{bucket}."
    sub = await js.subscribe(prefix + key_filter, stream=f"KV_{bucket}", ordered_consumer=True,
                             deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, headers_only=headers_only,
                             inactive_threshold=60)
    try:
        info = await sub.consumer_info()
        if not info.num_pending and not (info.delivered and info.delivered.consumer_seq):
            return []  # nothing matches: the server has neither delivered nor pending anything
        out: list[KvEntry] = []
        while True:
            msg = await sub.next_msg(timeout=timeout)
            headers = msg.headers or {}
            if headers.get("KV-Operation") not in DELETED and MARKER_REASON not in headers:
                out.append(KvEntry(msg.subject[len(prefix):], msg.data, msg.metadata.sequence.stream))
            if not msg.metadata.num_pending:
                return out
    finally:
        await sub.unsubscribe()


async def keys(js: Any, bucket: str, key_filter: str = ">", *, timeout: float = 5.0) -> list[str]:
    """The keys of ``bucket`` matching ``key_filter`` that hold a value (``[]`` when none)."""
    return [entry.key for entry in await latest(js, bucket, key_filter, timeout=timeout, headers_only=True)]
