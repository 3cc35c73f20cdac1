"""The example Django project (examples/djangoproject) in a scratch directory of a test's own,
migrated, and `manage.py runserver` run in it as a real process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.support.procs import ROOT, ServerProcess

EXAMPLE = ROOT / "examples" / "djangoproject"
# The banner line runserver on aserve prints once it listens.
STARTING = r"Starting aserve \S+ \((WSGI|ASGI)\) development server at http://[^:]+:(\d+)/"
# What the copy leaves out: the example's own database and caches.
_LEFT_OUT = shutil.ignore_patterns("db.sqlite3*", "__pycache__", "*.pyc")


def environment(**extra: str) -> dict[str, str]:
    """The environment of a manage.py process: this one's, with bytecode caching on (as a
    user has it; the test runner turns it off) and no settings module of the tests'."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONDONTWRITEBYTECODE", "DJANGO_SETTINGS_MODULE")
    }
    env.update(extra)
    return env


def manage(
    project: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """`python manage.py ARGS` in `project`, run to completion."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env=dict(env) if env is not None else environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def migrated_copy(destination: Path) -> Path:
    """A copy of the example project at `destination`, its database migrated."""
    shutil.copytree(EXAMPLE, destination, ignore=_LEFT_OUT)
    result = manage(destination, "migrate", "--noinput", "-v", "0")
    assert result.returncode == 0, result.stderr
    return destination


def copy_of(migrated: Path, destination: Path) -> Path:
    """Another copy of a migrated project (cheaper than migrating again)."""
    shutil.copytree(migrated, destination, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


class Runserver(ServerProcess):
    """`python manage.py runserver ARGS` in a project, its output (stdout and stderr) read as
    it comes; `port` once the banner is printed."""

    def __init__(self, project: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
        super().__init__(
            "runserver",
            *(args or ("127.0.0.1:0",)),
            command=[sys.executable, "manage.py"],
            cwd=project,
            env=env if env is not None else environment(),
            with_stdout=True,
        )
        self.project = project

    def wait_started(self, timeout: float = 30.0) -> int:
        """The port from the banner, once printed."""
        return int(self.wait_for(STARTING, timeout=timeout).group(2))
