"""Spawned reload workers: a fresh interpreter per worker, where the template cannot fork one
(Windows; macOS by default) or under `--reload-worker spawn`.

The supervisor starts `python -m aserve.reload.spawn FD`, the worker's channel passed with
`pass_fds` (POSIX), or `python -m aserve.reload.spawn -`, the channel handed off on standard
input (Windows, where a child inherits no descriptor it could name). The first message on the
channel is the `Fork` a template would get, with the listening socket (and on POSIX the pipe
for stack dumps); the worker then runs as a forked one does.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Literal

from aserve.config import Config
from aserve.errors import ConfigError
from aserve.process import portable_forced
from aserve.reload.ipc import (
    WORKER_LINK,
    Channel,
    Fork,
    FromWorker,
    IPCError,
    ToWorker,
    channel_from_handoff,
    inherit_channel,
)
from aserve.reload.worker import worker_main

WorkerKind = Literal["fork", "spawn"]
# The listening socket, then the dump pipe where there is one.
SPAWN_FDS = (1, 2)


def worker_kind(config: Config) -> WorkerKind:
    """How the supervisor makes workers under these settings, on this platform."""
    if config.reload_worker == "fork":
        if not hasattr(os, "fork"):
            raise ConfigError("--reload-worker fork: this platform cannot fork; use spawn")
        return "fork"
    if config.reload_worker == "spawn":
        return "spawn"
    # macOS: see Config.reload_worker on fork and Objective-C.
    if sys.platform == "linux" and hasattr(os, "fork") and not portable_forced():
        return "fork"
    return "spawn"


def start_worker(channel: Channel[ToWorker, FromWorker]) -> subprocess.Popen[bytes]:
    """A fresh interpreter that becomes the worker at the other end of `channel` (the caller
    then sends it the `Fork`, and closes its copy of `channel`)."""
    command = [sys.executable, "-m", "aserve.reload.spawn"]
    if sys.platform == "win32":
        # Its own process group: a console's Ctrl-C reaches the supervisor, which stops the
        # workers in order (as a new session does on POSIX).
        process = subprocess.Popen(
            [*command, "-"],
            stdin=subprocess.PIPE,
            creationflags=subprocess.CREATE_NEW_PROCESS_GROUP,
        )
        assert process.stdin is not None
        with process.stdin:
            process.stdin.write(channel.handoff(process.pid))
        return process
    fd = channel.fileno()
    return subprocess.Popen(
        [*command, str(fd)],
        pass_fds=(fd,),
        # A terminal's Ctrl-C reaches the supervisor, not the workers behind its back.
        start_new_session=True,
    )


def main() -> int:
    if sys.argv[1] == "-":
        channel = channel_from_handoff(sys.stdin.buffer.read(), WORKER_LINK)
    else:
        channel = inherit_channel(int(sys.argv[1]), WORKER_LINK)
    # Windows: the browser event streams this worker hands over are shared with its parent.
    channel.peer = os.getppid()
    received = channel.recv_fds()
    if received is None:
        return 0  # the supervisor is gone
    message, fds = received
    if not isinstance(message, Fork) or len(fds) not in SPAWN_FDS:
        for fd in fds:
            socket.close(fd)  # a socket handle on Windows, which os.close() cannot close
        raise IPCError(f"a spawned worker expected Fork with its descriptors, not {message}")
    dump_fd = fds[1] if len(fds) > 1 else None
    code = 1
    try:
        code = worker_main(message, fds[0], channel, dump_fd)
    finally:
        # As a forked worker leaves: at once, whatever threads the app left running.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
