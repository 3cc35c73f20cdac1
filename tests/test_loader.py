"""aserve.loader: import strings, factories, error messages, and ASGI/WSGI detection."""

from __future__ import annotations

import functools
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest

from aserve.errors import AppLoadError
from aserve.loader import Kind, detect_interface, load
from aserve.types import Message, Receive, Scope, Send, WSGIApp
from tests.support.apps import loadable
from tests.support.django_config import configure_django

# ---------------------------------------------------------------- import strings


def test_imports_module_and_attribute() -> None:
    loaded = load("tests.support.apps.loadable:asgi_app")
    assert loaded.kind == "asgi"
    assert loaded.app is loadable.asgi_app
    assert loaded.name == "tests.support.apps.loadable:asgi_app"


def test_imports_dotted_attribute_path() -> None:
    assert load("tests.support.apps.loadable:holder.app").app is loadable.asgi_app
    assert load("tests.support.apps.loadable:holder.inner.inner.app").app is loadable.asgi_app


def test_imports_wsgi_app_by_string() -> None:
    loaded = load("tests.support.apps.loadable:wsgi_app")
    assert loaded.kind == "wsgi"
    assert loaded.app is loadable.wsgi_app


def load_error(target: object, **options: Any) -> str:
    """The message of the AppLoadError that loading `target` raises; it must be one line."""
    with pytest.raises(AppLoadError) as info:
        load(target, **options)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("target", ["nocolon", ":x", "m:", "", ":"])
def test_malformed_import_string(target: str) -> None:
    assert load_error(target) == f"APP must look like 'module:attribute', not {target!r}"


def test_module_not_found() -> None:
    assert load_error("tests.support.apps.no_such_module:app") == (
        "module 'tests.support.apps.no_such_module' not found"
    )


def test_top_level_module_not_found() -> None:
    assert load_error("aserve_no_such_top_level:app") == (
        "module 'aserve_no_such_top_level' not found"
    )


def test_attribute_missing() -> None:
    assert load_error("tests.support.apps.loadable:missing") == (
        "module 'tests.support.apps.loadable' has no attribute 'missing'"
    )


def test_nested_attribute_missing() -> None:
    message = load_error("tests.support.apps.loadable:holder.nope")
    assert message == "module 'tests.support.apps.loadable' has no attribute 'holder.nope'"


@pytest.mark.parametrize("attr", ["NUMBER", "holder.not_an_app"])
def test_not_callable(attr: str) -> None:
    message = load_error(f"tests.support.apps.loadable:{attr}")
    assert message.startswith(f"tests.support.apps.loadable:{attr} is an int")
    assert "not a callable app" in message


@pytest.mark.parametrize(
    ("attr", "signature"),
    [
        ("no_arguments", "() -> 'None'"),
        ("four_arguments", "(a: 'object', b: 'object', c: 'object', d: 'object') -> 'None'"),
    ],
)
def test_neither_asgi_nor_wsgi(attr: str, signature: str) -> None:
    message = load_error(f"tests.support.apps.loadable:{attr}")
    assert message.startswith(
        f"tests.support.apps.loadable:{attr} is neither an ASGI nor a WSGI app"
    )
    assert f"(its signature is {signature});" in message
    assert "--interface" in message


# ---------------------------------------------------------------- errors inside the user's module


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for modules written by the test; they are forgotten after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write_module(directory: Path, name: str, source: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(source).lstrip())
    return path


def test_missing_dependency_of_user_module_is_not_module_not_found(user_dir: Path) -> None:
    path = write_module(
        user_dir,
        "ldr_inner_dep",
        """
        import os

        import ldr_dependency_that_is_missing

        app = None
        """,
    )
    message = load_error("ldr_inner_dep:app")
    assert message == (
        "cannot import 'ldr_inner_dep': ModuleNotFoundError: "
        f"No module named 'ldr_dependency_that_is_missing' ({path}, line 3)"
    )


def test_missing_module_whose_name_prefixes_the_app_module(user_dir: Path) -> None:
    # 'shop' is missing, but 'shopfront' exists and imports it: the error is inside shopfront.
    path = write_module(user_dir, "shopfront", "import shop\n")
    message = load_error("shopfront:app")
    assert message == (
        f"cannot import 'shopfront': ModuleNotFoundError: No module named 'shop' ({path}, line 1)"
    )


def test_missing_submodule_of_existing_package(user_dir: Path) -> None:
    (user_dir / "ldr_pkg").mkdir()
    (user_dir / "ldr_pkg" / "__init__.py").write_text("")
    assert load_error("ldr_pkg.views:app") == "module 'ldr_pkg.views' not found"


def test_import_error_inside_user_module(user_dir: Path) -> None:
    path = write_module(
        user_dir,
        "ldr_bad_name",
        """
        # a comment
        from os import this_name_does_not_exist
        """,
    )
    message = load_error("ldr_bad_name:app")
    assert message.startswith("cannot import 'ldr_bad_name': ImportError: cannot import name")
    assert "'this_name_does_not_exist'" in message
    assert message.endswith(f"({path}, line 2)")


