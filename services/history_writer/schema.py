"""The storage schema of the history lives in the shared package (``marketbus.history.schema``):
the writer, the readers and the export orchestrator all use it. Re-exported here for the
writer's modules."""

from marketbus.history.schema import (
    FEED_STATUS,
    KINDS,
    ORDER_COLUMNS,
    SCHEMAS,
    STORAGE_COLUMNS,
    BatchRow,
    Decoded,
    KindSchema,
    Message,
    decode_messages,
    warm_up,
)

__all__ = ["FEED_STATUS", "KINDS", "ORDER_COLUMNS", "SCHEMAS", "STORAGE_COLUMNS", "BatchRow", "Decoded", "KindSchema",
           "Message", "decode_messages", "warm_up"]
