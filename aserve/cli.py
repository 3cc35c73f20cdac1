"""The `aserve` command: arguments built from `Config`'s fields, errors turned into exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any, NoReturn

from aserve import __version__
from aserve.config import Config
from aserve.errors import AserveError

EXIT_USAGE = 2

_SHORT_HELP = """\
Serve a WSGI or ASGI app. APP is module:attribute, imported from the current directory,
e.g. mysite.wsgi:application or main:app."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage wall: the message names the problem.
        self.exit(EXIT_USAGE, f"aserve: error: {message} (see aserve --help)\n")


def _field_type(hint: Any) -> tuple[Any, tuple[str, ...] | None]:
    """The scalar type of a setting and its allowed values (for Literal settings)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is typing.Literal:
        return str, typing.get_args(hint)
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], None
    return hint, None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aserve",
        description=_SHORT_HELP,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("app", metavar="APP", help="The application, as module:attribute.")
    hints = typing.get_type_hints(Config)
    for field in dataclasses.fields(Config):
        meta = field.metadata
        if not meta.get("cli", True):
            continue
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        kind, choices = _field_type(hint)
        kwargs: dict[str, Any] = {"dest": field.name, "help": meta["help"]}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = field.default
        elif typing.get_origin(hint) is list:
            # argparse's append copies its default before appending: [] is never shared.
            kwargs.update(action="append", type=kind, default=[], metavar=meta["metavar"])
            flag = flag.removesuffix("s")
        else:
            kwargs.update(type=kind, default=field.default, metavar=meta["metavar"])
            if choices is not None:
                kwargs["choices"] = choices
                kwargs["metavar"] = None
        parser.add_argument(flag, *meta["aliases"], **kwargs)
    parser.add_argument("--version", action="version", version=f"aserve {__version__}")
    return parser


def parse(argv: Sequence[str] | None = None) -> tuple[str, Config]:
    """APP and the settings from the command line; usage errors exit with code 2."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    app = args.pop("app")
    settings = {name: value for name, value in args.items() if value is not None}
    try:
        return app, Config(**settings)
    except AserveError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    app, config = parse(argv)
    try:
        if config.reload:
            from aserve.reload.supervisor import Supervisor

            return Supervisor(app, config).run()
        if config.server == "wsgiref":
            from aserve.fallback import serve_wsgiref

            return serve_wsgiref(app, config)
        from aserve.server import Server

        return Server(app, config).run()
    except AserveError as exc:
        print(f"aserve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0
