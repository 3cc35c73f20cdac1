"""Listening sockets: binding TCP and Unix sockets, inheriting a descriptor, removing a Unix
socket's file afterwards, and naming what is bound for the log."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import sys
from collections.abc import Iterator

from aserve.config import Config
from aserve.errors import ConfigError

# How long to wait for an answer on an existing Unix socket before taking it as in use.
_PROBE_TIMEOUT = 1.0


def bind_socket(config: Config) -> socket.socket:
    """The listening socket the settings ask for: TCP, a Unix socket, or an inherited fd.
    A socket that cannot be had is a ConfigError naming it, never a traceback."""
    if config.fd is not None:
        sock = _inherit(config.fd)
    elif config.uds is not None:
        sock = _bind_unix(config.uds)
    else:
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        if sys.platform == "win32":
            # Windows' SO_REUSEADDR would let this bind a port another server listens on
            # (both then get connections); SO_EXCLUSIVEADDRUSE refuses that, as POSIX does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((config.host, config.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot bind {config.bind_description}: {exc.strerror}") from exc
    try:
        sock.listen(config.backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {config.bind_description}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


@contextlib.contextmanager
def bound(config: Config) -> Iterator[socket.socket]:
    """`bind_socket(config)` for the length of the block; then the socket is closed and a Unix
    socket's file removed, if it still is the one bound here."""
    sock = bind_socket(config)
    path = config.uds if config.fd is None else None
    inode = _inode(path) if path is not None else None
    try:
        yield sock
    finally:
        sock.close()
        if path is not None and inode is not None and _inode(path) == inode:
            with contextlib.suppress(OSError):
                os.unlink(path)


def listening_url(config: Config, sock: socket.socket) -> str:
    """Where `sock` listens, as the log says it: the real port when the settings said 0."""
    if config.uds is None and config.fd is None:
        host = config.host if ":" not in config.host else f"[{config.host}]"
        return f"{'https' if config.tls else 'http'}://{host}:{sock.getsockname()[1]}"
    return config.bind_description


def _inherit(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigError(f"--fd {fd}: {exc.strerror or exc}") from exc
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ConfigError(f"--fd {fd} is not a stream socket")
    return sock


def _bind_unix(path: str) -> socket.socket:
    if not hasattr(socket, "AF_UNIX"):
        # Windows' Python has no AF_UNIX, whatever the Windows version supports.
        raise ConfigError(f"cannot bind unix:{path}: this platform has no Unix domain sockets")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot bind unix:{path}: {exc.strerror}") from exc
    else:
        if not stat.S_ISSOCK(mode):
            raise ConfigError(f"cannot bind unix:{path}: it exists and is not a socket")
        if _answers(path):
            # As a TCP port in use: another server listens there, and unlinking its socket
            # would leave it running and unreachable.
            raise ConfigError(f"cannot bind unix:{path}: a server is already listening there")
        os.unlink(path)  # a stale socket left by an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind unix:{path}: {exc.strerror}") from exc
    return sock


def _answers(path: str) -> bool:
    """Whether something accepts connections on the Unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        # A listener with a full backlog makes connect() wait: it still counts as one.
        probe.settimeout(_PROBE_TIMEOUT)
        try:
            probe.connect(path)
        except TimeoutError:
            return True
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return False
            raise ConfigError(f"cannot bind unix:{path}: {exc.strerror}") from exc
    return True


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None
