"""The access log: the direct path writes what the logging path would, in batches."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Iterator

import pytest

from aserve.logs import ACCESS, AccessLog, configure
from tests.support.client import http_get
from tests.support.servers import running

LINE = re.compile(
    r'^\d\d:\d\d:\d\d INFO    127\.0\.0\.1:\d+ - "GET /x\?y=1 HTTP/1\.1" 200 14 \d+\.\dms$'
)


def hello(environ: object, start_response: object) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "14")])  # type: ignore[operator]
    return [b"Hello, world!\n"]


@pytest.fixture
def clean_loggers() -> Iterator[None]:
    """Leave the aserve loggers as they were, whatever a test configures."""
    root = logging.getLogger("aserve")
    access = logging.getLogger(ACCESS)
    saved = (list(root.handlers), root.propagate, root.level, list(access.handlers))
    # Start from a process where nobody configured logging, whatever ran before.
    root.handlers.clear()
    root.propagate = True
    access.handlers.clear()
    yield
    root.handlers[:] = saved[0]
    root.propagate = saved[1]
    root.setLevel(saved[2])
    access.handlers[:] = saved[3]


def test_direct_lines_match_the_default_format(
    capsys: pytest.CaptureFixture[str], clean_loggers: None
) -> None:
    with running(hello, access_log=True) as server:
        assert http_get(server.port, "/x?y=1") == (200, b"Hello, world!\n")
        assert http_get(server.port, "/x?y=1")[0] == 200
    lines = [line for line in capsys.readouterr().err.splitlines() if '"GET' in line]
    assert len(lines) == 2
    for line in lines:
        assert LINE.match(line), line


def test_a_configured_handler_gets_records(
    capsys: pytest.CaptureFixture[str], clean_loggers: None
) -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logging.getLogger(ACCESS).addHandler(Collect())
    with running(hello, access_log=True) as server:
        assert http_get(server.port, "/x?y=1")[0] == 200
    assert len(records) == 1
    assert re.fullmatch(
        r'127\.0\.0\.1:\d+ - "GET /x\?y=1 HTTP/1\.1" 200 14 \d+\.\dms', records[0].getMessage()
    )


def test_no_access_log_writes_nothing(
    capsys: pytest.CaptureFixture[str], clean_loggers: None
) -> None:
    with running(hello, access_log=False) as server:
        assert http_get(server.port)[0] == 200
    assert '"GET' not in capsys.readouterr().err


def test_lines_of_one_iteration_are_one_write(clean_loggers: None) -> None:
    writes: list[str] = []

    class Stream(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    configure("info")
    loop = asyncio.new_event_loop()
    try:
        log = AccessLog.create(True, loop)
        assert isinstance(log, AccessLog)
        assert log.direct
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("sys.stderr", Stream())
            for i in range(3):
                log.write(f"line {i}")
            assert writes == []
            loop.run_until_complete(asyncio.sleep(0))
        assert len(writes) == 1
        assert [line.split("INFO    ")[1] for line in writes[0].splitlines()] == [
            "line 0",
            "line 1",
            "line 2",
        ]
    finally:
        loop.close()


def test_disabled_level_means_no_access_log(clean_loggers: None) -> None:
    configure("warning")
    loop = asyncio.new_event_loop()
    try:
        assert AccessLog.create(True, loop) is None
        assert AccessLog.create(False, loop) is None
    finally:
        loop.close()
