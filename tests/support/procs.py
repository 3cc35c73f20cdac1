"""Run `python -m aserve` as a child process and follow its log on stderr."""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

ROOT = Path(__file__).resolve().parents[2]
LISTENING = r"on http://127\.0\.0\.1:(\d+); quit"


def run_cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run `python -m aserve ARGS` to completion from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "aserve", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class ServerProcess:
    """`python -m aserve ARGS` in the background; stderr lines are collected as they come."""

    def __init__(
        self,
        *args: str,
        command: Sequence[str] | None = None,
        pass_fds: Sequence[int] = (),
        cwd: Path = ROOT,
        env: Mapping[str, str] | None = None,
        with_stdout: bool = False,
    ) -> None:
        """`with_stdout` reads stdout too, in the same stream of lines (runserver prints its
        banner there)."""
        argv = [*(command or [sys.executable, "-m", "aserve"]), *args]
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if with_stdout else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if with_stdout else subprocess.PIPE,
            text=True,
            pass_fds=pass_fds,
        )
        self._output = self.proc.stdout if with_stdout else self.proc.stderr
        self.lines: list[str] = []
        self._eof = False
        # Reentrant: wait_for holds it while matches() takes it again.
        self._changed = threading.Condition(threading.RLock())
        self._reader = threading.Thread(target=self._read, name="stderr-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._output is not None
        for line in self._output:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def matches(self, pattern: str) -> list[re.Match[str]]:
        """Every stderr line so far that matches `pattern`."""
        regex = re.compile(pattern)
        with self._changed:
            return [m for line in self.lines if (m := regex.search(line))]

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 15.0) -> re.Match[str]:
        """The `count`-th stderr line matching `pattern`, waiting for it to be printed."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = self.matches(pattern)
                if len(found) >= count:
                    return found[count - 1]
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    why = "exited" if self._eof else "timed out"
                    text = "".join(self.lines)
                    raise AssertionError(
                        f"{why} before printing {pattern!r} x{count}; stderr:\n{text}"
                    )
                self._changed.wait(remaining)

    def wait_listening(self) -> int:
        """The TCP port from the start-up line."""
        return int(self.wait_for(LISTENING).group(1))

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        """The exit code; all of stderr has been read when this returns."""
        code = self.proc.wait(timeout)
        self._reader.join(5.0)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5.0)
        if self._output is not None:
            self._output.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def assert_usage_error(args: list[str], *needles: str) -> str:
    """`python -m aserve ARGS` fails as a usage error: exit code 2 and one line naming the
    problem (each of `needles`), no traceback. The line."""
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("aserve: error: ")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in line
    return line


def answer_across(server: ServerProcess, port: int, act: Callable[[], None]) -> tuple[int, bytes]:
    """GET /slow of an app that says "app: slow started", `act()` while it runs (a signal,
    say), then the status and body that arrive: what a request in flight gets across it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15.0)
    try:
        conn.request("GET", "/slow")
        server.wait_for("app: slow started")
        act()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
