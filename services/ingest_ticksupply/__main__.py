from .app import TickSupplyIngestor

TickSupplyIngestor.main()
