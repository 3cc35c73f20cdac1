"""Every setting of aserve, in one frozen dataclass validated once; the CLI is built from it."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal

from aserve.errors import ConfigError

Interface = Literal["auto", "asgi", "wsgi"]
ServerKind = Literal["aserve", "wsgiref"]
LifespanMode = Literal["auto", "on", "off"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
LoopKind = Literal["auto", "uvloop", "asyncio"]
AccessLogStyle = Literal["aserve", "runserver"]
WebSocketMode = Literal["auto", "on", "off"]
CertReqs = Literal["none", "optional", "required", "0", "1", "2"]
ReloadWorker = Literal["auto", "fork", "spawn"]


def setting(
    default: Any,
    help: str,
    *,
    metavar: str | None = None,
    cli: bool = True,
    runserver: bool = True,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A `Config` field: its default, the help text the CLI shows for it, whether runserver on
    aserve offers the option too, and former spellings of the option that the CLI still
    accepts."""
    meta: dict[str, Any] = {
        "help": help,
        "metavar": metavar,
        "cli": cli,
        "runserver": runserver,
        "aliases": aliases,
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# Numeric settings by the least value they take: 0 where it means "none" or "no limit", more
# than 0 for timeouts a client could not meet at 0, 1 for sizes and counts that 0 would break.
_NON_NEGATIVE = (
    "timeout_keep_alive",
    "timeout_graceful_shutdown",
    "limit_request_body",
    "limit_concurrency",
    "limit_pipeline",
    "limit_drain",
)
_POSITIVE = ("timeout_request_head", "timeout_request_body", "timeout_worker_start")
_AT_LEAST_ONE = (
    "backlog",
    "limit_request_line",
    "limit_request_fields",
    "limit_request_field_size",
    "limit_request_head",
    "limit_buffer",
    "limit_body_buffer",
)


def check_trusted(value: str, name: str) -> None:
    """Refuse a list of trusted proxies that is not comma-separated addresses, networks or *."""
    for raw in value.split(","):
        entry = raw.strip()
        if entry and entry != "*":
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{name}: {entry!r} is not an IP address or network (or *)"
                ) from None


