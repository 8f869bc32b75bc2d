"""Ephemeral JetStream consumers created by name.

nats-py creates an unnamed consumer (an ordered consumer, ``pull_subscribe(durable=None)``) on
``$JS.API.CONSUMER.CREATE.<stream>``, the one API subject whose consumer name travels in the body:
nats-server then creates *or updates* the consumer of that name, a service's durable included. Users'
identities are therefore denied that subject on the streams holding a service's durable consumer
(``marketbus.security.identities``) and create their ephemeral consumers by name, on
``$JS.API.CONSUMER.CREATE.<stream>.<name>[.<filter>]``, where a service's durable name is denied.
"""

from __future__ import annotations

import uuid

from nats.js.api import ConsumerConfig


def ephemeral_name() -> str:
    return f"eph_{uuid.uuid4().hex}"


def named_ephemeral(config: ConsumerConfig | None = None) -> ConsumerConfig:
    """``config`` (or a default one) with a fresh random name: still ephemeral (no durable name:
    the server removes it once nobody reads it), created on the subject that carries the name."""
    base = config if config is not None else ConsumerConfig()
    return base.evolve(name=ephemeral_name())
