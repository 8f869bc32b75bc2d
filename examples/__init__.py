"""Runnable marketbus consumers written as FastStream apps (``faststream run examples.<name>:app``)."""
