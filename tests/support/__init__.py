"""Helpers shared by the tests and the benchmarks, one concern a module: the HTTP response
parser and client sockets, servers and processes, captured logs, limits, and the test apps."""

from __future__ import annotations

from tests.support.limits import limits_with

__all__ = ["limits_with"]
