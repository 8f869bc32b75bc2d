from .app import ReplayService

ReplayService.main()
