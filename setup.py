"""aserve's build: the hot modules compiled with mypyc where that can be done, else pure Python.

Everything else is in pyproject.toml. A wheel (`pip install .`, `make build-compiled`) carries
the compiled modules next to their sources; an editable install (`pip install -e`, which
`make test` does) never does, so that an edit is never shadowed by a stale extension. Without
a C compiler, with `ASERVE_PURE=1`, or when compiling fails, the build is the pure-Python
package, which behaves the same. `aserve --version` says which one runs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, PlatformError

# The modules every request runs through (ARCHITECTURE.md, Compiled modules). A module added
# here must also be in pyproject.toml's warn_unreachable override, and follow the rules there.
HOT_MODULES = [
    "aserve/protocols/http11.py",
    "aserve/net/connection.py",
    "aserve/runners/asgi.py",
    "aserve/runners/wsgi.py",
    "aserve/exchange.py",
]

# The setup.py commands that build extensions: metadata (egg_info, dist_info) needs none, and
# mypycify type-checks the whole package first, which takes a while.
_BUILDING = {"build", "build_ext", "bdist_wheel", "install"}


def _why_pure() -> str | None:
    """Why this build is pure Python, or None when it compiles."""
    if os.environ.get("ASERVE_PURE") == "1":
        return "ASERVE_PURE=1"
    if "editable_wheel" in sys.argv or "develop" in sys.argv:
        return "editable install: an edit must never be shadowed by a stale .so"
    if not _BUILDING.intersection(sys.argv):
        return "not building"
    compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    if not compiler or shutil.which(compiler[0]) is None:
        return "no C compiler"
    return None


class OptionalBuildExt(build_ext):
    """build_ext that falls back to the pure-Python package when compiling fails."""

    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, CompileError, ExecError, PlatformError, OSError) as exc:
            # A module whose shared library did not build would fail to import: none ship.
            for output in self.get_outputs():
                if os.path.exists(output):
                    os.remove(output)
            print(f"aserve: compiling failed ({exc}): building pure Python", file=sys.stderr)


def _extensions() -> list[Extension]:
    why = _why_pure()
    if why is not None:
        if why != "not building":
            print(f"aserve: pure-Python build ({why})", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    # One shared library for them all, named for the package rather than a hash.
    extensions: list[Extension] = mypycify(HOT_MODULES, group_name="aserve")
    return extensions


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
