from .app import DigitexIngestor

DigitexIngestor.main()
