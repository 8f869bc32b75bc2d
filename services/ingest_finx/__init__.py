"""FinX TickPlant ingestor: reference data, tick snaps and tick history -> marketbus events."""
