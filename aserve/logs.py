"""Logging set-up: the `aserve` logger tree, and the access log's own logger."""

from __future__ import annotations

import logging
import sys

from aserve.config import LogLevel

ACCESS = "aserve.access"


def configure(level: LogLevel) -> None:
    """Send aserve's records to stderr at `level`, unless the app configured handlers itself."""
    root = logging.getLogger("aserve")
    root.setLevel(level.upper())
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
        )
        root.addHandler(handler)
        root.propagate = False


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record is emitted (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def access_logger(enabled: bool) -> logging.Logger | None:
    """The access logger when access lines would be written, else None (nothing formatted)."""
    log = logging.getLogger(ACCESS)
    return log if enabled and log.isEnabledFor(logging.INFO) else None
