"""Logging set-up: the `aserve` logger tree, and the access log with its fast path."""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from aserve.config import AccessLogStyle, LogLevel

ACCESS = "aserve.access"
_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
_DATEFMT = "%H:%M:%S"


def configure(level: LogLevel) -> None:
    """Send aserve's records to stderr at `level`, unless the app configured handlers itself."""
    root = logging.getLogger("aserve")
    root.setLevel(level.upper())
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt=_DATEFMT))
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


def access_line(
    client: str, request_line: str, status: int | str, size: int | str, ms: float, note: str = ""
) -> str:
    """One access line, the same in every serving mode: client, request line, status, bytes
    of body sent and milliseconds, and what went wrong (a client gone, a body cut short)."""
    line = f'{client} - "{request_line or "-"}" {status} {size} {ms:.1f}ms'
    return f"{line} ({note})" if note else line


def access_logger(enabled: bool) -> logging.Logger | None:
    """The access logger when access lines would be written, else None (nothing formatted)."""
    log = logging.getLogger(ACCESS)
    return log if enabled and log.isEnabledFor(logging.INFO) else None


class AccessLog:
    """One line per response, written when it completes.

    A `logging` record costs about 12 us and its write and flush as much again, which halved
    a hello world's throughput. When aserve's own stderr handler is the only one that would
    see the line (nobody configured logging), the line is formatted the same way here and
    the lines of one loop iteration go out in a single write; otherwise they go through the
    `aserve.access` logger as usual.
    """

    def __init__(self, logger: logging.Logger, loop: asyncio.AbstractEventLoop) -> None:
        self.logger = logger
        self.loop = loop
        self.direct = _only_default_handler(logger)
        self._lines: list[str] = []
        self._second = -1
        self._prefix = ""

    @staticmethod
    def create(
        enabled: bool, loop: asyncio.AbstractEventLoop, style: AccessLogStyle = "aserve"
    ) -> AccessLog | RunserverAccessLog | None:
        """The access log the settings ask for; None when no line would be written."""
        if style == "runserver":
            return RunserverAccessLog() if enabled else None
        logger = access_logger(enabled)
        return AccessLog(logger, loop) if logger is not None else None

    def log(
        self,
        client: str,
        request_line: str,
        status: int | str,
        size: int | str,
        ms: float,
        note: str = "",
    ) -> None:
        self.write(access_line(client, request_line, status, size, ms, note))

    def write(self, line: str) -> None:
        if not self.direct:
            self.logger.info("%s", line)
            return
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._prefix = time.strftime(_DATEFMT, time.localtime(now)) + " INFO    "
        if not self._lines:
            self.loop.call_soon(self.flush)
        self._lines.append(self._prefix + line + "\n")

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            stream = sys.stderr
            stream.write("".join(lines))
            stream.flush()


class ThreadedAccessLog:
    """Access lines through the `aserve.access` logger, a record each: the wsgiref mode's
    connection threads have no loop to batch writes on."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    @staticmethod
    def create(
        enabled: bool, style: AccessLogStyle
    ) -> ThreadedAccessLog | RunserverAccessLog | None:
        if style == "runserver":
            return RunserverAccessLog() if enabled else None
        logger = access_logger(enabled)
        return ThreadedAccessLog(logger) if logger is not None else None

    def log(
        self,
        client: str,
        request_line: str,
        status: int | str,
        size: int | str,
        ms: float,
        note: str = "",
    ) -> None:
        self.logger.info("%s", access_line(client, request_line, status, size, ms, note))


# English month names, as runserver's lines (http.server's log_date_time_string) have them
# whatever the locale.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class RunserverAccessLog:
    """Lines on Django's `django.server` logger as runserver logs them: its formatter adds
    the time and colours by status, the level follows the status (5xx error, 4xx warning), and
    a project's LOGGING may send them anywhere. The milliseconds are aserve's addition."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("django.server")

    def log(
        self,
        client: str,
        request_line: str,
        status: int | str,
        size: int | str,
        ms: float,
        note: str = "",
    ) -> None:
        code = status if isinstance(status, int) else 0
        level = logging.ERROR if code >= 500 else logging.WARNING if code >= 400 else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        now = time.localtime()
        extra = {
            "request": None,
            "server_time": f"{now.tm_mday:02d}/{_MONTHS[now.tm_mon - 1]}/{now.tm_year:04d} "
            f"{now.tm_hour:02d}:{now.tm_min:02d}:{now.tm_sec:02d}",
            "status_code": code,
        }
        suffix = f" ({note})" if note else ""
        self.logger.log(
            level,
            '"%s" %s %s %s',
            request_line or "-",
            status,
            size,
            f"{ms:.1f}ms{suffix}",
            extra=extra,
        )

    def flush(self) -> None:
        pass


def _only_default_handler(logger: logging.Logger) -> bool:
    """True when a record on `logger` would reach nothing but aserve's default handler."""
    root = logging.getLogger("aserve")
    if logger.handlers or logger.filters or not logger.propagate or root.filters:
        return False
    return (
        len(root.handlers) == 1
        and type(root.handlers[0]) is _StderrHandler
        and not root.handlers[0].filters
        and not root.propagate
    )