def test_exception_at_import_time_names_file_and_line(user_dir: Path) -> None:
    path = write_module(
        user_dir,
        "ldr_raises",
        """
        def configure() -> None:
            raise RuntimeError("SECRET_KEY is not set")

        configure()
        """,
    )
    assert load_error("ldr_raises:app") == (
        f"cannot import 'ldr_raises': RuntimeError: SECRET_KEY is not set ({path}, line 2)"
    )


def test_syntax_error_names_file_and_line(user_dir: Path) -> None:
    path = write_module(
        user_dir,
        "ldr_syntax",
        """
        app = None

        def broken(:
            pass
        """,
    )
    message = load_error("ldr_syntax:app")
    assert message.startswith(f"cannot import 'ldr_syntax': SyntaxError at {path}, line 3: ")


# ---------------------------------------------------------------- factories


@pytest.mark.parametrize(("attr", "kind"), [("make_asgi", "asgi"), ("make_wsgi", "wsgi")])
def test_factory_is_called(attr: str, kind: Kind) -> None:
    loaded = load(f"tests.support.apps.loadable:{attr}", factory=True)
    assert loaded.kind == kind
    assert loaded.app is (loadable.asgi_app if kind == "asgi" else loadable.wsgi_app)


def test_factory_passed_as_object() -> None:
    calls: list[None] = []

    def factory() -> object:
        calls.append(None)
        return loadable.wsgi_app

    loaded = load(factory, factory=True)
    assert loaded.kind == "wsgi"
    assert calls == [None]


def test_factory_that_raises() -> None:
    assert load_error("tests.support.apps.loadable:broken_factory", factory=True) == (
        "app factory tests.support.apps.loadable:broken_factory raised: "
        "RuntimeError: settings missing"
    )


def test_factory_not_callable() -> None:
    message = load_error("tests.support.apps.loadable:NUMBER", factory=True)
    assert (
        message
        == "tests.support.apps.loadable:NUMBER is not callable, so it cannot be an app factory"
    )


def test_factory_returning_a_non_app() -> None:
    message = load_error("tests.support.apps.loadable:no_arguments", factory=True)
    assert "no_arguments returned None, not a callable app" in message


def test_without_factory_flag_a_factory_is_not_an_app() -> None:
    assert "neither an ASGI nor a WSGI app" in load_error("tests.support.apps.loadable:make_asgi")


# ---------------------------------------------------------------- interface detection


async def asgi3_function(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"asgi3 function"})


class ASGI3Instance:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"asgi3 instance"})


class ASGI2Class:
    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"asgi2 class"})


def asgi2_function(scope: Scope) -> Callable[[Receive, Send], Awaitable[None]]:
    async def instance(receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"asgi2 function"})

    return instance


