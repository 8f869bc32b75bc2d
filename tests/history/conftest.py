"""Fixtures of the history tests: SeaweedFS (real S3) for the lakehouse configuration."""

from .seaweedfs import seaweedfs  # noqa: F401 - a session fixture
