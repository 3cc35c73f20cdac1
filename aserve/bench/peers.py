"""The servers the benchmark can run: aserve, its peers and the canned-response ceiling; which
are installed; and the command line that starts each on one app with the same settings."""

from __future__ import annotations

import atexit
import functools
import importlib.util
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aserve
from aserve.bench.apps import A2WSGI_TARGET

Interface = Literal["asgi", "wsgi"]
HOST = "127.0.0.1"
# A peer's thread pool where it has one: waitress's default, and gunicorn's advice of 2-4
# threads per core for one core.
PEER_THREADS = 4
# The app of the reload scenario: a `django-admin startproject` made for the run
# (`bench.reload`), which each server watches and reloads from its own command line.
RELOAD_APP = "reload-project"
# The settings module of that project that lists aserve's Django plugin first.
PLUGIN_SETTINGS = "settings_aserve"


@dataclass(frozen=True)
class AppSpec:
    """What a server is asked to serve: an import string, its interface, and a short name
    (`hello-wsgi`, `django`, ...) that peers restricted to some apps check."""

    name: str
    app: str
    interface: Interface


@dataclass(frozen=True)
class Launch:
    """Where and how hard a server will be loaded, which some command lines need."""

    port: int
    connections: int


Builder = Callable[[AppSpec, Launch], list[str]]
# The command line of a server reloading the reload scenario's project on a port, run from the
# project's directory as a developer runs it there.
ReloadBuilder = Callable[[int], list[str]]


@dataclass(frozen=True)
class Peer:
    name: str
    description: str
    interfaces: frozenset[Interface]
    modules: tuple[str, ...]
    build: Builder
    install: str
    # Serve only these apps (the ceiling answers hellos, runserver serves its own project).
    only: frozenset[str] | None = None
    # Extra environment variables of the server process.
    env: Callable[[AppSpec], dict[str, str]] = field(default=lambda spec: {})
    # Its command line under the reload scenario; None: it has no reloader to measure.
    reload: ReloadBuilder | None = None
    # Why it cannot run here, other than a missing module (None: it can).
    unavailable: Callable[[], str | None] = field(default=lambda: None)

    def supports(self, spec: AppSpec) -> bool:
        if spec.name == RELOAD_APP:
            return self.reload is not None
        if self.only is not None:
            return spec.name in self.only
        return spec.interface in self.interfaces

    def command(self, spec: AppSpec, launch: Launch) -> list[str]:
        return self.build(spec, launch)


def _python(*args: str) -> list[str]:
    # The harness's own interpreter, so every server runs the same Python and packages.
    return [sys.executable, *args]


