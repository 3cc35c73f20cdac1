"""Listening sockets: binding TCP and Unix sockets, inheriting a descriptor, and naming what
is bound for the log."""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from aserve.config import Config
from aserve.errors import ConfigError


def bind_socket(config: Config) -> socket.socket:
    """The listening socket the settings ask for: TCP, a Unix socket, or an inherited fd."""
    if config.fd is not None:
        sock = socket.socket(fileno=config.fd)
    elif config.uds is not None:
        path = config.uds
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # a stale socket left by an earlier run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
    else:
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((config.host, config.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot bind {config.bind_description}: {exc.strerror}") from exc
    sock.listen(config.backlog)
    sock.setblocking(False)
    return sock


def listening_url(config: Config, sock: socket.socket) -> str:
    """Where `sock` listens, as the log says it: the real port when the settings said 0."""
    if config.uds is None and config.fd is None:
        host = config.host if ":" not in config.host else f"[{config.host}]"
        return f"http://{host}:{sock.getsockname()[1]}"
    return config.bind_description
