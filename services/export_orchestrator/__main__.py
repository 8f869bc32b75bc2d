from .app import ExportOrchestrator

ExportOrchestrator.main()
