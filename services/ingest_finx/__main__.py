from .app import FinxIngestor

FinxIngestor.main()
