"""Fixtures only; what they hand out lives in tests/support."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.djangoproject import copy_of, migrated_copy
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


@pytest.fixture(scope="session")
def migrated_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example Django project, migrated once for the whole run: tests copy it."""
    return migrated_copy(tmp_path_factory.mktemp("djangoproject") / "migrated")


@pytest.fixture
def django_project(migrated_project: Path, tmp_path: Path) -> Path:
    """A migrated copy of the example Django project of the test's own, to edit at will."""
    return copy_of(migrated_project, tmp_path / "site")
