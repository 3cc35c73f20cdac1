"""`manage.py runserver` on aserve: Django's and staticfiles' options and output, aserve's server
and reloader underneath, and aserve's own options on top."""

from __future__ import annotations

import errno
import os
import socket
import sys
from datetime import datetime
from typing import Any

from django.apps import apps
from django.conf import settings
from django.contrib.staticfiles.management.commands.runserver import (
    Command as StaticfilesRunserver,
)
from django.core.management.base import CommandError, CommandParser
from django.utils.version import get_docs_version

from aserve import __version__
from aserve.arguments import add_config_options
from aserve.config import Config
from aserve.django.app import ENVIRONMENT, Interface, Options, prepare
from aserve.errors import AserveError
from aserve.loader import LoadedApp

# Settings that Django's own options stand for (the address and port, --noreload, the
# interface) or that runserver decides itself (lifespan, the access log's form).
_DJANGO_DECIDES = frozenset(
    {
        "host",
        "port",
        "uds",
        "fd",
        "interface",
        "factory",
        "root_path",
        "reload",
        "lifespan",
        "access_log_style",
    }
)
# runserver's messages for the errors of binding (django.core.management.commands.runserver).
_BIND_ERRORS = {
    errno.EACCES: "You don't have permission to access that port.",
    errno.EADDRINUSE: "That port is already in use.",
    errno.EADDRNOTAVAIL: "That IP address can't be assigned to.",
}
# What a reload worker imports to serve the project (aserve.django.app).
WORKER_APP = "aserve.django.app:application"


