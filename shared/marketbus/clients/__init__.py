"""Python clients for marketbus's request/reply services, for users' code, the CLI and services.

Each client wraps one NATS connection (``nats.aio.client.Client``); all are async and typed with
the contracts::

    import nats
    from marketbus.clients import ExportClient, HistoryClient, OrderClient, RequestError

    nc = await nats.connect(url)
    history = HistoryClient(nc)
    async for trade in history.events("trade.digitex.*.*", start_ns, end_ns):   # contract events
        ...
    coverage = await history.coverage("trade.*.*.*")
    ack = await OrderClient(nc).place("FS-BTCUSD", "buy", "1", price="20000")  # CommandAck
    job = await ExportClient(nc).create(request)                               # ExportJob
    reply = await FeedClient(nc).add("digitex", "FS:ETHUSD")                  # FeedReply (feed control)
    reply = await ReplayClient(nc).replay("finx", "_", "BTC-USD", "tick", start_ns, end_ns)  # ReplayReply
    async for msg in PlaybackClient(nc).play("trade.*.*.*", start_ns, end_ns, speed="1x"):  # history played back
        ...

Every refusal or missing answer raises :class:`RequestError` with ``code`` (see
``marketbus.contracts.errors``: ``bad_request``, ``not_found``, ``conflict``, ``overloaded``,
``unavailable``, ``internal``, and client-side ``timeout``, ``no_responders``) and ``message``.
Bad arguments (a selector with five parts, a quantity that is not a number) raise ValueError
before anything is sent.
"""

from .errors import RequestError
from .exports import ExportClient
from .feeds import FeedClient
from .history import HistoryClient
from .orders import OrderClient, OrderRecord
from .playback import PlaybackClient
from .replay import ReplayClient
from .selectors import SelectorError, parse_selector

__all__ = [
    "ExportClient",
    "FeedClient",
    "HistoryClient",
    "OrderClient",
    "OrderRecord",
    "PlaybackClient",
    "ReplayClient",
    "RequestError",
    "SelectorError",
    "parse_selector",
]
