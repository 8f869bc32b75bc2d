"""Ephemeral JetStream consumers created by name.

nats-py creates an unnamed consumer (an ordered consumer, ``pull_subscribe(durable=None)``) on
``$JS.API.CONSUMER.CREATE.<stream>``, the one API subject whose consumer name travels in the body:
nats-server then creates *or updates* the consumer of that name, a service's durable included. Users'
identities are therefore denied that subject on the streams holding a service's durable consumer
(``marketbus.security.identities``) and create their ephemeral consumers by name, on
``$JS.API.CONSUMER.CREATE.<stream>.<name>[.<filter>]``, where a service's durable name is denied.

An ordered consumer is recreated by nats-py when it sees a gap or misses heartbeats (a reconnect,
a slow network, a server restart), from the next stream sequence. nats-py sends the same config
again, name included. When the old consumer still exists on the server (it does after a
reconnect, until its ``inactive_threshold``), the server takes that for an update and refuses
it ("deliver policy can not be updated"): nothing is delivered until the old consumer expires.
:func:`ordered_subscribe` gives each recreation a fresh name, so delivery resumes at once::

    sub = await ordered_subscribe(js, "md.trade.>", config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW))
"""

from __future__ import annotations

import uuid
from typing import Any

from nats.js.api import ConsumerConfig


def ephemeral_name() -> str:
    return f"eph_{uuid.uuid4().hex}"


def named_ephemeral(config: ConsumerConfig | None = None) -> ConsumerConfig:
    """``config`` (or a default one) with a fresh random name: still ephemeral (no durable name:
    the server removes it once nobody reads it), created on the subject that carries the name."""
    base = config if config is not None else ConsumerConfig()
    return base.evolve(name=ephemeral_name())


async def ordered_subscribe(js: Any, subject: str, *, config: ConsumerConfig | None = None, **kwargs: Any) -> Any:
    """``js.subscribe(subject, ordered_consumer=True, ...)`` with a named ephemeral consumer that
    gets a fresh name each time nats-py recreates it (see the module). ``kwargs`` as nats-py's
    ``subscribe`` (``cb``, ``stream``, ``idle_heartbeat``, ...)."""
    sub = await js.subscribe(subject, ordered_consumer=True, config=named_ephemeral(config), **kwargs)
    rename_on_reset(sub)
    return sub


def rename_on_reset(sub: Any) -> None:
    """Make nats-py's recreation of the ordered consumer behind ``sub`` use a fresh name.

    nats-py (2.x) keeps the create request in ``_JSI._ccreq`` and recreates the consumer in a
    task that ``reset_ordered_consumer`` starts and that reads ``_ccreq`` when it runs: the name
    is changed right after the reset, before that task runs. RuntimeError when nats-py no longer
    has these (tests/security/test_ordered_reset.py checks the installed one)."""
    jsi = getattr(getattr(sub, "_sub", None), "_jsi", None)
    reset = getattr(jsi, "reset_ordered_consumer", None)
    if jsi is None or reset is None or not isinstance(getattr(jsi, "_ccreq", None), ConsumerConfig):
        raise RuntimeError("this nats-py's ordered consumer has no reset_ordered_consumer/_ccreq: "
                           "marketbus.runtime.ordered cannot rename it on a reset")

    async def reset_with_a_fresh_name(sseq: int | None) -> bool:
        done = bool(await reset(sseq))
        jsi._ccreq = jsi._ccreq.evolve(name=ephemeral_name())  # the recreate task has not run yet
        return done

    jsi.reset_ordered_consumer = reset_with_a_fresh_name
