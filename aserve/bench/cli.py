"""The `aserve-bench` command: choose scenarios, servers and generator from the arguments, run
them, print the tables and write the JSON (and PNG) files."""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from aserve.bench import report
from aserve.bench.loadgen import Generator
from aserve.bench.peers import BY_NAME as PEERS_BY_NAME
from aserve.bench.peers import PEERS, discover, module_installed
from aserve.bench.reload import ReloadRun
from aserve.bench.results import (
    MemoryRun,
    ReloadSummary,
    Results,
    Run,
    Summary,
    summarise,
    summarise_reload,
)
from aserve.bench.runner import Settings, Step, count_runs, execute
from aserve.bench.scenarios import BY_NAME as SCENARIOS_BY_NAME
from aserve.bench.scenarios import STANDARD, Scenario, user_scenario
from aserve.bench.system import cpu_model, memory_total, pin_self, usable_cpus
from aserve.bench.targets import evaluate

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# Per run, besides warm-up and measurement: start, check and stop of the server.
_RUN_OVERHEAD_S = 1.5
_MEMORY_RUN_S = 6.0
# A reload run: the server's start and first settle, then per save the latency (runserver's
# is the longest, about 1 s), the 0.5 s gap, the 0.5 s mean jitter and the idle wait.
_RELOAD_RUN_S = 4.0
_RELOAD_SAVE_S = 2.0
_VERSIONS = (
    "aserve", "uvicorn", "uvloop", "httptools", "zttp", "a2wsgi", "gunicorn", "waitress",
    "granian", "hypercorn", "django", "watchfiles",
)  # fmt: skip


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage wall: the message names the problem.
        self.exit(EXIT_USAGE, f"aserve-bench: error: {message} (see aserve-bench --help)\n")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aserve-bench",
        description="Run aserve and every installed peer server under the same load, one at a "
        "time, pinned to one CPU with the load generator on another; print a table per "
        "scenario and write JSON (and a PNG chart when matplotlib is installed).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    scenarios = ", ".join(s.name for s in STANDARD)
    servers = ", ".join(p.name for p in PEERS)
    parser.add_argument(
        "--scenarios", default=None, help=f"Comma-separated subset of: {scenarios} (default all)."
    )
    parser.add_argument(
        "--servers", default=None, help=f"Comma-separated subset of: {servers} (default all)."
    )
    parser.add_argument(
        "--app", default=None, metavar="MODULE:ATTR", help="Benchmark your own app instead."
    )
    parser.add_argument("--path", default=None, help="Path to request from --app (default /).")
    parser.add_argument(
        "--connections", type=int, default=None, help="Connections for --app (default 50)."
    )
    # wrk takes whole seconds only.
    parser.add_argument("--duration", type=int, default=3, help="Seconds of each measured run.")
    parser.add_argument(
        "--warmup", type=int, default=1, help="Seconds of load before each run (0: none)."
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="Runs per server and scenario, alternated."
    )
    parser.add_argument(
        "--edits",
        type=int,
        default=10,
        help="Saves of the view per server and round in the reload scenario.",
    )
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "builtin"),
        default="auto",
        help="Load generator; auto uses wrk when installed, else the built-in one.",
    )
    parser.add_argument("--server-cpu", type=int, default=None, help="CPU the servers run on.")
    parser.add_argument("--load-cpu", type=int, default=None, help="CPU the generator runs on.")
    parser.add_argument("--no-pin", action="store_true", help="Do not pin to CPUs.")
    parser.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="Before each run wait up to this many seconds for the machine to be quiet.",
    )
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=0.10,
        help="A run where other processes took more than this share of the server's or the "
        "generator's CPU is contended: it is measured again and medians prefer clean runs.",
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="Measure a contended run again this many times."
    )
    parser.add_argument(
        "--output", default="bench-results", help="Directory for aserve-bench.json and .png."
    )
    parser.add_argument("--no-chart", action="store_true", help="Do not draw the PNG chart.")
    parser.add_argument(
        "--list", action="store_true", help="List the scenarios and servers, and exit."
    )
    return parser