def _tool(name: str, module: str) -> list[str]:
    """A console script of the harness's environment, as a developer types it (`aserve`,
    `uvicorn`); `python -m module` where the script is not installed."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which(name)
    return [found] if found else _python("-m", module)


def _aserve(spec: AppSpec, launch: Launch) -> list[str]:
    return _python(
        "-m", "aserve", spec.app, "--interface", spec.interface,
        "--host", HOST, "--port", str(launch.port), "--no-access-log",
    )  # fmt: skip


@functools.cache
def pure_tree() -> str:
    """A directory holding the aserve package that runs here, minus its compiled modules: the
    same sources as pure Python. Removed when the harness exits."""
    package = Path(aserve.__file__).parent
    root = tempfile.mkdtemp(prefix="aserve-pure-")
    atexit.register(shutil.rmtree, root, True)
    shutil.copytree(
        package,
        Path(root) / "aserve",
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"),
    )
    return root


def _aserve_pure(spec: AppSpec, launch: Launch) -> list[str]:
    # -P: the working directory (which may be the compiled build's) does not go first on
    # sys.path, so PYTHONPATH's pure tree is the aserve imported.
    command = _aserve(spec, launch)
    return [command[0], "-P", *command[1:]]


def _pure_env(spec: AppSpec) -> dict[str, str]:
    return {"PYTHONPATH": pure_tree()}


def _not_compiled() -> str | None:
    if aserve.build() == "compiled":
        return None
    return "the aserve row is pure Python already (make build-compiled; run from build/compiled)"


def _aserve_logged(spec: AppSpec, launch: Launch) -> list[str]:
    command = _aserve(spec, launch)
    command[command.index("--no-access-log")] = "--access-log"
    return command


def _aserve_wsgiref(spec: AppSpec, launch: Launch) -> list[str]:
    return [*_aserve(spec, launch), "--server", "wsgiref"]


def _ceiling(spec: AppSpec, launch: Launch) -> list[str]:
    return _python("-m", "aserve.bench.ceiling", "--host", HOST, "--port", str(launch.port))


def _uvicorn_options(launch: Launch) -> list[str]:
    return [
        "--host", HOST, "--port", str(launch.port), "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def _uvicorn(spec: AppSpec, launch: Launch) -> list[str]:
    return _python("-m", "uvicorn", spec.app, *_uvicorn_options(launch))


def _uvicorn_zttp(spec: AppSpec, launch: Launch) -> list[str]:
    command = _uvicorn(spec, launch)
    command[command.index("httptools")] = "zttp"
    return command


def _a2wsgi(spec: AppSpec, launch: Launch) -> list[str]:
    return _python(
        "-m", "uvicorn", "aserve.bench.apps:a2wsgi_factory", "--factory",
        *_uvicorn_options(launch),
    )  # fmt: skip


def _gunicorn(spec: AppSpec, launch: Launch) -> list[str]:
    return _python(
        "-m", "gunicorn", "--worker-class", "gthread", "--workers", "1",
        "--threads", str(PEER_THREADS), "--bind", f"{HOST}:{launch.port}",
        "--backlog", "2048", "--worker-connections", str(max(1000, 2 * launch.connections)),
        "--log-level", "warning", spec.app,
    )  # fmt: skip


def _waitress(spec: AppSpec, launch: Launch) -> list[str]:
    # Its default connection limit (100) and select() (1024 descriptors) would refuse the
    # 1000-connection scenario; both are raised so that it measures speed, not a setting.
    return _python(
        "-m", "waitress", f"--threads={PEER_THREADS}", f"--listen={HOST}:{launch.port}",
        f"--connection-limit={max(100, 2 * launch.connections)}", "--asyncore-use-poll",
        "--backlog=2048", spec.app,
    )  # fmt: skip


def _granian(spec: AppSpec, launch: Launch) -> list[str]:
    loop = ["--loop", "uvloop"] if spec.interface == "asgi" else []
    return _python(
        "-m", "granian", "--interface", spec.interface, "--host", HOST, "--port",
        str(launch.port), "--workers", "1", "--no-ws", "--backlog", "2048",
        "--log-level", "warning", *loop, spec.app,
    )  # fmt: skip


def _hypercorn(spec: AppSpec, launch: Launch) -> list[str]:
    return _python(
        "-m", "hypercorn", "--bind", f"{HOST}:{launch.port}", "--workers", "1",
        "--worker-class", "uvloop", "--backlog", "2048", "--log-level", "warning",
        f"{spec.interface}:{spec.app}",
    )  # fmt: skip


def _runserver(spec: AppSpec, launch: Launch) -> list[str]:
    return _python(
        "-c",
        "from aserve.bench.django_app import runserver; runserver()",
        f"{HOST}:{launch.port}",
    )


def _runserver_aserve(spec: AppSpec, launch: Launch) -> list[str]:
    return _python(
        "-c",
        "import os; os.environ['ASERVE_BENCH_DJANGO_PLUGIN'] = '1'; "
        "from aserve.bench.django_app import runserver; runserver()",
        f"{HOST}:{launch.port}",
    )


# The reload scenario's servers run with their defaults (access log included), as
# `benchmarks/reload_latency.py` has always run them.
def _aserve_reload(port: int) -> list[str]:
    return [
        *_tool("aserve", "aserve"), "mysite.wsgi:application", "--reload",
        "--host", HOST, "--port", str(port),
    ]  # fmt: skip


def _aserve_spawn_reload(port: int) -> list[str]:
    """Each worker a fresh interpreter, as on macOS and Windows."""
    return [*_aserve_reload(port), "--reload-worker", "spawn"]


def _uvicorn_reload(port: int) -> list[str]:
    return [
        *_tool("uvicorn", "uvicorn"), "mysite.wsgi:application", "--reload",
        "--interface", "wsgi", "--host", HOST, "--port", str(port),
    ]  # fmt: skip


def _runserver_reload(port: int) -> list[str]:
    return _python("manage.py", "runserver", f"{HOST}:{port}")


def _runserver_aserve_reload(port: int) -> list[str]:
    """The same `manage.py runserver`, with aserve's plugin first in INSTALLED_APPS."""
    return _python(
        "manage.py", "runserver", f"--settings=mysite.{PLUGIN_SETTINGS}", f"{HOST}:{port}"
    )


BOTH: frozenset[Interface] = frozenset(("asgi", "wsgi"))
WSGI: frozenset[Interface] = frozenset(("wsgi",))
ASGI: frozenset[Interface] = frozenset(("asgi",))
CEILING = "ceiling"
ASERVE = "aserve"

