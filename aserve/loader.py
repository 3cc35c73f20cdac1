"""Import the application (`module:attr`, or a factory) and tell ASGI from WSGI."""

from __future__ import annotations

import importlib
import inspect
import io
import os
import sys
import sysconfig
import traceback
from dataclasses import dataclass
from typing import Any, Literal, cast

from asgiref.compatibility import guarantee_single_callable

from aserve.config import Interface
from aserve.errors import AppLoadError, ConfigError
from aserve.types import ASGIApp, WSGIApp

Kind = Literal["asgi", "wsgi"]
# Positional parameters of the app's callable, to the interface they mean.
_CLASS_ARITY: dict[int, Kind] = {1: "asgi", 2: "wsgi"}
_CALL_ARITY: dict[int, Kind] = {1: "asgi", 2: "wsgi", 3: "asgi"}
# How deep Django's handler may be wrapped (staticfiles, the ASGI static handler, a project's
# own middleware of the WSGI kind) and still be found.
_WRAPPERS_UNWRAPPED = 4


@dataclass(frozen=True, slots=True)
class LoadedApp:
    kind: Kind
    app: Any
    name: str
    # aserve's own app standing in for the user's (the reloader's error page): the server that
    # serves it announces nothing, since the supervisor has said why it is up.
    stand_in: bool = False

    @property
    def asgi(self) -> ASGIApp:
        return cast(ASGIApp, self.app)

    @property
    def wsgi(self) -> WSGIApp:
        return cast(WSGIApp, self.app)


def load(target: object, *, factory: bool = False, interface: Interface = "auto") -> LoadedApp:
    """Resolve `target` (an import string or the app itself) into a ready app and its kind."""
    if isinstance(target, str):
        name = target
        app = import_from_string(target)
    else:
        name = getattr(target, "__qualname__", type(target).__qualname__)
        app = target
    if factory:
        if not callable(app):
            raise AppLoadError(f"{name} is not callable, so it cannot be an app factory")
        try:
            app = app()
        except AppLoadError:
            raise  # the factory said what went wrong itself
        except Exception as exc:
            raise AppLoadError(f"app factory {name} raised: {_summary(exc)}") from exc
    if not callable(app):
        subject = f"app factory {name} returned" if factory else f"{name} is"
        raise AppLoadError(f"{subject} {_described(app)}, not a callable app")
    kind = detect_interface(app) if interface == "auto" else interface
    if kind is None:
        raise AppLoadError(
            f"{name} is neither an ASGI nor a WSGI app (its signature is {_signature(app)}); "
            "pass --interface if detection is wrong"
        )
    import_what_django_defers(app)
    if kind == "asgi" and not _is_async_callable(app):
        # asgiref takes any sync callable for ASGI 2; a sync functools.wraps wrapper of an
        # ASGI 3 coroutine function returns the coroutine itself and must stay single.
        app = guarantee_single_callable(app)  # type: ignore[no-untyped-call]
    return LoadedApp(kind=kind, app=app, name=name)


def read_env_file(path: str) -> str:
    """The text of the `--env-file`; a one-line ConfigError when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read()
    except OSError as exc:
        raise ConfigError(f"--env-file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--env-file {path} is not UTF-8 text") from exc


def load_env_file(path: str | None) -> None:
    """Set the variables of the `--env-file` before the app is imported. Those already in the
    environment win, as python-dotenv's `override=False` has it (uvicorn's --env-file too):
    a variable set for one run (`DEBUG=0 aserve ...`) overrides the file."""
    if path is None:
        return
    from dotenv import load_dotenv  # only for --env-file

    load_dotenv(stream=io.StringIO(read_env_file(path)), override=False)


def django_handler(app: object) -> object | None:
    """The Django handler `app` is, or wraps (staticfiles' handlers keep it in `.application`),
    or None when it is not Django's."""
    if "django.core.handlers.base" not in sys.modules:
        return None  # Django was never imported: the app cannot be one of its handlers
    from django.core.handlers.base import BaseHandler

    for _ in range(_WRAPPERS_UNWRAPPED):
        if isinstance(app, BaseHandler):
            return app
        app = getattr(app, "application", None)
    return None


def import_what_django_defers(app: object) -> None:
    """Django imports the URLconf, and the views it names, at the first request: an error
    there would show only then, as a bare 500. Import it now, as runserver's system checks
    do, so that it is an import error of the app (and the reloader's error page shows it)."""
    if django_handler(app) is None:
        return
    from django.conf import settings
    from django.urls import get_resolver

    urlconf = getattr(settings, "ROOT_URLCONF", None)
    if urlconf is None:
        return  # a project without URLs (set later, or per request by middleware)
    try:
        get_resolver(urlconf).url_patterns  # noqa: B018 - the property imports the URLconf
    except Exception as exc:
        raise AppLoadError(_import_failure(str(urlconf), exc)) from exc


def import_from_string(target: str) -> Any:
    module_name, sep, attrs = target.partition(":")
    if not sep or not module_name or not attrs:
        raise AppLoadError(f"APP must look like 'module:attribute', not {target!r}")
    if "" not in sys.path and "." not in sys.path:
        # Like `python -m`, import the app from the current directory.
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the module itself or a parent package missing means "not found"; `shop`
        # missing while importing `shopfront` is an error inside the user's code.
        if exc.name is not None and f"{module_name}.".startswith(f"{exc.name}."):
            raise AppLoadError(f"module {module_name!r} not found") from exc
        raise AppLoadError(_import_failure(module_name, exc)) from exc
    except Exception as exc:
        raise AppLoadError(_import_failure(module_name, exc)) from exc
    obj: Any = module
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attrs!r}") from None
    return obj


