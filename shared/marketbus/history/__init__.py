"""The history as Apache Iceberg tables, shared by everyone who writes or reads it.

- :mod:`.schema`: the storage rows of each event kind and the fast message decoder;
- :mod:`.lakehouse`: catalog/warehouse configuration (``MARKETBUS_LAKEHOUSE_*``) and table layout;
- :mod:`.writer`: exactly-once appends (JetStream positions in snapshot summaries);
- :mod:`.reader`: reads through the catalog (query API, coverage, CLI, export orchestrator);
- :mod:`.maintenance`: compaction, snapshot expiry, orphan files, retention;
- :mod:`.coverage`, :mod:`.selector`: coverage runs/gaps and the stream selector.
"""
