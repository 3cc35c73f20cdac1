"""The import direction between aserve's layers (ARCHITECTURE.md): every import in the package,
read from the source, against the table of what each layer may import."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aserve"

# Each module's layer is the longest prefix below that it starts with.
LAYERS = {
    "aserve": "package",
    "aserve.__main__": "cli",
    "aserve.cli": "cli",
    "aserve.reload": "reload",
    "aserve.fallback": "fallback",
    "aserve.server": "server",
    "aserve.runners": "runners",
    "aserve.net": "net",
    "aserve.loader": "loader",
    "aserve.sockets": "sockets",
    "aserve.signals": "signals",
    "aserve.process": "process",
    "aserve.tls": "tls",
    "aserve.localca": "localca",
    "aserve.exchange": "exchange",
    "aserve.protocols": "protocols",
    "aserve.logs": "logs",
    "aserve.config": "config",
    "aserve.arguments": "arguments",
    "aserve.errors": "base",
    "aserve.errorpage": "base",
    "aserve.refresh": "base",
    "aserve.types": "base",
    "aserve.bench": "bench",
    "aserve.django": "django",
    "aserve.workers": "workers",
}

# What each layer may import, besides itself. Data flows down this table; nothing imports a
# layer above it.
ALLOWED = {
    # The loader: --env-file's variables are set before any serving mode imports the app.
    "cli": {"package", "config", "base", "arguments", "server", "reload", "fallback", "loader"}
    | {"tls", "localca"},
    "reload": {"package", "config", "base", "logs", "loader", "process", "sockets", "signals"}
    | {"server", "fallback"},
    # gunicorn's worker class: gunicorn's arbiter forks it and hands it sockets; it runs the
    # server on them and never reaches below it.
    "workers": {"package", "config", "base", "logs", "loader", "process", "server"},
    "fallback": {"package", "config", "base", "logs", "loader", "sockets", "signals"},
    "server": {"package", "config", "base", "logs", "loader", "process", "sockets", "signals"}
    | {"exchange", "net", "runners", "protocols", "tls"},
    "runners": {"package", "config", "base", "logs", "loader", "process", "exchange"}
    | {"protocols"},
    "net": {"base", "logs", "exchange", "protocols"},
    "loader": {"config", "base"},
    "sockets": {"config", "base"},
    "signals": set(),
    "process": {"config", "base"},
    # The TLS context from the settings; --https's local CA beneath it.
    "tls": {"config", "base", "localca"},
    "localca": {"base"},
    "exchange": {"base"},
    "protocols": {"base"},
    "logs": {"config"},
    "config": {"base"},
    "arguments": {"config"},
    "base": set(),
    "package": {"config", "server"},
    "bench": {"package", "base", "loader", "bench"},
    # The Django plugin drives the server from manage.py; it never reaches into a connection.
    "django": {"package", "config", "base", "logs", "loader", "server", "reload", "fallback"}
    | {"process", "sockets", "signals", "arguments", "tls", "localca"},
}

# Finer rules inside the table: the runners never import each other (only their factory,
# the `aserve.runners` package, knows both), the server reaches them through that factory
# only, and protocols/ may be used by the runners for request targets only.
FORBIDDEN = [
    ("aserve.runners.asgi", "aserve.runners.wsgi"),
    ("aserve.runners.wsgi", "aserve.runners.asgi"),
    ("aserve.runners.wsgi", "aserve.runners.lifespan"),
    ("aserve.server", "aserve.runners.asgi"),
    ("aserve.server", "aserve.runners.wsgi"),
    ("aserve.server", "aserve.runners.lifespan"),
    ("aserve.runners", "aserve.protocols.http11"),
    # WebSockets: a layer of their own in each of protocols/, net/ and runners/. http11 knows
    # nothing of them, the HTTP/1.1 connection reaches them only through `Upgrades`, and the
    # runners only through the exchange's offer and messages.
    ("aserve.protocols.http11", "aserve.protocols.websocket"),
    ("aserve.net.connection", "aserve.net.websocket"),
    ("aserve.runners", "aserve.protocols.websocket"),
    ("aserve.runners", "aserve.net"),
    ("aserve.runners.wsgi", "aserve.runners.websocket"),
    ("aserve.server", "aserve.runners.websocket"),
]

# Sans-IO means no I/O, no loop, no clock and no threads.
SANS_IO_FORBIDDEN = {"asyncio", "socket", "selectors", "threading", "time", "signal", "uvloop"}


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    best = None
    for prefix in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    return LAYERS[best] if best is not None else None


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at any depth in the file (a function-level import
    counts), with `from package import submodule` resolved to the submodule."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module_name(path).split(".")
                if path.name != "__init__.py":
                    package.pop()
                base = ".".join(package[: len(package) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            found.add(source)
            for alias in node.names:
                if is_module(f"{source}.{alias.name}"):
                    found.add(f"{source}.{alias.name}")
    return found


def edges() -> list[tuple[str, str]]:
    return [
        (module_name(path), imported)
        for path in sorted(PACKAGE.rglob("*.py"))
        for imported in sorted(imports_of(path))
    ]


def violations(pairs: list[tuple[str, str]]) -> list[str]:
    found = []
    for importer, imported in pairs:
        source = layer_of(importer)
        assert source is not None, f"{importer} has no layer: add it to LAYERS"
        if imported.partition(".")[0] != "aserve":
            if source == "protocols" and imported.partition(".")[0] in SANS_IO_FORBIDDEN:
                found.append(f"{importer} imports {imported}: protocols/ is sans-IO")
            continue
        target = layer_of(imported)
        assert target is not None, f"{imported} has no layer: add it to LAYERS"
        if target != source and target not in ALLOWED[source]:
            found.append(f"{importer} ({source}) imports {imported} ({target})")
        for forbidden_importer, forbidden in FORBIDDEN:
            if (
                importer == forbidden_importer or importer.startswith(forbidden_importer + ".")
            ) and (imported == forbidden or imported.startswith(forbidden + ".")):
                found.append(f"{importer} imports {imported}")
    return found


def test_every_import_follows_the_layer_table() -> None:
    assert violations(edges()) == []


def test_every_module_has_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        assert layer_of(module_name(path)) is not None, path


@pytest.mark.parametrize(
    "crossing",
    [
        # The crossings the seams issue found, and others the table must refuse.
        ("aserve.runners.wsgi", "aserve.runners.asgi"),
        ("aserve.server", "aserve.runners.asgi"),
        ("aserve.server", "aserve.runners.wsgi"),
        ("aserve.fallback", "aserve.server"),
        ("aserve.exchange", "aserve.net.connection"),
        ("aserve.exchange", "aserve.protocols.http11"),
        ("aserve.net.connection", "aserve.runners.asgi"),
        ("aserve.runners.asgi", "aserve.net.connection"),
        ("aserve.runners.wsgi", "aserve.protocols.http11"),
        ("aserve.protocols.http11", "asyncio"),
        ("aserve.protocols.http11", "aserve.exchange"),
        ("aserve.protocols.target", "time"),
        ("aserve.config", "aserve.server"),
        ("aserve.loader", "aserve.server"),
        ("aserve.process", "aserve.server"),
        ("aserve.sockets", "aserve.server"),
        ("aserve.protocols.http11", "aserve.protocols.websocket"),
        ("aserve.protocols.websocket", "asyncio"),
        ("aserve.net.connection", "aserve.net.websocket"),
        ("aserve.runners.websocket", "aserve.protocols.websocket"),
    ],
    ids=lambda pair: f"{pair[0]}->{pair[1]}",
)
def test_the_table_refuses_a_crossing(crossing: tuple[str, str]) -> None:
    assert violations([crossing]) != []


def test_the_import_scan_sees_function_level_and_submodule_imports() -> None:
    # cli imports the server only inside main(), and `from aserve.protocols import http11`
    # names a module: both must be seen, or the table checks nothing.
    assert "aserve.server" in imports_of(PACKAGE / "cli.py")
    assert ("aserve.server", "aserve.runners") in edges()
    assert ("aserve.runners", "aserve.runners.asgi") in edges()


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_load_no_server_code(flag: str) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "aserve", flag],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)},
    )
    imported = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines()}
    assert "aserve.cli" in imported
    loaded = imported & {"asyncio", "httptools", "uvloop", "aserve.server", "aserve.net"}
    assert loaded == set()
