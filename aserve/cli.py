"""The `aserve` command: arguments built from `Config`'s fields, errors turned into exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from aserve import __version__, build
from aserve.arguments import add_config_options, option_names
from aserve.config import Config
from aserve.errorpage import user_traceback
from aserve.errors import AserveError

EXIT_USAGE = 2
# The environment variable uvicorn (and gunicorn, and hosting platforms) read for the number
# of worker processes.
WEB_CONCURRENCY = "WEB_CONCURRENCY"

_SHORT_HELP = """\
Serve a WSGI or ASGI app. APP is module:attribute, imported from the current directory,
e.g. mysite.wsgi:application or main:app."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage wall: the message names the problem.
        self.exit(EXIT_USAGE, f"aserve: error: {message} (see aserve --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aserve",
        description=_SHORT_HELP,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("app", metavar="APP", help="The application, as module:attribute.")
    add_config_options(parser, runserver=False)
    # Absent unless given, so that $WEB_CONCURRENCY can stand in for it (see `parse`); the
    # action's own default, since set_defaults() would put SUPPRESS in the namespace.
    for action in parser._actions:
        if action.dest == "workers":
            action.default = argparse.SUPPRESS
    parser.add_argument("--version", action="version", version=f"aserve {__version__} ({build()})")
    return parser


def parse(argv: Sequence[str] | None = None) -> tuple[str, Config]:
    """APP and the settings from the command line; usage errors exit with code 2."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    app = args.pop("app")
    settings = {name: value for name, value in args.items() if value is not None}
    concurrency = os.environ.get(WEB_CONCURRENCY, "")
    reloading = settings.get("reload") or settings.get("reload_browser")
    # As uvicorn: the platform's hint (Heroku, Render set it) when --workers is not given. Under
    # --reload it is ignored rather than refused: the variable comes with the machine, not
    # from the person who typed the command.
    if "workers" not in settings and concurrency and not reloading:
        if not concurrency.isdigit():
            parser.error(f"{WEB_CONCURRENCY} must be a number of workers, not {concurrency!r}")
        settings["workers"] = int(concurrency)
    try:
        return app, Config(**settings)
    except AserveError as exc:
        parser.error(str(exc))


def without_reload(config: Config) -> list[str]:
    """The `--reload-*` options set while `--reload` is not, where they would do nothing
    (`--reload-worker` also chooses how `--workers` makes its workers)."""
    if config.reload:
        return []
    default = Config()
    flags = option_names()
    return [
        flags[field.name]
        for field in dataclasses.fields(config)
        if field.name.startswith("reload_")
        and getattr(config, field.name) != getattr(default, field.name)
        and not (field.name == "reload_worker" and config.workers > 1)
    ]


def watching_env_file(config: Config) -> Config:
    """The settings with `--env-file` among the files whose change restarts the workers: a
    name the watched globs do not match (`config/dev.vars`) is added to them."""
    from aserve.reload.filter import DEFAULT_INCLUDES, ReloadFilter

    assert config.env_file is not None
    path = Path(config.env_file).resolve()
    roots = [Path(d).resolve() for d in config.reload_dirs or ["."]]
    if not any(path.is_relative_to(root) for root in roots):
        print(
            f"aserve: warning: --env-file {config.env_file} is outside the watched "
            "directories: an edit of it restarts nothing (see --reload-dir)",
            file=sys.stderr,
        )
        return config
    if ReloadFilter(roots, config.reload_includes, config.reload_excludes).accepts(path):
        return config
    # An absolute glob matches the whole path; escaped, it matches only this file.
    includes = [*(config.reload_includes or DEFAULT_INCLUDES), glob.escape(str(path))]
    return config.replace(reload_includes=includes)


def main(argv: Sequence[str] | None = None) -> int:
    app, config = parse(argv)
    # Refused rather than ignored, and --reload not implied: it changes how aserve runs (a
    # supervisor and forked workers, the traceback page for local clients), which an option
    # about what to watch should not switch on behind the user's back.
    if unused := without_reload(config):
        verb = "does" if len(unused) == 1 else "do"
        print(
            f"aserve: error: {', '.join(unused)} {verb} nothing without --reload", file=sys.stderr
        )
        return EXIT_USAGE
    try:
        if config.https:
            from aserve.localca import describe, local_certificate

            for line in describe(local_certificate()):
                # The commands stand alone, indented, to be copied whole.
                print(line if line.startswith(" ") else f"aserve: {line}", file=sys.stderr)
        if config.tls:
            # Once, here: a file or password that cannot be used is one line before anything
            # starts (each serving process builds its own context again).
            from aserve.tls import server_tls

            server_tls(config)
        # Here, not at the top: `aserve --help` imports no server code (asgiref's asyncio).
        from aserve.loader import load_env_file, read_env_file

        if config.reload:
            from aserve.reload.supervisor import Supervisor

            if config.env_file is not None:
                # Each worker loads it (aserve/reload/worker.py), afresh after an edit of it;
                # the supervisor's environment stays the one the workers start from.
                read_env_file(config.env_file)
                config = watching_env_file(config)
            return Supervisor(app, config).run()
        if config.workers > 1:
            from aserve.reload.pool import Pool

            # Each worker reads the file as it imports the app, as under --reload.
            if config.env_file is not None:
                read_env_file(config.env_file)
            return Pool(app, config).run()
        load_env_file(config.env_file)
        if config.server == "wsgiref":
            from aserve.fallback import serve_wsgiref

            return serve_wsgiref(app, config)
        from aserve.server import Server

        return Server(app, config).run()
    except AserveError as exc:
        print(f"aserve: error: {exc}", file=sys.stderr)
        if config.log_level == "debug" and exc.__cause__ is not None:
            # The line names the place to look; when that is not enough, the whole story.
            print(user_traceback(exc.__cause__), file=sys.stderr, end="")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0