@dataclass(frozen=True, slots=True)
class Config:
    """Settings shared by the CLI, `aserve.run()` and `Server`; picklable for the supervisor."""

    host: str = setting("127.0.0.1", "Bind to this address.", metavar="ADDR")
    port: int = setting(8000, "Bind to this TCP port (0 picks a free one).")
    uds: str | None = setting(
        None, "Bind to this Unix domain socket instead of TCP.", metavar="PATH"
    )
    fd: int | None = setting(None, "Serve on this already-bound socket file descriptor.")
    interface: Interface = setting("auto", "Application interface; auto detects it.")
    factory: bool = setting(False, "APP is a callable that returns the application.")
    # Not runserver's: manage.py has imported the settings before the command runs, too early
    # for variables aserve would set.
    env_file: str | None = setting(
        None,
        "Set the variables of this file (KEY=value lines, as a .env file) before the app is "
        "imported; variables already in the environment win.",
        metavar="PATH",
        runserver=False,
    )
    server: ServerKind = setting(
        "aserve", "aserve: event loop server; wsgiref: the stdlib threaded server runserver uses."
    )
    # uvicorn's spelling; its default, $WEB_CONCURRENCY when set, is the CLI's to read (this
    # dataclass does no I/O). 1 keeps today's single process, with no supervisor.
    workers: int = setting(
        1,
        "Worker processes forked by a supervisor that binds once and replaces any that dies; "
        "SIGHUP restarts them one by one, SIGTTIN/SIGTTOU add or remove one "
        "(default: $WEB_CONCURRENCY, else 1)",
        metavar="N",
        runserver=False,
    )
    threads: int = setting(
        16,
        "WSGI thread pool size: how many WSGI requests run at once (a blocked view holds one).",
    )
    lifespan: LifespanMode = setting("auto", "ASGI lifespan protocol: auto tolerates apps without.")
    root_path: str = setting(
        "", "Mount prefix: ASGI root_path and WSGI SCRIPT_NAME.", metavar="PATH"
    )
    access_log: bool = setting(True, "Log one line per response.")
    access_log_style: AccessLogStyle = setting(
        "aserve",
        "aserve: lines on aserve.access; runserver: on django.server, as runserver logs them.",
        cli=False,
    )
    log_level: LogLevel = setting("info", "Logging threshold.")
    # A browser reuses a connection within seconds or not at all; 5 s is uvicorn's and Apache's
    # KeepAliveTimeout, and frees idle connections for the concurrency limit sooner than
    # nginx's 75 s would.
    timeout_keep_alive: float = setting(
        5.0, "Close keep-alive connections idle for this many seconds.", metavar="SECONDS"
    )
    # A client sends a request head in one write, so 10 s is ample even over a slow link, and it
    # bounds how long a slowloris connection (a head trickled a byte at a time) lives: h2o's
    # http1-request-timeout is 10 s; nginx's client_header_timeout 60 s and Apache's
    # mod_reqtimeout header=20-40 are laxer; gunicorn and uvicorn have none (uvicorn stops its
    # keep-alive timer at the first byte, so a trickled head is never cut off).
    timeout_request_head: float = setting(
        10.0,
        "A request head must be complete this many seconds after its first byte (after the "
        "connection opens, for the first request); then 408 and close.",
        metavar="SECONDS",
    )
    # The longest silence while the app waits for body bytes: h2o's http1-request-io-timeout is
    # 30 s, nginx's client_body_timeout 60 s, Apache's mod_reqtimeout body=20 (extended by
    # data received); gunicorn and uvicorn have none. 30 s outlasts any stall of a live client.
    timeout_request_body: float = setting(
        30.0,
        "While the app waits for request body bytes, close (408 if no response started) after "
        "this many seconds without one.",
        metavar="SECONDS",
    )
    # Long enough for ordinary requests to finish, short enough that a Ctrl-C or a reload never
    # makes a developer wait on a long poll or an event stream (uvicorn waits for them forever;
    # gunicorn's graceful_timeout is 30 s, for production).
    timeout_graceful_shutdown: float = setting(
        5.0,
        "On SIGTERM/SIGINT, wait this long for in-flight requests before cancelling them.",
        metavar="SECONDS",
    )
    loop: LoopKind = setting("auto", "Event loop implementation; auto prefers uvloop.")
    backlog: int = setting(2048, "Listen backlog: connections the kernel queues before accept.")
    # Limits on the request head. 8190 bytes per line and 100 fields are Apache's defaults
    # (LimitRequestLine, LimitRequestFieldSize, LimitRequestFields), also gunicorn's field limits;
    # nginx's 4 x 8 KiB large_client_header_buffers is in the same range.
    limit_request_line: int = setting(
        8190, "Longest request line in bytes; longer gets 414.", metavar="BYTES"
    )
    # Apache's LimitRequestFields and gunicorn's limit_request_fields.
    limit_request_fields: int = setting(100, "Most header fields in a request; more gets 431.")
    # Apache's LimitRequestFieldSize and gunicorn's limit_request_field_size.
    limit_request_field_size: int = setting(
        8190, "Longest header field (name and value) in bytes; longer gets 431.", metavar="BYTES"
    )
    # Apache and gunicorn bound only each field; 64 KiB in all leaves room for large cookies
    # (browsers allow 4 KiB each) while bounding what a head costs before the app runs: nginx's
    # large_client_header_buffers give 32 KiB, Node's --max-http-header-size 16 KiB.
    limit_request_head: int = setting(
        65536, "Largest request head (line and fields) in bytes; larger gets 431.", metavar="BYTES"
    )
    # Bodies stream to the app and never sit in memory, so this bounds what an app may be made
    # to consume, not aserve's memory: 1 GiB is h2o's limit-request-body and Apache's
    # LimitRequestBody (since 2.4.54), far above any upload tried on a development server;
    # nginx's 1 MiB client_max_body_size would refuse ordinary file uploads.
    limit_request_body: int = setting(
        1 << 30,
        "Largest request body in bytes (0: no limit); a larger Content-Length gets 413 before "
        "the app runs, a chunked body is cut off with 413 when it passes the limit.",
        metavar="BYTES",
    )
    # gunicorn's worker_connections is 1000, h2o's max-connections 1024, nginx's
    # worker_connections 512. 1000 stays under the usual 1024 soft RLIMIT_NOFILE, so at the
    # limit clients get a 503 rather than connections failing to be accepted (EMFILE).
    limit_concurrency: int = setting(
        1000,
        "Most open connections (0: no limit). At the limit a new connection closes the one idle "
        "longest (between requests or in an unfinished head); if every connection has a "
        "request in the app, the new one gets 503 and is closed.",
        metavar="N",
    )
    # Depth 16 is the deepest pipelining in common use (the TechEmpower plaintext test); 32
    # leaves room while bounding the Request objects one 256 KiB read of tiny requests makes.
    limit_pipeline: int = setting(
        32,
        "Most requests parsed ahead of the one being answered; beyond it the connection answers "
        "those and closes (clients retry the rest).",
        metavar="N",
    )
    # 64 KiB matches asyncio's default transport high-water mark: enough to keep a socket busy,
    # small enough that a slow consumer bounds memory per connection.
    limit_buffer: int = setting(
        65536,
        "Bytes of response queued for a slow client before the app's sends wait.",
        metavar="BYTES",
        aliases=("--flow-buffer",),
    )
    # Each time reading pauses for a full buffer, the app's thread and the loop hand over
    # twice; a 64 KiB buffer made that once per 48 KiB read (uvloop reads up to 250 KB) and
    # held 16 MiB uploads to 0.45x granian's speed. 1 MiB lets four reads go by per hand-off
    # and still bounds an unread upload's memory per connection.
    limit_body_buffer: int = setting(
        1048576,
        "Bytes of request body read ahead of the app before reading from the client pauses.",
        metavar="BYTES",
    )
    # Reading and dropping 256 KiB takes well under a millisecond on loopback and a few on a
    # LAN, less than a client's new connection costs; beyond it, closing is cheaper than
    # reading an upload nobody wants.
    limit_drain: int = setting(
        262144,
        "Unread request body read and discarded after a response to keep the connection.",
        metavar="BYTES",
        aliases=("--drain-limit",),
    )
    # With hundreds of requests in flight, full collections walk the whole heap (modules, the
    # app) over and over, and Python's young-generation threshold (700 allocations) promotes
    # live request objects: at 1000 connections that cost aserve ~15% of its requests/s.
    tune_gc: bool = setting(
        True,
        "Once the app is loaded, exempt what exists then from garbage collection (gc.freeze) "
        "and collect the young generation every 5,000 allocations instead of 700, unless the "
        "app set the collector up itself. Only when aserve runs on the main thread.",
    )
    reload: bool = setting(False, "Restart the worker when files change (development).")
    reload_browser: bool = setting(
        False,
        "Also refresh the browser's pages after each reload (implies --reload): a script is "
        "added to every HTML page the app sends.",
    )
    # Long enough for the slowest honest start (a large Django project's imports and checks take
    # seconds); an import that hangs (a loop, a network call) is then shown with its stack.
    timeout_worker_start: float = setting(
        60.0,
        "Under --reload or --workers, a worker not serving this many seconds after it was "
        "started is stopped (under --reload, the error page shows where it was).",
        metavar="SECONDS",
    )
    reload_dirs: list[str] = setting(
        [], "Watch this directory (repeatable; default: current directory).", metavar="DIR"
    )
    reload_includes: list[str] = setting(
        [],
        "Restart on changes to files matching this glob (repeatable; replaces the default "
        "*.py, *.html, *.txt, *.json, *.toml, *.yaml, *.env... set). Relative to the watched "
        "directory when it has a slash.",
        metavar="GLOB",
    )
    reload_excludes: list[str] = setting(
        [],
        "Ignore changes to files or directories matching this glob (repeatable).",
        metavar="GLOB",
    )
    # watchfiles' step: changes closer together than this are one restart; 50 ms keeps a
    # formatter run or a `git switch` to one restart and costs a third of the 150 ms budget.
    reload_delay: float = setting(
        0.05,
        "Wait this long after a change for more before restarting (debounce).",
        metavar="SECONDS",
    )
    # In Docker for Mac or WSL, and on network mounts, a save on the host raises no file
    # system event where aserve runs: only polling sees it (every 300 ms, watchfiles' default,
    # which WATCHFILES_POLL_DELAY_MS changes).
    reload_poll: bool = setting(
        False,
        "Poll the watched directories for changes instead of waiting for file system events, "
        "which do not arrive from Docker for Mac, WSL or network mounts "
        "(WATCHFILES_FORCE_POLLING=1 does the same).",
    )
    # fork: a worker in tens of milliseconds, from a template with the app's libraries
    # imported. Windows has no fork(). On macOS a process forked after Objective-C frameworks
    # initialized in its parent (anything touching Cocoa, some proxy or keychain look-ups) may
    # crash in the child ("objc[...]: +[... initialize] may have been in progress in another
    # thread when fork() was called"), which is why Python's multiprocessing spawns there
    # since 3.8; OBJC_DISABLE_INITIALIZE_FORK_SAFETY=YES silences the check, not the hazard.
    reload_worker: ReloadWorker = setting(
        "auto",
        "How --reload and --workers make a worker: fork it from a template process that has "
        "the app's libraries imported (fast), or spawn a fresh interpreter (slower, safe "
        "everywhere). "
        "auto: fork on Linux, spawn on macOS and Windows.",
    )

    # -- TLS (uvicorn's spellings) ------------------------------------------------------------
    ssl_certfile: str | None = setting(
        None, "Serve HTTPS with this PEM certificate (chain) file.", metavar="PATH"
    )
    ssl_keyfile: str | None = setting(
        None,
        "The certificate's private key (PEM); default: in the certificate file.",
        metavar="PATH",
    )
    ssl_keyfile_password: str | None = setting(
        None, "Password of an encrypted private key.", metavar="PASSWORD"
    )
    ssl_ca_certs: str | None = setting(
        None,
        "CA certificates (PEM) that client certificates are verified against.",
        metavar="PATH",
    )
    # uvicorn's --ssl-cert-reqs takes ssl.VerifyMode's number; the names say the same.
    ssl_cert_reqs: CertReqs = setting(
        "none",
        "Client certificates: none asks for none; optional verifies one if sent; required "
        "refuses clients without one (0, 1, 2 as uvicorn spells them are accepted too).",
    )
    # Not uvicorn's "TLSv1", which lets TLS 1.2 fall back to CBC and SHA-1 suites: Python's
    # default list (forward secrecy, AEAD first), as ssl.create_default_context sets it.
    ssl_ciphers: str | None = setting(
        None,
        "OpenSSL cipher string for TLS 1.2; None keeps Python's list. TLS 1.3 suites are "
        "OpenSSL's.",
        metavar="CIPHERS",
    )
    # Not runserver's spelling: its plugin offers runserver_plus's --cert-file/--key-file too.
    https: bool = setting(
        False,
        "Serve HTTPS with a certificate for localhost, 127.0.0.1 and ::1 signed by a local CA "
        "that aserve creates once and caches (needs aserve[https]); prints how to trust it.",
    )

    # -- Proxy headers (uvicorn's spellings) --------------------------------------------------
    proxy_headers: bool = setting(
        True,
        "Take the client address, scheme and host from X-Forwarded-For/-Proto/-Host and "
        "Forwarded (RFC 7239), from trusted peers (--forwarded-allow-ips) only.",
    )
    # None: the FORWARDED_ALLOW_IPS variable, else 127.0.0.1, as uvicorn reads it; resolved
    # where the server starts, so that a Config stays a pure value.
    forwarded_allow_ips: str | None = setting(
        None,
        "Peers trusted to send proxy headers: comma-separated IPs or networks (10.0.0.0/8), "
        "* for all. None: $FORWARDED_ALLOW_IPS, else 127.0.0.1. Unix socket peers are always "
        "trusted.",
        metavar="IPS",
    )

    # -- WebSockets (uvicorn's spellings of the same settings) --------------------------------
    ws: WebSocketMode = setting(
        "auto",
        "WebSockets for ASGI apps: auto serves them when the websockets library is importable; "
        "off answers an Upgrade as plain HTTP (RFC 9110 §7.8 lets a server ignore it).",
    )
    # uvicorn's and websockets' default is 1 MiB, which a file sent as one message passes
    # easily in development; 16 MiB still bounds what one message costs in memory (daphne's
    # was unbounded until 4.2.2).
    ws_max_size: int = setting(
        16 * 1024 * 1024,
        "Largest incoming WebSocket message in bytes; a larger one closes the connection with "
        "1009 (message too big).",
        metavar="BYTES",
    )
    # uvicorn's default: with 16 MiB messages, 32 of them bound what one connection may hold
    # for an app that does not receive; reading pauses until it does.
    ws_max_queue: int = setting(
        32,
        "Incoming WebSocket messages queued for an app that does not receive them, before "
        "reading from the client pauses.",
        metavar="N",
    )
    # uvicorn's and websockets' 20 s: often enough to keep NAT and proxy mappings alive
    # (they drop idle flows after 30 s or more) and to notice a dead peer within a minute.
    ws_ping_interval: float = setting(
        20.0,
        "Send a WebSocket ping after this many seconds without anything from the client "
        "(0: never).",
        metavar="SECONDS",
    )
    ws_ping_timeout: float = setting(
        20.0,
        "Close a WebSocket (1011) whose client has not answered a ping within this many seconds.",
        metavar="SECONDS",
    )
    ws_per_message_deflate: bool = setting(
        True, "Offer permessage-deflate compression (RFC 7692) to WebSocket clients."
    )

    def __post_init__(self) -> None:
        self._check_numbers()
        self._check_choices()
        if self.reload_browser and not self.reload:
            object.__setattr__(self, "reload", True)
        self._check_workers()
        self._check_websockets()
        self._check_tls()

    def _check_numbers(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, not {self.port}")
        if self.fd is not None and self.fd < 0:
            raise ConfigError(f"--fd must be a non-negative file descriptor, not {self.fd}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, not {self.workers}")
        if self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, not {self.threads}")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} cannot be negative")
        for name in _POSITIVE:
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be more than 0")
        for name in _AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.reload_delay <= 10:
            raise ConfigError("--reload-delay must be between 0 and 10 seconds")

    def _check_choices(self) -> None:
        if self.uds is not None and self.fd is not None:
            raise ConfigError("--uds and --fd cannot be used together")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise ConfigError("--root-path must start with '/' and not end with one, like /app")
        if self.server == "wsgiref" and self.reload_browser:
            raise ConfigError("--reload-browser needs --server aserve, not wsgiref")
        if self.server == "wsgiref" and self.interface == "asgi":
            raise ConfigError(
                "--server wsgiref serves WSGI apps only; use --server aserve for ASGI"
            )

    def _check_workers(self) -> None:
        if self.workers == 1:
            return
        if self.reload:
            raise ConfigError(
                "--workers cannot be used with --reload: the reloader runs one worker, "
                "restarted on each change"
            )
        if self.server == "wsgiref":
            raise ConfigError("--workers needs --server aserve, not wsgiref")

    def _check_websockets(self) -> None:
        if self.ws_max_size < 1 or self.ws_max_queue < 1:
            raise ConfigError("--ws-max-size and --ws-max-queue must be at least 1")
        if not self.ws_ping_interval >= 0:  # NaN too
            raise ConfigError("--ws-ping-interval cannot be negative")
        if not self.ws_ping_timeout > 0:
            raise ConfigError("--ws-ping-timeout must be more than 0")

    def _check_tls(self) -> None:
        if self.https and (self.ssl_certfile is not None or self.ssl_keyfile is not None):
            raise ConfigError("--https makes its own certificate: drop it or --ssl-certfile")
        if self.tls and self.server == "wsgiref":
            raise ConfigError("--server wsgiref serves plain HTTP only; use --server aserve")
        if self.tls and self.reload_browser:
            # Its event streams move from the worker to the supervisor as sockets, and a TLS
            # session's state cannot move with them.
            raise ConfigError("--reload-browser works over plain HTTP only, not with TLS")
        if self.forwarded_allow_ips is not None:
            check_trusted(self.forwarded_allow_ips, "--forwarded-allow-ips")

    @property
    def tls(self) -> bool:
        """Whether the server speaks TLS."""
        return self.https or self.ssl_certfile is not None or self.ssl_keyfile is not None

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed, validated again."""
        return dataclasses.replace(self, **changes)

    @property
    def bind_description(self) -> str:
        if self.uds is not None:
            return f"unix:{self.uds}"
        if self.fd is not None:
            return f"fd://{self.fd}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"
