"""The Django project as runserver on aserve serves it: the system checks and migrations notice
of each start, the handler named by ASGI_APPLICATION or WSGI_APPLICATION, static files, and
Django's side of reloading. `application` is the factory a reload worker loads."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from typing import Literal

from aserve.errors import AppLoadError
from aserve.loader import import_what_django_defers
from aserve.reload.worker import current_link

# How the runserver command hands its options to the reload workers it never forks itself:
# the environment, which the template and every worker inherit.
ENVIRONMENT = "ASERVE_DJANGO_OPTIONS"

Interface = Literal["asgi", "wsgi"]


@dataclass(frozen=True, slots=True)
class Options:
    """What the runserver command decided that each start of the project needs."""

    interface: Interface
    # Whether static files are served (staticfiles installed, DEBUG or --insecure, no
    # --nostatic).
    static: bool
    skip_checks: bool
    # sys.path entries of the command's process (manage.py's directory, --pythonpath): the
    # worker is a fresh interpreter that imports the project from them.
    sys_path: tuple[str, ...] = ()
    no_color: bool = False

    def to_environment(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_environment(cls) -> Options:
        raw = os.environ.get(ENVIRONMENT)
        if raw is None:
            raise AppLoadError(
                f"{ENVIRONMENT} is not set: aserve.django.app:application is started by "
                "`manage.py runserver`, not by hand"
            )
        values = json.loads(raw)
        values["sys_path"] = tuple(values.get("sys_path", ()))
        return cls(**values)


def application() -> object:
    """The reload worker's factory: set up Django as runserver's child process does, and
    return its handler ready to serve."""
    options = Options.from_environment()
    # Django's reloader runs the server in a child with RUN_MAIN=true: projects test it so
    # that their start-up code runs once per server, not once per process.
    os.environ["RUN_MAIN"] = "true"
    if options.no_color:
        os.environ["DJANGO_COLORS"] = "nocolor"
    for entry in reversed(options.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    import django

    django.setup()
    handler = prepare(options)
    link = current_link()
    if link is not None:
        from aserve.django import reloading

        reloading.start(link)
    return handler


def prepare(options: Options) -> object:
    """Django's handler for `options`, after runserver's start-up: the URLconf imported (its
    errors are the app's import errors, shown on the error page), the system checks and the
    unapplied-migrations notice written, static files put in front."""
    from django.db import connections

    from aserve.django.management.commands.runserver import Command

    handler = get_handler(options.interface)
    import_what_django_defers(handler)
    command = Command(no_color=options.no_color)
    if not options.skip_checks:
        command.stdout.write("Performing system checks...\n\n")
        command.check(display_num_errors=True)
    command.check_migrations()
    # As runserver: the connections the checks opened belong to no request.
    for connection in connections.all(initialized_only=True):
        connection.close()
    if options.static:
        from aserve.django.static import with_static_files

        handler = with_static_files(handler, options.interface)
    return handler


def get_handler(interface: Interface) -> object:
    """The project's handler: ASGI_APPLICATION or WSGI_APPLICATION, as the settings name it."""
    if interface == "asgi":
        from django.conf import settings
        from django.utils.module_loading import import_string

        name = getattr(settings, "ASGI_APPLICATION", None)
        if name:
            handler: object = import_string(name)
            return handler
        from django.core.asgi import get_asgi_application

        return get_asgi_application()
    from django.core.servers.basehttp import get_internal_wsgi_application

    return get_internal_wsgi_application()
