"""Digitex ingestor: markets, currencies, exchange info, order books, trades and OHLCV bars."""
