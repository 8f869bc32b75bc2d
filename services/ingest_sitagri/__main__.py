from .app import SitagriIngestor

SitagriIngestor.main()
