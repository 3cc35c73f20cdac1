"""Which file changes restart the worker: the default set, `--reload-include/-exclude` globs
relative to each watched directory, and directories never worth watching."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path, PurePath

from watchfiles import Change, DefaultFilter

# Source, templates and configuration; static assets (css, js, images) need no restart.
DEFAULT_INCLUDES = (
    "*.py",
    "*.pyi",
    "*.html",
    "*.htm",
    "*.txt",
    "*.json",
    "*.toml",
    "*.yaml",
    "*.yml",
    "*.ini",
    "*.cfg",
    "*.env",
    ".env",
    "*.jinja",
    "*.jinja2",
    "*.j2",
    "*.po",
    "*.mo",
)
# Under --reload-browser, files whose change needs no restart, only the browser's pages
# reloaded (or, for stylesheets, swapped in place).
BROWSER_ASSETS = (
    "*.css",
    "*.js",
    "*.mjs",
    "*.map",
    "*.svg",
    "*.png",
    "*.jpg",
    "*.jpeg",
    "*.gif",
    "*.webp",
    "*.avif",
    "*.ico",
    "*.woff",
    "*.woff2",
)
# Directories whose changes never restart anything; a virtual environment is also found by
# its pyvenv.cfg, whatever its name.
IGNORED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        "node_modules",
        ".venv",
        "venv",
        ".tox",
        ".nox",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".hypothesis",
        ".idea",
        ".vscode",
        ".eggs",
        "site-packages",
    }
)
# Editor swap and backup files: vim (.swp, 4913), emacs (#x#, .#x), JetBrains, generic ~.
IGNORED_FILES = ("*.swp", "*.swo", "*.swx", "*~", ".#*", "#*#", "4913", "*.tmp", ".DS_Store")
# macOS's (APFS, HFS+) and Windows' (NTFS) file systems ignore case by default: there
# `Static/*` must exclude `static/app.css`, and a directory typed `~/projects/site` must be the
# one the watcher reports as `~/Projects/site`. Globs and paths are then compared folded.
FOLD_CASE = sys.platform in ("darwin", "win32")


class ReloadFilter(DefaultFilter):
    """A watchfiles filter: include globs (default: `DEFAULT_INCLUDES`), exclude globs, and
    the ignored directories. Globs without a slash match the file name; with one, the path
    relative to the watched directory it is under (so `static/*` or `docs/**` work)."""

    def __init__(
        self,
        roots: Sequence[PurePath],
        includes: list[str] | tuple[str, ...] = (),
        excludes: list[str] | tuple[str, ...] = (),
        fold_case: bool = FOLD_CASE,
    ) -> None:
        super().__init__(ignore_dirs=(), ignore_entity_patterns=(), ignore_paths=())
        self.fold_case = fold_case
        # A PurePath (another platform's, in tests) is taken as it is.
        self.roots = [root.resolve() if isinstance(root, Path) else root for root in roots]
        self.includes = tuple(includes) or DEFAULT_INCLUDES
        self.excludes = tuple(excludes)
        self._venv_dirs: dict[str, bool] = {}
        # What the app asked to watch beyond these rules (Django's watch_dir, extra_files).
        self.extra_dirs: list[tuple[PurePath, str]] = []
        self.extra_files: set[str] = set()  # as `_key` gives them
        # Globs of files whose change only the browser hears of (see `watch_assets`).
        self.assets: tuple[str, ...] = ()
        # (device, inode) of files the server itself writes to (see `ignore_output`).
        self._outputs: set[tuple[int, int]] = set()

    def watch_assets(self, globs: tuple[str, ...] = BROWSER_ASSETS) -> None:
        """Also accept changes to these files, which `browser_only` tells apart."""
        self.assets = globs

    def browser_only(self, path: PurePath) -> bool:
        """Whether an accepted change is an asset's, which needs no restart."""
        relative = self._relative(path)
        return not self._included(path, relative) and self._asset(relative)

    def ignore_output(self, fds: tuple[int, ...] = (1, 2)) -> None:
        """Never restart on writes to the files behind these descriptors: `runserver >
        out.txt` in the project would otherwise reload on every line it logs, forever."""
        for fd in fds:
            try:
                status = os.fstat(fd)
            except OSError:
                continue
            if stat.S_ISREG(status.st_mode):
                self._outputs.add((status.st_dev, status.st_ino))

    def add(self, dirs: Sequence[tuple[PurePath, str]], files: Sequence[PurePath]) -> None:
        """Also accept the files below each directory matching its glob, and these files."""
        for directory, glob in dirs:
            if (directory, glob) not in self.extra_dirs:
                self.extra_dirs.append((directory, glob))
        self.extra_files.update(self._key(str(path)) for path in files)

    def __call__(self, change: Change, path: str) -> bool:
        if change == Change.added and os.path.isdir(path):
            # A directory created or moved in with its files (`git switch`, `mv`, startapp):
            # inotify watches it only once it exists, too late to report what is inside.
            return self.contains_accepted(Path(path))
        return self.accepts(Path(path))

    def contains_accepted(self, directory: Path) -> bool:
        """Whether a file below `directory` would restart the worker."""
        if any(self._key(part) in IGNORED_DIRS for part in self._relative(directory).parts):
            return False
        for parent, dirs, files in os.walk(directory):
            dirs[:] = [d for d in dirs if self._key(d) not in IGNORED_DIRS]
            if any(self.accepts(Path(parent, name)) for name in files):
                return True
        return False

    def accepts(self, path: PurePath) -> bool:
        relative = self._relative(path)
        parts = relative.parts
        if any(self._key(part) in IGNORED_DIRS for part in parts[:-1]):
            return False
        name = self._key(path.name)
        if any(fnmatchcase(name, self._key(pattern)) for pattern in IGNORED_FILES):
            return False
        if self._key(str(path)) in self.extra_files or self._asked_for(path):
            return True
        # An absolute glob (uvicorn's workaround for its relative ones) matches the full path.
        if any(self._matches(path if _absolute(p) else relative, p) for p in self.excludes):
            return False
        if not self._included(path, relative) and not self._asset(relative):
            return False
        return not self._in_virtualenv(path) and not self._is_output(path)

    def _included(self, path: PurePath, relative: PurePath) -> bool:
        return any(self._matches(path if _absolute(p) else relative, p) for p in self.includes)

    def _asset(self, relative: PurePath) -> bool:
        return any(self._matches(relative, glob) for glob in self.assets)

    def _key(self, text: str) -> str:
        return text.lower() if self.fold_case else text

    def _matches(self, relative: PurePath, pattern: str) -> bool:
        if self.fold_case:
            return _matches(type(relative)(*(p.lower() for p in relative.parts)), pattern.lower())
        return _matches(relative, pattern)

    def _below(self, path: PurePath, directory: PurePath) -> PurePath | None:
        """`path` relative to `directory`, if it is below it (case folded where the file
        system ignores case)."""
        inner, outer = path.parts, directory.parts
        if len(inner) < len(outer):
            return None
        if any(self._key(a) != self._key(b) for a, b in zip(inner, outer, strict=False)):
            return None
        return type(path)(*inner[len(outer) :])

    def _is_output(self, path: PurePath) -> bool:
        if not self._outputs:
            return False
        try:
            status = os.stat(path)
        except OSError:
            return False
        return (status.st_dev, status.st_ino) in self._outputs

    def _asked_for(self, path: PurePath) -> bool:
        for directory, glob in self.extra_dirs:
            below = self._below(path, directory)
            if below is not None and self._matches(below, glob):
                return True
        return False

    def _relative(self, path: PurePath) -> PurePath:
        for root in self.roots:
            below = self._below(path, root)
            if below is not None:
                return below
        return path

    def _in_virtualenv(self, path: PurePath) -> bool:
        for root in self.roots:
            if self._below(path, root) is None:
                continue
            directory = path.parent
            while len(directory.parts) > len(root.parts):
                key = str(directory)
                found = self._venv_dirs.get(key)
                if found is None:
                    found = os.path.exists(os.path.join(key, "pyvenv.cfg"))
                    self._venv_dirs[key] = found
                if found:
                    return True
                directory = directory.parent
        return False


