from .app import OrderRouter

OrderRouter.main()
