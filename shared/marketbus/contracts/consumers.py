"""Durable JetStream consumers, declared once (like the streams in streams.py).

Every durable consumer marketbus uses is a :class:`ConsumerSpec` in :data:`CONSUMERS`;
:func:`ensure_consumer` is the one place that creates (or updates) one on the server.

The redelivery policy, shared by every consumer:

- ``ack_wait_s`` is short (5 s): a consumer that dies holding messages (kill -9, lost
  connection) gives them back within seconds. A handler that works longer on a message keeps it
  with in-progress acks (``+WPI``) every ``ack_wait_s / 2`` (:attr:`ConsumerSpec.progress_interval`).
- ``max_deliver`` bounds the deliveries of a message. A handler whose processing fails asks for
  a redelivery after ``backoff_s[delivery - 1]`` (a ``NAK`` with delay, :meth:`ConsumerSpec.retry_delay`);
  on the last delivery (:meth:`ConsumerSpec.last_delivery`) it dead-letters the message instead
  (``Service.dead_letter``: reason, raw payload, subject) and terminates it (``+TERM``).
- The back-off is applied by the handler's NAK, deliberately not with the server's ``BackOff``:
  the server's back-off would also stretch the ack wait of a message whose consumer crashed
  (delivery 3 would wait ``backoff[2]``), and crashes must stay visible within seconds.
- ``max_deliver`` is also the server's backstop: a message that crashes its consumer every time
  (no NAK ever comes) is not delivered more than ``max_deliver`` times.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import BadRequestError, NotFoundError

from . import subjects
from .streams import MARKET_DATA, ORDER_COMMANDS, REFERENCE, STATUS

log = logging.getLogger(__name__)

DEFAULT_ACK_WAIT_S = 5.0
DEFAULT_MAX_DELIVER = 6
DEFAULT_BACKOFF_S: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer: where it reads, and its redelivery policy (module docstring)."""

    stream: str
    durable: str
    description: str
    filter_subject: str | None = None
    ack_wait_s: float = DEFAULT_ACK_WAIT_S
    max_deliver: int = DEFAULT_MAX_DELIVER
    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S
    max_ack_pending: int = -1
    max_waiting: int = 512
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL

    def with_(self, **changes: object) -> ConsumerSpec:
        """A copy with some fields changed (a test's own durable name, a configured ack wait)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable, description=self.description, filter_subject=self.filter_subject,
            deliver_policy=self.deliver_policy, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver, max_ack_pending=self.max_ack_pending, max_waiting=self.max_waiting,
        )

    def last_delivery(self, delivered: int) -> bool:
        """True when a message delivered ``delivered`` times will not come back if it fails now."""
        return self.max_deliver > 0 and delivered >= self.max_deliver

    def retry_delay(self, delivered: int) -> float:
        """The NAK delay after the ``delivered``-th delivery failed (the last value repeats)."""
        if not self.backoff_s:
            return 0.0
        return self.backoff_s[min(max(delivered, 1), len(self.backoff_s)) - 1]

    @property
    def progress_interval(self) -> float:
        """How often a handler still working on a message sends ``+WPI`` to keep it."""
        return max(0.2, self.ack_wait_s / 2)


HISTORY_MD = ConsumerSpec(
    MARKET_DATA.name, "history_writer_md", "marketbus history writer: md.> (shared by every writer instance)",
    max_ack_pending=100_000,
    # a writer holds batches of thousands; a crash-looping writer must not exhaust a message's
    # deliveries before a healthy one gets it, so the backstop is higher than the default
    max_deliver=10,
)
HISTORY_REF = HISTORY_MD.with_(stream=REFERENCE.name, durable="history_writer_ref",
                               description="marketbus history writer: ref.> (shared by every writer instance)")
HISTORY_STATUS = HISTORY_MD.with_(stream=STATUS.name, durable="history_writer_status",
                                  filter_subject=subjects.ALL_FEED_STATUS,
                                  description="marketbus history writer: feed status (gaps, resyncs)")
ORDER_ROUTER_COMMANDS = ConsumerSpec(
    ORDER_COMMANDS.name,
    "order_router",
    "marketbus order router: order commands (work queue, shared by every instance)",
    filter_subject=subjects.ALL_ORDER_COMMANDS,
    max_deliver=5,
    backoff_s=(1.0, 2.0, 4.0, 8.0),
)

CONSUMERS: tuple[ConsumerSpec, ...] = (HISTORY_MD, HISTORY_REF, HISTORY_STATUS, ORDER_ROUTER_COMMANDS)

# what provisioning keeps as declared: an admin's edit of one of these (another filter, headers
# only, fewer deliveries...) changes what the service receives or how it recovers, so it is drift
# to put back. nats-server changes the first group in place; the second only at creation.
_UPDATABLE = ("filter_subjects", "headers_only", "ack_wait", "max_deliver", "max_ack_pending", "description",
              "max_waiting")
_FIXED_AT_CREATION = ("deliver_policy", "ack_policy")


def _setting(config: ConsumerConfig, name: str) -> object:
    """A setting as the server means it (unset = its default), so equal configs compare equal."""
    if name == "filter_subjects":  # filter_subject and filter_subjects are one setting on the server
        subjects_ = list(config.filter_subjects or [])
        if config.filter_subject:
            subjects_.append(config.filter_subject)
        return sorted(subjects_)
    value = getattr(config, name)
    if name == "headers_only":
        return bool(value)
    if name == "max_ack_pending" and value is None:
        return -1
    return value


def _differs(current: ConsumerConfig, wanted: ConsumerConfig, fields: tuple[str, ...] = _UPDATABLE) -> list[str]:
    return [f for f in fields if _setting(current, f) != _setting(wanted, f)]


def _describe(current: ConsumerConfig, wanted: ConsumerConfig, fields: list[str]) -> str:
    return ", ".join(f"{f} {_setting(current, f)!r} (declared {_setting(wanted, f)!r})" for f in fields)


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> ConsumerInfo:
    """Create the durable consumer of ``spec`` if it is missing, bring an existing one back to the
    spec (filter, headers only, redelivery policy: what an older release or an admin changed);
    safe to call from several instances at once. Returns its info.

    Settings nats-server cannot change on a running consumer (deliver and ack policy) are not
    forced: recreating the durable would lose its position and its unacked messages, so that
    drift is logged as one warning line saying how to fix it."""
    wanted = spec.config()
    try:
        info: ConsumerInfo = await js.consumer_info(spec.stream, spec.durable)
    except NotFoundError:
        try:
            info = await js.add_consumer(spec.stream, wanted)
            log.info("created consumer %s on %s", spec.durable, spec.stream)
            return info
        except BadRequestError:
            # another instance created it between our two calls
            raced: ConsumerInfo = await js.consumer_info(spec.stream, spec.durable)
            return raced
    fixed = _differs(info.config, wanted, _FIXED_AT_CREATION)
    if fixed:
        log.warning(
            "consumer %s on %s: %s; nats-server cannot change this on an existing durable and provisioning does "
            "not delete it (%d unacked, %d pending messages would be lost or redelivered): stop the services "
            "reading it, then `nats consumer rm %s %s` and run `marketbus provision` again to recreate it as declared",
            spec.durable, spec.stream, _describe(info.config, wanted, fixed), info.num_ack_pending, info.num_pending,
            spec.stream, spec.durable)
        return info
    changed = _differs(info.config, wanted)
    if changed:
        # an older release made it with another policy (e.g. ack_wait 60 s), or an admin edited it
        what = _describe(info.config, wanted, changed)
        try:
            info = await js.add_consumer(spec.stream, wanted)
            log.warning("consumer %s on %s put back to its declaration: %s", spec.durable, spec.stream, what)
        except BadRequestError as exc:  # e.g. a server too old to update it: keep it as it is
            log.warning("consumer %s on %s differs from its declaration (%s) and could not be updated: %s; "
                        "stop its services, `nats consumer rm %s %s`, then `marketbus provision`",
                        spec.durable, spec.stream, what, exc.description, spec.stream, spec.durable)
    return info


async def bind_consumer(js: JetStreamContext, spec: ConsumerSpec, *, retry_s: float = 2.0) -> ConsumerInfo:
    """What a service calls at start: the provisioned consumer of ``spec``.

    Provisioning (``marketbus provision``, run by ``marketbus up`` and compose first) creates every
    consumer of :data:`CONSUMERS`; a service's identity may only read and ack its own. Where the
    consumer is missing, the service tries to create it (an admin identity or a server without
    auth may: a test's own durable); when that is refused it waits, saying what to run.
    """
    import asyncio

    said = False
    while True:
        try:
            found: ConsumerInfo = await js.consumer_info(spec.stream, spec.durable)
            return found
        except NotFoundError:
            pass
        try:
            return await ensure_consumer(js, spec)
        except Exception as exc:
            if not said:
                log.warning("consumer %s on %s not provisioned (%s): run `marketbus provision`; waiting",
                            spec.durable, spec.stream, type(exc).__name__)
                said = True
        await asyncio.sleep(retry_s)
