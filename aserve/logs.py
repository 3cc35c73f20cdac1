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
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
        )
        root.addHandler(handler)
        root.propagate = False


def access_logger(enabled: bool) -> logging.Logger | None:
    """The access logger when access lines would be written, else None (nothing formatted)."""
    log = logging.getLogger(ACCESS)
    return log if enabled and log.isEnabledFor(logging.INFO) else None