@dataclass
class Options:
    settings: Settings
    plan: list[Step]
    generator: Generator
    skipped: list[str]
    output: Path
    chart: bool


def _cpus(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[int | None, ...]:
    cpus = usable_cpus()
    if args.no_pin:
        return None, None
    if len(cpus) < 2:
        print(
            "aserve-bench: only one CPU: the servers and the generator share it, not pinned",
            file=sys.stderr,
        )
        return None, None
    server = cpus[0] if args.server_cpu is None else args.server_cpu
    load = cpus[1] if args.load_cpu is None else args.load_cpu
    for flag, cpu in (("--server-cpu", server), ("--load-cpu", load)):
        if cpu not in cpus:
            parser.error(f"{flag} {cpu} is not one of this process's CPUs {cpus}")
    if server == load:
        parser.error("--server-cpu and --load-cpu must differ")
    return server, load


def _scenarios(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[Scenario]:
    if args.app is None:
        for flag in ("path", "connections"):
            if getattr(args, flag) is not None:
                parser.error(f"--{flag} applies to --app only")
        if args.scenarios is None:
            return list(STANDARD)
        chosen = _names(args.scenarios)
        unknown = [name for name in chosen if name not in SCENARIOS_BY_NAME]
        if unknown or not chosen:
            parser.error(f"unknown scenario(s): {', '.join(unknown) or '(none given)'}")
        return [SCENARIOS_BY_NAME[name] for name in chosen]
    if args.scenarios is not None:
        parser.error("--scenarios and --app cannot be used together")
    path = args.path or "/"
    if not path.startswith("/"):
        parser.error(f"--path must start with '/', not {path!r}")
    connections = 50 if args.connections is None else args.connections
    if connections < 1:
        parser.error("--connections must be at least 1")
    from aserve.errors import AppLoadError
    from aserve.loader import load

    try:
        loaded = load(args.app)
    except AppLoadError as exc:
        parser.error(str(exc).splitlines()[0])
    return [user_scenario(args.app, loaded.kind, path, connections)]


def parse(argv: Sequence[str] | None = None) -> Options:
    """The options of a benchmark run; usage errors exit with code 2 and one line."""
    parser = build_parser()
    return configure(parser.parse_args(argv), parser)


def configure(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Options:
    if args.duration < 1 or args.rounds < 1 or args.edits < 1:
        parser.error("--duration, --rounds and --edits must be at least 1")
    if args.warmup < 0 or args.retries < 0 or args.settle < 0:
        parser.error("--warmup, --retries and --settle cannot be negative")
    if not 0 <= args.max_foreign <= 1:
        parser.error("--max-foreign is a share between 0 and 1")
    server_cpu, load_cpu = _cpus(args, parser)
    kind = Generator.pick(args.generator)
    if kind == "wrk" and Generator.pick("auto") != "wrk":
        parser.error("--generator wrk: wrk is not installed (Debian: apt-get install wrk)")
    scenarios = _scenarios(args, parser)
    names = None
    if args.servers is not None:
        names = _names(args.servers)
        unknown = [name for name in names if name not in PEERS_BY_NAME]
        if unknown or not names:
            parser.error(f"unknown server(s): {', '.join(unknown) or '(none given)'}")
    found = discover(names)
    available = {peer.name: peer for peer in found.available}
    skipped = [f"{peer.name}: {reason}" for peer, reason in found.missing]
    plan: list[Step] = []
    for scenario in scenarios:
        # The reload scenario's project is a `django-admin startproject`.
        django = scenario.app.name == "django" or scenario.kind == "reload"
        if django and not module_installed("django"):
            skipped.append(
                f"scenario {scenario.name}: Django is not installed (pip install django)"
            )
            continue
        peers = [
            available[name]
            for name in scenario.servers
            if name in available and available[name].supports(scenario.app)
        ]
        if peers:
            plan.append(Step(scenario, peers))
    if not plan:
        parser.error("no installed server runs the chosen scenarios")
    settings = Settings(
        duration=args.duration,
        warmup=args.warmup,
        rounds=args.rounds,
        server_cpu=server_cpu,
        load_cpu=load_cpu,
        settle=args.settle,
        max_foreign=args.max_foreign,
        retries=args.retries,
        cwd=os.getcwd(),
        edits=args.edits,
    )
    return Options(
        settings, plan, Generator(kind, load_cpu), skipped, Path(args.output), not args.no_chart
    )


def _commit() -> str | None:
    """The git commit of the aserve source tree, when it runs from a checkout."""
    source = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            ["git", "-C", str(source), "describe", "--always", "--dirty", "--abbrev=10"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def machine(generator: Generator) -> dict[str, Any]:
    versions: dict[str, str] = {}
    for package in _VERSIONS:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": round(memory_total() / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "generator": generator.describe(),
        "commit": _commit(),
        "versions": versions,
    }


def _list() -> int:
    found = discover()
    missing = {peer.name: reason for peer, reason in found.missing}
    print("scenarios:")
    for scenario in STANDARD:
        print(f"  {scenario.name:<18} {scenario.title}")
    print("servers:")
    for peer in PEERS:
        state = f"not installed: {missing[peer.name]}" if peer.name in missing else "installed"
        print(f"  {peer.name:<15} {peer.description} [{state}]")
    return EXIT_OK


def duration_text(seconds: float) -> str:
    """How long a run will take, as its announcement says it: seconds while under a minute and
    a half (a 4 s run is not "about 1 min"), whole minutes above."""
    if seconds < 90:
        return f"about {max(1, math.ceil(seconds))} s"
    return f"about {math.ceil(seconds / 60)} min"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        return _list()
    options = configure(args, parser)
    settings, plan = options.settings, options.plan
    pin_self(settings.load_cpu)
    info = machine(options.generator)
    runs = count_runs(plan, settings.rounds)
    estimate = estimate_s(plan, settings)
    pinning = (
        f"servers on CPU {settings.server_cpu}, load on CPU {settings.load_cpu}"
        if settings.server_cpu is not None
        else "not pinned"
    )
    print(
        f"aserve-bench: {len(plan)} scenarios, {runs} runs ({run_sizes(plan, settings)}), "
        f"{duration_text(estimate)}; {pinning}\n"
        f"machine: {info['cpus']} CPUs, {info['cpu_model']}, Python {info['python']}, "
        f"commit {info['commit'] or 'unknown'}\n"
        f"load generator: {info['generator']}",
        file=sys.stderr,
        flush=True,
    )
    for line in options.skipped:
        print(f"skipped {line}", file=sys.stderr)
    started = datetime.datetime.now(datetime.UTC)
    results = Results()
    interrupted = False
    try:
        execute(plan, settings, options.generator, report.Progress(runs), results)
    except KeyboardInterrupt:
        interrupted = True
        print("\naserve-bench: interrupted; the results so far follow", file=sys.stderr)
    finished = datetime.datetime.now(datetime.UTC)
    summaries = {
        step.scenario.name: summarise(
            step.scenario.name, [p.name for p in step.peers], results.runs
        )
        for step in plan
        if step.scenario.kind == "load"
    }
    reloads = {
        step.scenario.name: summarise_reload(
            step.scenario.name, [p.name for p in step.peers], results.reload
        )
        for step in plan
        if step.scenario.kind == "reload"
    }
    verdicts = (
        evaluate(summaries, results.memory, [r for rows in reloads.values() for r in rows])
        if plan[0].scenario.app.name != "user"
        else []
    )
    print(_text(plan, summaries, reloads, results, verdicts, info))
    document = {
        "started": started.isoformat(timespec="seconds"),
        "interrupted": interrupted,
        "finished": finished.isoformat(timespec="seconds"),
        "machine": info,
        "settings": asdict(settings),
        "scenarios": [asdict(step.scenario) for step in plan],
        "skipped": options.skipped,
        "summaries": {name: [asdict(s) for s in rows] for name, rows in summaries.items()},
        "memory": [asdict(m) for m in results.memory],
        "reload": {name: [asdict(s) for s in rows] for name, rows in reloads.items()},
        "reload_runs": [asdict(r) for r in results.reload],
        "django_in_process_calls_per_s": results.django_in_process,
        "targets": [asdict(v) for v in verdicts],
        "runs": [report.run_record(r) for r in results.runs],
    }
    options.output.mkdir(parents=True, exist_ok=True)
    json_path = options.output / "aserve-bench.json"
    report.write_json(json_path, document)
    written = [str(json_path)]
    scenarios = [step.scenario for step in plan if step.scenario.kind == "load"]
    chart = options.output / "aserve-bench.png"
    if options.chart and scenarios:
        if report.chart_available():
            if report.write_chart(chart, scenarios, summaries):
                written.append(str(chart))
        else:
            print("no chart: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
    print(f"wrote {', '.join(written)}", file=sys.stderr)
    outcomes: list[Run | MemoryRun | ReloadRun] = [*results.runs, *results.memory, *results.reload]
    aserve_failed = any(r.server == "aserve" and r.error for r in outcomes)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if aserve_failed else EXIT_OK


def estimate_s(plan: Sequence[Step], settings: Settings) -> float:
    """Seconds the plan should take, from its runs and their sizes."""
    total = 0.0
    for step in plan:
        servers = len(step.peers)
        if step.scenario.kind == "memory":
            total += servers * _MEMORY_RUN_S
        elif step.scenario.kind == "reload":
            per_run = _RELOAD_RUN_S + settings.edits * _RELOAD_SAVE_S
            total += servers * settings.rounds * per_run
        else:
            per_run = settings.warmup + settings.duration + _RUN_OVERHEAD_S
            total += servers * settings.rounds * per_run
    return total


def run_sizes(plan: Sequence[Step], settings: Settings) -> str:
    """What one run of each kind in the plan is, for the announcement."""
    kinds = {step.scenario.kind for step in plan}
    sizes = []
    if "load" in kinds:
        sizes.append(f"{settings.warmup}s warm-up + {settings.duration}s of load")
    if "memory" in kinds:
        sizes.append("1 GiB up and down")
    if "reload" in kinds:
        sizes.append(f"{settings.edits} saves per reloading server")
    return "; ".join(sizes)


def _text(
    plan: Sequence[Step],
    summaries: dict[str, list[Summary]],
    reloads: dict[str, list[ReloadSummary]],
    results: Results,
    verdicts: Sequence[Any],
    info: dict[str, Any],
) -> str:
    blocks: list[str] = []
    for step in plan:
        scenario = step.scenario
        memory = [m for m in results.memory if m.scenario == scenario.name]
        if not (memory or summaries.get(scenario.name) or reloads.get(scenario.name)):
            continue  # interrupted before it ran
        blocks.append(f"## {scenario.name}: {scenario.title}\n")
        if scenario.kind == "memory":
            blocks.append(report.memory_table(memory))
        elif scenario.kind == "reload":
            blocks.append(report.reload_table(reloads[scenario.name]))
        else:
            blocks.append(report.load_table(scenario, summaries[scenario.name]))
            note = report.access_log_note(summaries[scenario.name])
            if note is not None:
                blocks.append(f"\n{note}")
        if scenario.app.name == "django" and results.django_in_process is not None:
            blocks.append(
                f"\nDjango's WSGIHandler called in-process in a loop, no server: "
                f"{results.django_in_process:,.0f} calls/s (this scenario's ceiling)."
            )
        blocks.append("")
    if summaries:
        blocks.append(report.generator_note(info["generator"], summaries))
    if any(v.status != "n/a" for v in verdicts):
        blocks.append("\n## Targets\n")
        blocks.append(report.claims_table(verdicts))
    return "\n".join(blocks)
