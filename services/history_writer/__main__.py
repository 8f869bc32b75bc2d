from .app import HistoryWriter

HistoryWriter.main()
