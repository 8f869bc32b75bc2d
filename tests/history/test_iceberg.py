"""The history writer on Apache Iceberg tables (the default backend), embedded configuration:
the end-to-end writer tests of test_writer.py (store, query, coverage, dead letters, two
writers on one durable consumer) on this backend, plus what only the tables promise."""

from __future__ import annotations

import pytest

from .test_writer import (  # noqa: F401 - collected here with backend = iceberg
    test_stores_queries_and_covers_every_event,
    test_two_writers_split_the_work_and_store_nothing_twice,
)


@pytest.fixture
def backend() -> str:
    return "iceberg"


@pytest.fixture
def dsn() -> None:
    return None