PEERS: tuple[Peer, ...] = (
    Peer(
        CEILING,
        "canned response on uvloop + httptools: no app, the physical limit",
        BOTH,
        ("uvloop", "httptools"),
        _ceiling,
        "pip install uvloop httptools",
        only=frozenset(("hello-wsgi", "hello-asgi", "user")),
    ),
    Peer(
        ASERVE,
        f"aserve ({aserve.build()}), --no-access-log",
        BOTH,
        (),
        _aserve,
        "pip install aserve",
        reload=_aserve_reload,
    ),
    Peer(
        "aserve-pure",
        "the same aserve as pure Python, without its mypyc-compiled modules",
        BOTH,
        (),
        _aserve_pure,
        "make build-compiled",
        env=_pure_env,
        unavailable=_not_compiled,
    ),
    Peer(
        "aserve+log",
        "aserve with its access log on (its default; to a file)",
        BOTH,
        (),
        _aserve_logged,
        "pip install aserve",
    ),
    Peer(
        "aserve-wsgiref",
        "aserve --server wsgiref (thread per connection, as runserver)",
        WSGI,
        (),
        _aserve_wsgiref,
        "pip install aserve",
    ),
    Peer(
        "aserve-spawn",
        "aserve --reload --reload-worker spawn (reload scenario only)",
        frozenset(),
        (),
        _aserve,
        "pip install aserve",
        reload=_aserve_spawn_reload,
    ),
    Peer(
        "uvicorn",
        "uvicorn, httptools + uvloop, 1 process, --no-access-log",
        ASGI,
        ("uvicorn", "uvloop", "httptools"),
        _uvicorn,
        "pip install 'uvicorn[standard]'",
        reload=_uvicorn_reload,
    ),
    Peer(
        "uvicorn-zttp",
        "uvicorn with its zttp parser (--http zttp, a Zig core), uvloop, 1 process",
        ASGI,
        # The zttp package, and a uvicorn that has --http zttp (0.55 has).
        ("uvicorn", "uvloop", "zttp", "uvicorn.protocols.http.zttp_impl"),
        _uvicorn_zttp,
        "pip install -U 'uvicorn[standard]' zttp",
    ),
    Peer(
        "uvicorn+a2wsgi",
        "uvicorn as above, a2wsgi's WSGIMiddleware around the WSGI app",
        WSGI,
        ("uvicorn", "uvloop", "httptools", "a2wsgi"),
        _a2wsgi,
        "pip install 'uvicorn[standard]' a2wsgi",
        env=lambda spec: {A2WSGI_TARGET: spec.app},
    ),
    Peer(
        "gunicorn",
        f"gunicorn, gthread worker, 1 process, {PEER_THREADS} threads",
        WSGI,
        ("gunicorn",),
        _gunicorn,
        "pip install gunicorn",
    ),
    Peer(
        "waitress",
        f"waitress, {PEER_THREADS} threads (its default)",
        WSGI,
        ("waitress",),
        _waitress,
        "pip install waitress",
    ),
    Peer(
        "granian",
        "granian, 1 worker (Rust HTTP; uvloop for ASGI)",
        BOTH,
        ("granian",),
        _granian,
        "pip install granian",
    ),
    Peer(
        "hypercorn",
        "hypercorn, 1 worker, uvloop (buffers WSGI request bodies, 16 MiB at most)",
        BOTH,
        ("hypercorn", "uvloop"),
        _hypercorn,
        "pip install hypercorn",
    ),
    Peer(
        "runserver",
        "Django's manage.py runserver --noreload (threaded)",
        WSGI,
        ("django",),
        _runserver,
        "pip install django",
        only=frozenset(("django",)),
        reload=_runserver_reload,
    ),
    Peer(
        "runserver-aserve",
        "manage.py runserver --noreload on aserve (the aserve.django plugin)",
        WSGI,
        ("django",),
        _runserver_aserve,
        "pip install django",
        only=frozenset(("django",)),
        reload=_runserver_aserve_reload,
    ),
)
BY_NAME = {peer.name: peer for peer in PEERS}


def module_installed(name: str) -> bool:
    """Importable by this interpreter, without importing it: a submodule is looked for as a
    file in its top-level package, since find_spec would import the packages above it."""
    top, _, rest = name.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None or not rest:
        return spec is not None
    relative = Path(*rest.split("."))
    for location in spec.submodule_search_locations or ():
        base = Path(location) / relative
        if base.with_suffix(".py").exists() or (base / "__init__.py").exists():
            return True
    return False


@dataclass(frozen=True)
class Discovery:
    available: list[Peer]
    # Each peer that is not installed, with the command that would install it.
    missing: list[tuple[Peer, str]]


def discover(
    names: Sequence[str] | None = None, installed: Callable[[str], bool] = module_installed
) -> Discovery:
    """Which of `names` (default: every peer) can run here."""
    chosen = [BY_NAME[name] for name in names] if names is not None else list(PEERS)
    available: list[Peer] = []
    missing: list[tuple[Peer, str]] = []
    for peer in chosen:
        absent = [module for module in peer.modules if not installed(module)]
        reason = peer.unavailable()
        if absent:
            missing.append((peer, f"{', '.join(absent)} not installed ({peer.install})"))
        elif reason is not None:
            missing.append((peer, reason))
        else:
            available.append(peer)
    return Discovery(available, missing)