async def asgi_with_greeting(greeting: bytes, scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": greeting})


async def asgi_with_keyword(scope: Scope, receive: Receive, send: Send, *, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def async_decorator(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    @functools.wraps(app)
    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, receive, send)

    return wrapper


def sync_decorator(app: Callable[..., Any]) -> Callable[..., Any]:
    """A plain function that passes everything through: it returns the app's coroutine."""

    @functools.wraps(app)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return app(*args, **kwargs)

    return wrapper


def wsgi_function(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi function"]


class WSGIInstance:
    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"wsgi instance"]


class WSGIClass:
    """PEP 3333: the app may be a class; calling it returns the iterable (the instance)."""

    def __init__(self, environ: WSGIEnvironment, start_response: StartResponse) -> None:
        start_response("200 OK", [("Content-Type", "text/plain")])

    def __iter__(self) -> Iterator[bytes]:
        yield b"wsgi class"


def wsgi_with_prefix(
    prefix: bytes, environ: WSGIEnvironment, start_response: StartResponse
) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [prefix + b" wsgi"]


def wsgi_decorated(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    @functools.wraps(app)
    def wrapper(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return app(environ, start_response)

    return wrapper


DETECTION: list[tuple[str, object, Kind, bytes]] = [
    ("asgi3 function", asgi3_function, "asgi", b"asgi3 function"),
    ("asgi3 instance", ASGI3Instance(), "asgi", b"asgi3 instance"),
    ("asgi2 class", ASGI2Class, "asgi", b"asgi2 class"),
    ("asgi2 function", asgi2_function, "asgi", b"asgi2 function"),
    ("asgi3 partial", functools.partial(asgi_with_greeting, b"hi"), "asgi", b"hi"),
    ("asgi3 keyword partial", functools.partial(asgi_with_keyword, body=b"kw"), "asgi", b"kw"),
    ("asgi3 async wraps", async_decorator(asgi3_function), "asgi", b"asgi3 function"),
    ("asgi3 sync wraps", sync_decorator(asgi3_function), "asgi", b"asgi3 function"),
    ("asgi2 sync wraps", sync_decorator(asgi2_function), "asgi", b"asgi2 function"),
    ("wsgi function", wsgi_function, "wsgi", b"wsgi function"),
    ("wsgi instance", WSGIInstance(), "wsgi", b"wsgi instance"),
    ("wsgi class", WSGIClass, "wsgi", b"wsgi class"),
    ("wsgi validator", validator(wsgi_function), "wsgi", b"wsgi function"),
    ("wsgi partial", functools.partial(wsgi_with_prefix, b"pre"), "wsgi", b"pre wsgi"),
    ("wsgi wraps", wsgi_decorated(wsgi_function), "wsgi", b"wsgi function"),
    ("wsgi sync wraps", sync_decorator(wsgi_function), "wsgi", b"wsgi function"),
    (
        "validated wsgi partial",
        validator(functools.partial(wsgi_with_prefix, b"v")),
        "wsgi",
        b"v wsgi",
    ),
]


async def call_asgi(app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> bytes:
    """Run one GET through an ASGI 3 callable; the response body."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    await app(scope, receive, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200
    body: bytes = sent[1]["body"]
    return body


def call_wsgi(app: WSGIApp) -> bytes:
    environ: dict[str, Any] = {"wsgi.input": BytesIO(b""), "QUERY_STRING": ""}
    setup_testing_defaults(environ)
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    assert statuses == ["200 OK"]
    return body


@pytest.mark.parametrize(
    ("app", "kind", "body"),
    [pytest.param(app, kind, body, id=name) for name, app, kind, body in DETECTION],
)
async def test_detects_interface_and_the_loaded_app_works(
    app: object, kind: Kind, body: bytes
) -> None:
    assert detect_interface(app) == kind
    loaded = load(app)
    assert loaded.kind == kind
    if kind == "asgi":
        assert await call_asgi(loaded.asgi) == body
    else:
        assert loaded.app is app
        assert call_wsgi(loaded.wsgi) == body


@pytest.mark.parametrize(
    "app",
    [loadable.no_arguments, loadable.four_arguments, lambda scope, receive: None],
    ids=["zero", "four", "two-args-lambda-is-wsgi"],
)
def test_neither_interface_detected(app: Callable[..., Any]) -> None:
    expected = "wsgi" if app.__name__ == "<lambda>" else None
    assert detect_interface(app) == expected


def test_async_function_with_four_arguments_is_still_asgi() -> None:
    # A coroutine function can only be ASGI, whatever extra defaults it takes.
    async def app(scope: Scope, receive: Receive, send: Send, extra: int = 0) -> None:
        await asgi3_function(scope, receive, send)

    assert detect_interface(app) == "asgi"


@pytest.fixture(scope="module")
def django_handlers() -> tuple[object, object]:
    configure_django()
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler

    return WSGIHandler(), ASGIHandler()


def test_detects_django_wsgi_handler(django_handlers: tuple[object, object]) -> None:
    wsgi_handler, _ = django_handlers
    assert detect_interface(wsgi_handler) == "wsgi"
    loaded = load(wsgi_handler)
    assert loaded.kind == "wsgi"
    assert loaded.app is wsgi_handler


def test_detects_django_asgi_handler(django_handlers: tuple[object, object]) -> None:
    _, asgi_handler = django_handlers
    assert detect_interface(asgi_handler) == "asgi"
    loaded = load(asgi_handler)
    assert loaded.kind == "asgi"
    # An ASGI 3 instance is used as it is, not wrapped as a double callable.
    assert loaded.app is asgi_handler


# ---------------------------------------------------------------- explicit interface


def test_explicit_wsgi_overrides_detection() -> None:
    loaded = load(asgi3_function, interface="wsgi")
    assert loaded.kind == "wsgi"
    assert loaded.app is asgi3_function


def test_explicit_asgi_overrides_detection() -> None:
    # Detected as WSGI by its (*args, **kwargs) signature; the user knows better.
    async def target(scope: Scope, receive: Receive, send: Send) -> None:
        await asgi3_function(scope, receive, send)

    class Proxy:
        def __call__(self, *args: Any) -> Any:
            return target(*args)

    proxy = Proxy()
    assert detect_interface(proxy) == "wsgi"
    loaded = load(proxy, interface="asgi")
    assert loaded.kind == "asgi"


def test_explicit_interface_accepts_an_undetectable_callable() -> None:
    loaded = load("tests.support.apps.loadable:four_arguments", interface="wsgi")
    assert loaded.kind == "wsgi"
    assert loaded.app is loadable.four_arguments


def test_explicit_asgi_still_adapts_asgi2() -> None:
    loaded = load(ASGI2Class, interface="asgi")
    assert loaded.kind == "asgi"
    assert loaded.app is not ASGI2Class


async def test_explicit_asgi_adapted_asgi2_works() -> None:
    loaded = load(asgi2_function, interface="asgi")
    assert await call_asgi(loaded.asgi) == b"asgi2 function"


def test_object_target_name_is_its_qualname() -> None:
    assert load(asgi3_function).name == "asgi3_function"
    assert load(ASGI3Instance()).name == "ASGI3Instance"
