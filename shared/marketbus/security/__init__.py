"""Who may do what on the bus: one NATS identity per service, declared in :mod:`.identities`,
turned into nkey credentials and nats-server configuration by :mod:`.credentials`."""
