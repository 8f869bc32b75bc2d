"""Sitagri AgriMarket ingestor: reference tree, live prices and news (websocket netbus or long
polling), history back-fill, news search and publishing (``python -m services.ingest_sitagri``)."""
