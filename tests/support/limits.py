"""The protocol limits the tests run `http11.Connection` with, derived from `Config`."""

from __future__ import annotations

from aserve.config import Config
from aserve.protocols.http11 import Limits
from aserve.server import request_limits


def limits_with(**changes: int) -> Limits:
    """The protocol limits of the default settings, with some changed (by `Limits` name)."""
    settings = {"limit_" + name: value for name, value in changes.items()}
    return request_limits(Config().replace(**settings))
