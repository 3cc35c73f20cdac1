"""Django's side of reloading on aserve's supervisor: what `autoreload_started` receivers see as
the reloader (watch_dir, extra_files), and `file_changed` sent before a restart, so that Django
resets its template loaders (or translations) on an edit instead of a restart."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from django.utils.autoreload import autoreload_started, file_changed

from aserve.reload.worker import ReloadLink


class AserveReloader:
    """The sender of Django's autoreload signals under aserve: the part of Django's
    BaseReloader that receivers use (django-browser-reload, django-watchfiles and Django's own
    template and locale receivers call `watch_dir` and add to `extra_files`)."""

    def __init__(self) -> None:
        self.extra_files: set[Path] = set()
        self.directory_globs: dict[Path, set[str]] = defaultdict(set)

    def watch_dir(self, path: Path | str, glob: str) -> None:
        self.directory_globs[Path(path).absolute()].add(glob)

    def watched_files(self, include_globs: bool = True) -> list[Path]:
        """The files watched by name (Django's reloader also lists every module's file; aserve
        watches the project's directories instead)."""
        files = sorted(self.extra_files)
        if include_globs:
            for directory, globs in self.directory_globs.items():
                for glob in globs:
                    files.extend(directory.glob(glob))
        return files

    def notify_file_changed(self, path: Path) -> bool:
        """As Django's reloader: send `file_changed`; whether a receiver dealt with it."""
        results = file_changed.send(sender=self, file_path=path)
        return any(handled for _, handled in results)


def start(link: ReloadLink) -> AserveReloader:
    """Send `autoreload_started` in the worker, as Django's reloader does in the process it
    serves from, and pass what the receivers asked to watch on to the supervisor."""
    reloader = AserveReloader()
    autoreload_started.send(sender=reloader)
    for directory, globs in reloader.directory_globs.items():
        for glob in sorted(globs):
            link.watch_dir(str(directory), glob)
    for path in sorted(reloader.extra_files):
        link.watch_file(str(Path(path).absolute()))
    link.on_change(lambda paths: all(reloader.notify_file_changed(Path(path)) for path in paths))
    return reloader
