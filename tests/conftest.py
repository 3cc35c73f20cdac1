"""Fixtures only; what they hand out lives in tests/support."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.logs import LogRecords, error_records
from tests.support.servers import ServeFactory, serving


@pytest.fixture
def serve() -> Iterator[ServeFactory]:
    """`serve(app, **settings)` starts a server that stops at the end of the test."""
    with serving() as start:
        yield start


@pytest.fixture
def error_log() -> Iterator[LogRecords]:
    """What aserve logs on 'aserve.error' during the test."""
    with error_records() as records:
        yield records
