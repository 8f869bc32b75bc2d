"""marketbus contracts: the events, subjects, codec and stream definitions every service shares.

    from marketbus.contracts import Trade, subjects, codec
"""

from . import codec, ids, streams, subjects, units
from .base import NO_VENUE, SCHEMA_VERSION, Event, MarketEvent
from .codec import Batch, decode, decode_events, encode, headers_for, iter_events, make_batch
from .ids import event_id
from .jobs import *  # noqa: F403
from .market import *  # noqa: F403
from .orders import *  # noqa: F403
from .reference import *  # noqa: F403
from .status import *  # noqa: F403
from .subjects import denormalize_symbol, normalize_symbol