def detect_interface(app: Any) -> Kind | None:
    """ASGI 3, ASGI 2 or WSGI, from markers and signatures; None when it is neither."""
    if getattr(app, "_asgi_single_callable", False) or getattr(app, "_asgi_double_callable", False):
        return "asgi"
    if inspect.isclass(app):
        # A class as the app: ASGI 2 instantiates it with (scope), WSGI with (environ, start).
        arity = _positional_arity(app)
        return _CLASS_ARITY.get(arity) if arity is not None else None
    if _is_async_callable(app) or inspect.iscoroutinefunction(app):
        return "asgi"
    arity = _positional_arity(app)
    if arity is None:
        # (*args, **kwargs): a wrapper such as wsgiref.validate.validator; sync means WSGI.
        return "wsgi"
    return _CALL_ARITY.get(arity)


def _is_async_callable(app: Any) -> bool:
    """The function or `__call__` behind `app`, unwrapped, is a coroutine function."""
    call = app if inspect.isroutine(app) else type(app).__call__
    return inspect.iscoroutinefunction(inspect.unwrap(call))


def _positional_arity(obj: Any) -> int | None:
    """How many positional arguments the callable takes; None when it takes *args."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return None
    count = 0
    for param in params:
        if param.kind is param.VAR_POSITIONAL:
            return None
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def _signature(app: Any) -> str:
    try:
        return str(inspect.signature(app))
    except (TypeError, ValueError):
        return "unknown"


def _summary(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _described(value: object) -> str:
    """What `value` is, in words: None, or its type with its article (an int, a module)."""
    if value is None:
        return "None"
    kind = type(value).__name__
    return f"{'an' if kind[0] in 'aeiouAEIOU' else 'a'} {kind}"


def _import_failure(module_name: str, exc: BaseException) -> str:
    """One line naming the error and where in the user's code it happened."""
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else "unknown file"
        return f"cannot import {module_name!r}: SyntaxError at {where}: {exc.msg}"
    return f"cannot import {module_name!r}: {_summary(exc)}{_where(exc)}"


def _where(exc: BaseException) -> str:
    """` (file, line N)`: where in the user's code `exc` was raised. That is the last frame
    outside the standard library, installed packages and aserve: a setting Django rejects, or
    a bad argument to `json.loads`, raises deep inside the library, but the line to fix is the
    caller's. Without such a frame (the app string names a library), the last frame that is
    not importlib's machinery."""
    frames = traceback.extract_tb(exc.__traceback__)
    library = _library_dirs()
    shown = [f for f in frames if _is_users(f.filename, library)]
    if not shown:
        shown = [f for f in frames if not f.filename.startswith("<frozen")]
        shown = [f for f in shown if "importlib" not in f.filename]
    return f" ({shown[-1].filename}, line {shown[-1].lineno})" if shown else ""


def _library_dirs() -> tuple[str, ...]:
    """The directories whose code is not the user's: the standard library's and aserve's."""
    paths = sysconfig.get_paths()
    dirs = {paths["stdlib"], paths["platstdlib"], os.path.dirname(__file__)}
    return tuple(os.path.realpath(d) + os.sep for d in dirs)


def _is_users(filename: str, library: tuple[str, ...]) -> bool:
    if filename.startswith("<"):
        return False  # <frozen importlib._bootstrap>, <string>: no file to open
    parts = filename.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return not os.path.realpath(filename).startswith(library)