def _absolute(pattern: str) -> bool:
    """An absolute glob, in either platform's spelling (`/srv/site/*`, `C:\\site\\*`)."""
    return os.path.isabs(pattern) or pattern[1:3] in (":\\", ":/")


def _matches(relative: PurePath, pattern: str) -> bool:
    """`pattern` against the file name, or (with a slash) the relative path or a prefix of it.

    A pattern naming a directory (`static`, `static/`) excludes everything below it. A
    backslash separates directories as a slash does (a glob written on Windows); fnmatch
    has no escape character for it to mean anything else.
    """
    pattern = pattern.replace("\\", "/").removeprefix("./")
    # `**/` is zero or more directories (gitignore, pathlib); fnmatch's `*` needs at least one.
    if pattern.startswith("**/") and _matches(relative, pattern[3:]):
        return True
    if "/" not in pattern.rstrip("/"):
        name = pattern.rstrip("/")
        return fnmatchcase(relative.name, name) or any(
            fnmatchcase(p, name) for p in relative.parts[:-1]
        )
    text = relative.as_posix()
    pattern = pattern.rstrip("/")
    if fnmatchcase(text, pattern):
        return True
    # A directory pattern: any leading run of the path's parts.
    parts = relative.parts
    return any(
        fnmatchcase(type(relative)(*parts[:i]).as_posix(), pattern) for i in range(1, len(parts))
    )