class Command(StaticfilesRunserver):
    # What runserver's handle() makes of addrport and -6 before it calls run().
    addr: str
    port: str
    use_ipv6: bool
    _raw_ipv6: bool

    help = (
        "Starts aserve, a development server for Django: serves static files, reloads on "
        "changes without refusing a request, and shows errors in the browser."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        group = parser.add_argument_group("aserve")
        interface = group.add_mutually_exclusive_group()
        interface.add_argument(
            "--asgi",
            action="store_const",
            const="asgi",
            dest="interface",
            help="Serve ASGI_APPLICATION (the default when it is set).",
        )
        interface.add_argument(
            "--wsgi",
            action="store_const",
            const="wsgi",
            dest="interface",
            help="Serve WSGI_APPLICATION (the default otherwise).",
        )
        self.aserve_settings = add_config_options(group, skip=_DJANGO_DECIDES)
        # django-extensions' runserver_plus spells them so; a project moving over keeps its
        # command line.
        group.add_argument(
            "--cert-file", dest="ssl_certfile", metavar="PATH", help="Same as --ssl-certfile."
        )
        group.add_argument(
            "--key-file", dest="ssl_keyfile", metavar="PATH", help="Same as --ssl-keyfile."
        )

    def run(self, **options: Any) -> None:
        interface = self._interface(options)
        config = self._config(options, interface)
        if config.tls:
            self._check_tls(config)
            self.protocol = "https"  # the banner's URL
        django_options = Options(
            interface=interface,
            static=self._serves_static(options),
            skip_checks=bool(options.get("skip_checks")),
            sys_path=tuple(sys.path),
            no_color=bool(options.get("no_color")),
        )
        sock = self._bind(config)
        banner = self._banner_printer(interface, sock)
        shutdown_message = options.get("shutdown_message", "")
        try:
            if config.reload:
                code = self._supervise(config, django_options, sock, banner)
            else:
                code = self._serve(config, django_options, sock, banner)
        finally:
            sock.close()
        if shutdown_message:
            self.stdout.write(shutdown_message)
        if code:
            sys.exit(code)

    # -- what runserver's options mean to aserve ----------------------------------------------

    def _interface(self, options: dict[str, Any]) -> Interface:
        chosen = options.get("interface")
        if chosen is not None:
            return "asgi" if chosen == "asgi" else "wsgi"
        return "asgi" if getattr(settings, "ASGI_APPLICATION", None) else "wsgi"

    def _serves_static(self, options: dict[str, Any]) -> bool:
        return (
            bool(options.get("use_static_handler", True))
            and (settings.DEBUG or bool(options.get("insecure_serving")))
            and apps.is_installed("django.contrib.staticfiles")
        )

    def _config(self, options: dict[str, Any], interface: Interface) -> Config:
        values = {
            name: options[name]
            for name in getattr(self, "aserve_settings", ())
            if options.get(name) is not None
        }
        if not options.get("use_threading", True):
            values["threads"] = 1  # --nothreading: one request at a time, as runserver
        if values.get("reload_browser") and not options.get("use_reloader", True):
            raise CommandError("--reload-browser refreshes pages after a reload: drop --noreload")
        if options.get("use_reloader", True) and not values.get("reload_dirs"):
            # runserver watches the project; the directory of manage.py is its root.
            values["reload_dirs"] = [os.path.dirname(os.path.abspath(sys.argv[0]))]
        script_name = (getattr(settings, "FORCE_SCRIPT_NAME", None) or "").rstrip("/")
        try:
            return Config(
                **values,
                host=self.addr,
                port=int(self.port),
                interface=interface,
                root_path=script_name,
                reload=bool(options.get("use_reloader", True)),
                lifespan="off",  # Django's handlers do not take part in ASGI lifespan
                access_log_style="runserver",
            )
        except AserveError as exc:
            raise CommandError(str(exc)) from exc

    def _check_tls(self, config: Config) -> None:
        """Make `--https`'s certificate if needed, say how to trust its CA, and refuse a
        certificate or key that cannot be used before anything starts."""
        from aserve.localca import describe, local_certificate
        from aserve.tls import server_tls

        try:
            if config.https:
                for line in describe(local_certificate()):
                    self.stderr.write(line)
            server_tls(config)
        except AserveError as exc:
            raise CommandError(str(exc)) from exc

    def _bind(self, config: Config) -> socket.socket:
        family = socket.AF_INET6 if self.use_ipv6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.addr, int(self.port)))
            sock.listen(config.backlog)
        except OSError as exc:
            sock.close()
            self.stderr.write(f"Error: {_BIND_ERRORS.get(exc.errno or 0, exc)}")
            sys.exit(1)
        sock.setblocking(False)
        sock.set_inheritable(True)
        return sock

    # -- serving ------------------------------------------------------------------------------

    def _supervise(self, config: Config, options: Options, sock: socket.socket, banner: Any) -> int:
        from aserve.reload.supervisor import Supervisor

        # The workers are forked from a template the supervisor starts: they learn the
        # options from the environment they inherit.
        os.environ[ENVIRONMENT] = options.to_environment()
        supervisor = Supervisor(
            WORKER_APP, config.replace(factory=True), on_serving=banner, sock=sock
        )
        return supervisor.run()

    def _serve(self, config: Config, options: Options, sock: socket.socket, banner: Any) -> int:
        handler = prepare(options)
        if config.server == "wsgiref":
            from aserve.fallback import serve_wsgiref

            if options.interface == "asgi":
                raise CommandError("--server wsgiref serves WSGI only: leave out --asgi")
            banner()
            return serve_wsgiref(handler, config, sock=sock)
        from aserve.server import Server

        loaded = LoadedApp(kind=options.interface, app=handler, name=str(type(handler).__name__))
        server = Server(loaded, config)
        server.on_ready = banner
        return server.run([sock])

    def _banner_printer(self, interface: Interface, sock: socket.socket) -> Any:
        port = sock.getsockname()[1]

        def banner() -> None:
            if self._raw_ipv6:
                address = f"[{self.addr}]"
            elif self.addr == "0":
                address = "0.0.0.0"
            else:
                address = self.addr
            now = datetime.now().strftime("%B %d, %Y - %X")
            quit_command = "CTRL-BREAK" if sys.platform == "win32" else "CONTROL-C"
            self.stdout.write(
                f"{now}\n"
                f"Django version {self.get_version()}, using settings "
                f"{settings.SETTINGS_MODULE!r}\n"
                f"Starting aserve {__version__} ({interface.upper()}) development server at "
                f"{self.protocol}://{address}:{port}/\n"
                f"Quit the server with {quit_command}."
            )
            if os.environ.get("DJANGO_RUNSERVER_HIDE_WARNING") != "true":
                self.stdout.write(
                    self.style.WARNING(
                        "WARNING: This is a development server. Do not use it in a "
                        "production setting. Use a production WSGI or ASGI server instead."
                        "\nFor more information on production servers see: "
                        f"https://docs.djangoproject.com/en/{get_docs_version()}/howto/"
                        "deployment/"
                    )
                )
            self.stdout.flush()

        return banner
