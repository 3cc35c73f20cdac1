"""Reload latency: how long after a save a development server answers with the new code.

A fresh `django-admin startproject` gets a one-line view; the script rewrites that view N times
and, from the instant of each write, polls the page until the new version answers, counting the
refused, failed and non-200 requests on the way. aserve --reload, uvicorn --reload and Django's
runserver take turns in one run. `.venv/bin/python benchmarks/reload_latency.py`; see
benchmarks/README.md. The measuring is `aserve.bench.reload`, which `aserve-bench --scenarios
reload` runs too; this is its command line with every knob.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from aserve.bench import reload
from aserve.bench.peers import PEERS, discover
from aserve.bench.reload import ReloadRun, ReloadSettings
from aserve.bench.report import reload_table, write_json
from aserve.bench.results import summarise_reload

EXIT_SERVER_FAILED = 1
EXIT_USAGE = 2
SERVERS = [peer.name for peer in PEERS if peer.reload is not None]


@dataclass(frozen=True)
class Options:
    servers: list[str]
    settings: ReloadSettings
    json_path: Path | None


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.partition(":")[2].strip()
                break
    versions: dict[str, str] = {}
    for package in ("aserve", "django", "uvicorn", "watchfiles", "uvloop", "a2wsgi"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    loadavg = "unknown"
    with contextlib.suppress(OSError):
        loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": loadavg,
        "versions": versions,
    }


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description="Reload latency of aserve --reload, uvicorn --reload and runserver on a "
        "fresh Django project.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--edits", type=int, default=20, help="Saves per server.")
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"Comma-separated, run in this order; from {', '.join(SERVERS)}.",
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write all figures here.")
    parser.add_argument(
        "--gap", type=float, default=0.5, help="Seconds between an answer and the next save."
    )
    parser.add_argument(
        "--jitter",
        type=float,
        default=1.0,
        help="Up to this many seconds more, at random, before each save, so that saves do not "
        "fall into step with a reloader that polls once a second.",
    )
    parser.add_argument("--interval", type=float, default=0.001, help="Seconds between two polls.")
    parser.add_argument(
        "--edit-timeout",
        type=float,
        default=20.0,
        help="Seconds to wait for a version before counting it missed.",
    )
    parser.add_argument(
        "--settle", type=float, default=1.0, help="Seconds between first answer and first save."
    )
    parser.add_argument(
        "--machine-settle",
        type=float,
        default=10.0,
        help="Before each save, wait at most this long for the machine to be quiet.",
    )
    parser.add_argument(
        "--machine-quiet",
        type=float,
        default=0.15,
        help="Quiet means under this share of all CPUs busy.",
    )
    parser.add_argument(
        "--view-import",
        default="",
        metavar="MODULE",
        help="The view imports this module on its first call (a heavy library: hypothesis).",
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = [name for name in names if name not in SERVERS]
    if unknown or not names:
        parser.error(f"unknown server(s) {', '.join(unknown)}; choose from {', '.join(SERVERS)}")
    if args.edits < 1:
        parser.error("--edits must be at least 1")
    settings = ReloadSettings(
        edits=args.edits,
        gap=args.gap,
        jitter=args.jitter,
        interval=args.interval,
        edit_timeout=args.edit_timeout,
        settle=args.settle,
        machine_settle=args.machine_settle,
        machine_quiet=args.machine_quiet,
        view_import=args.view_import,
    )
    return Options(names, settings, args.json)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    found = discover(options.servers)
    for peer, reason in found.missing:
        _say(f"skipping {peer.name}: {reason}")
    if not found.available:
        _say("no server to measure")
        return EXIT_USAGE
    host = machine()
    runs: list[ReloadRun] = []
    with reload.project(options.settings.view_import) as (directory, view):
        for peer in found.available:
            runs.append(reload.measure(peer, directory, view, options.settings, _say))
    names = [peer.name for peer in found.available]
    summaries = summarise_reload("reload", names, runs)
    print(reload_table(summaries))
    for run in runs:
        if run.error:
            _say(f"\n{run.server} FAILED: {run.error}")
    if options.json_path is not None:
        by_server = {summary.server: summary for summary in summaries}
        report = {
            "machine": host,
            "settings": asdict(options.settings),
            "results": [
                {
                    "name": run.server,
                    "command": run.command,
                    "startup_s": run.startup_s,
                    "failure": run.error,
                    **asdict(by_server[run.server]),
                    "edits": [asdict(e) for e in run.edits],
                }
                for run in runs
            ],
        }
        write_json(options.json_path, report)
    return EXIT_SERVER_FAILED if any(run.error for run in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
