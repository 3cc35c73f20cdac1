"""What aserve logs on 'aserve.error' and 'aserve.access', captured for a test to look at."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.polling import wait_until


class LogRecords(logging.Handler):
    """What aserve logs on 'aserve.error'.

    aserve's logging set-up stops propagation at the 'aserve' logger, so pytest's caplog (a
    handler on the root logger) would miss it: this handler listens on 'aserve.error' itself.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def errors(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno >= logging.ERROR]

    def messages(self) -> list[str]:
        """The messages logged at ERROR or above."""
        return [r.getMessage() for r in self.errors]

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]

    def wait_for_error(self, timeout: float = 5.0) -> logging.LogRecord:
        """The first ERROR record; an app thread may log it after the client has its reply."""
        assert wait_until(lambda: bool(self.errors), timeout), "nothing logged at ERROR"
        return self.errors[0]


@contextmanager
def error_records() -> Iterator[LogRecords]:
    """A `LogRecords` listening for the duration of the block."""
    logger = logging.getLogger("aserve.error")
    handler = LogRecords()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@contextmanager
def access_records() -> Iterator[LogRecords]:
    """The access lines logged during the block (a handler of its own on 'aserve.access'
    sends them through logging rather than aserve's direct writer)."""
    logger = logging.getLogger("aserve.access")
    handler = LogRecords()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
