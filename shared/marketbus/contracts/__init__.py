"""marketbus contracts: the events, subjects, codec and stream definitions every service shares.

    from marketbus.contracts import Trade, subjects, codec

Every event checks its invariants when built and when decoded (see :mod:`.invariants`): a
violation is an :class:`InvariantError` (a ``ValueError``) when building, a
``msgspec.ValidationError`` when decoding, both naming the field.
"""

from . import codec, feeds, ids, invariants, streams, subjects, units
from .base import NO_VENUE, SCHEMA_VERSION, Event, MarketEvent
from .codec import Batch, decode, decode_events, encode, headers_for, iter_events, make_batch
from .ids import event_id
from .invariants import InvariantError
from .jobs import *  # noqa: F403
from .market import *  # noqa: F403
from .orders import *  # noqa: F403
from .reference import *  # noqa: F403
from .status import *  # noqa: F403
from .subjects import denormalize_symbol, normalize_symbol
