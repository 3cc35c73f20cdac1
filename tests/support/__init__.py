"""Helpers shared by the tests and the benchmarks, one concern a module: the response parser
and client sockets, servers, processes, captured logs, limits, polling, Django's settings,
the example Django project run by manage.py, http11 event summaries, and the test apps."""

from __future__ import annotations

from tests.support.limits import limits_with

__all__ = ["limits_with"]
