"""The services' durable JetStream consumers, declared once; created by provisioning.

Minimal declaration on the ``security`` branch (the ``consumers`` work defines the full one with
the same names): a :class:`ConsumerSpec` per durable, :data:`CONSUMERS`, and
:func:`ensure_consumer` that provisioning calls. Services only bind to these consumers
(``consumer_info``), so they need no right to create or delete consumers; the identities in
:mod:`marketbus.security.identities` grant each service its own durables only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import NotFoundError

from . import subjects
from .streams import MARKET_DATA, ORDER_COMMANDS, REFERENCE, STATUS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str
    filter_subject: str | None
    description: str
    ack_wait_s: float = 60.0
    max_ack_pending: int = -1
    max_waiting: int = 512

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable, name=self.durable, filter_subject=self.filter_subject,
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait_s,
            max_deliver=-1, max_ack_pending=self.max_ack_pending, max_waiting=self.max_waiting,
            description=self.description,
        )


_WRITER = "marketbus history writer (durable, shared by every writer instance)"
HISTORY_MD = ConsumerSpec(MARKET_DATA.name, "history_writer_md", None, _WRITER, max_ack_pending=100_000)
HISTORY_REF = ConsumerSpec(REFERENCE.name, "history_writer_ref", None, _WRITER, max_ack_pending=100_000)
HISTORY_STATUS = ConsumerSpec(STATUS.name, "history_writer_status", subjects.ALL_FEED_STATUS, _WRITER,
                              max_ack_pending=100_000)
ORDER_ROUTER = ConsumerSpec(ORDER_COMMANDS.name, "order_router", subjects.ALL_ORDER_COMMANDS,
                            "marketbus order router (the ORDERS_CMD work queue)", ack_wait_s=30.0)

CONSUMERS: tuple[ConsumerSpec, ...] = (HISTORY_MD, HISTORY_REF, HISTORY_STATUS, ORDER_ROUTER)


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> ConsumerInfo:
    """Create the durable consumer when it does not exist; an existing one is left as it is."""
    try:
        return await js.consumer_info(spec.stream, spec.durable)
    except NotFoundError:
        info = await js.add_consumer(spec.stream, spec.config())
        log.info("created consumer %s on %s", spec.durable, spec.stream)
        return info
