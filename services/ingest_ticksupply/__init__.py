"""TickSupply ingestor: catalog -> reference events, subscriptions kept in the desired state, and
trades ingested by rolling exports (gzipped CSV artifacts) published as batch envelopes."""
