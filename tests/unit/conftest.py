"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture
def structlog_defaults() -> Iterator[None]:
    """structlog as it is before anything configures it, before and after the test: a test that
    configures logging leaves no cached loggers or processors to the next."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
