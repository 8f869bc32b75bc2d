"""History writer: persists every md./ref. event exactly once (Apache Iceberg tables or PostgreSQL
rows) and serves it over NATS (``history.query``, ``history.coverage``) and in-process
(:mod:`services.history_writer.store`)."""
