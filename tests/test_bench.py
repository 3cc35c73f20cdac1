"""aserve-bench: wrk parsing, statistics, summaries and targets, peer discovery, the CLI's usage
errors, the benchmark apps, and the built-in generator against a real aserve for ~0.3 s."""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast
from wsgiref.validate import validator

import pytest

from aserve import __version__, build
from aserve.bench import cli, loadgen, peers, report, runner, wsload
from aserve.bench.apps import BODY, hello_asgi, hello_wsgi, transfer_wsgi, ws_echo
from aserve.bench.ceiling import RESPONSE, CannedProtocol
from aserve.bench.loadgen import LoadResult, Request, generate, parse_wrk
from aserve.bench.peers import AppSpec, Launch, discover
from aserve.bench.reload import ReloadRun
from aserve.bench.results import MemoryRun, Results, Run, Summary, Transfer, summarise
from aserve.bench.scenarios import BY_NAME, DJANGO, HELLO_WSGI, STANDARD, TRANSFER
from aserve.bench.stats import foreign_share, median, percentile, ratio
from aserve.bench.system import pinned, process_tree, reset_peak, tree_memory
from aserve.bench.targets import evaluate
from aserve.types import Environ, Message
from tests.support.servers import running

MiB = 1024 * 1024

# -- wrk output ------------------------------------------------------------------------------

WRK_CLEAN = """\
Running 3s test @ http://127.0.0.1:40123/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.61ms  502.11us  14.13ms   87.40%
    Req/Sec    31.34k     1.95k   33.62k    83.33%
  Latency Distribution
     50%    1.53ms
     75%    1.71ms
     90%    2.03ms
     99%    3.44ms
  93612 requests in 3.00s, 12.14MB read
Requests/sec:  31186.42
Transfer/sec:      4.05MB
"""

WRK_ERRORS = """\
Running 2s test @ http://127.0.0.1:40124/x
  1 threads and 1000 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.50ms  120.00ms   1.99s    70.00%
    Req/Sec     2.61k   813.61     3.53k    84.21%
  Latency Distribution
     50%  419.65ms
     75%  462.62ms
     90%  704.98ms
     99%    1.31s
  5949 requests in 2.10s, 790.10KB read
  Socket errors: connect 3, read 7, write 0, timeout 12
  Non-2xx or 3xx responses: 40
Requests/sec:   2832.38
Transfer/sec:    376.24KB
"""

WRK2_STYLE = """\
  Latency Distribution (HdrHistogram - Recorded Latency)
 50.000%  870.00us
 75.000%    1.20ms
 99.000%   12.50us
  1000 requests in 1.00m, 1.00MB read
Requests/sec:     16.67
"""


def test_parse_wrk_clean_run() -> None:
    result = parse_wrk(WRK_CLEAN)
    assert result.requests == 93612
    assert result.duration_s == 3.0
    assert result.requests_per_s == 31186.42
    assert result.p50_ms == pytest.approx(1.53)
    assert result.p99_ms == pytest.approx(3.44)
    assert result.errors == 0
    assert result.socket_errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}


def test_parse_wrk_errors_and_seconds() -> None:
    result = parse_wrk(WRK_ERRORS)
    assert result.requests == 5949
    assert result.duration_s == pytest.approx(2.1)
    assert result.p50_ms == pytest.approx(419.65)
    assert result.p99_ms == pytest.approx(1310.0)
    assert result.socket_errors == {"connect": 3, "read": 7, "write": 0, "timeout": 12}
    assert result.non_2xx_3xx == 40
    assert result.errors == 62


def test_parse_wrk_decimal_percentiles_and_units() -> None:
    result = parse_wrk(WRK2_STYLE)
    assert result.p50_ms == pytest.approx(0.87)
    assert result.p99_ms == pytest.approx(0.0125)
    assert result.duration_s == pytest.approx(60.0)


def test_parse_wrk_without_latency_is_nan() -> None:
    text = "  10 requests in 1.00s, 1.00KB read\nRequests/sec:     10.00\n"
    result = parse_wrk(text)
    assert math.isnan(result.p50_ms)
    assert math.isnan(result.p99_ms)


@pytest.mark.parametrize("text", ["", "unable to connect to 127.0.0.1:1 Connection refused\n"])
def test_parse_wrk_rejects_other_output(text: str) -> None:
    with pytest.raises(ValueError, match="unexpected wrk output"):
        parse_wrk(text)


def test_wrk_script_and_command() -> None:
    assert loadgen.wrk_script(Request()) is None
    script = loadgen.wrk_script(Request("POST", "/", 16))
    assert script == (
        'wrk.method = "POST"\n'
        'wrk.body = string.rep("x", 16)\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )
    command = loadgen.wrk_command("http://h:1/x", 50, 3, 2.0, "/tmp/r.lua")
    assert command == [
        "wrk", "-t1", "-c50", "-d3s", "--timeout=2s", "-s", "/tmp/r.lua", "--latency",
        "http://h:1/x",
    ]  # fmt: skip


def test_request_head() -> None:
    assert Request().head("h:1") == b"GET / HTTP/1.1\r\nHost: h:1\r\n\r\n"
    assert Request("POST", "/u", 5).head("h") == (
        b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: 5\r\n\r\n"
    )


def test_generator_pick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("aserve.bench.loadgen.shutil.which", lambda name: None)
    assert loadgen.Generator.pick("auto") == "builtin"
    monkeypatch.setattr("aserve.bench.loadgen.shutil.which", lambda name: "/usr/bin/wrk")
    assert loadgen.Generator.pick("auto") == "wrk"
    assert loadgen.Generator.pick("builtin") == "builtin"


# -- statistics ------------------------------------------------------------------------------


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 50) == 5.0
    assert percentile(values, 99) == 10.0
    assert percentile(values, 90) == 9.0
    assert percentile(values, 0) == 1.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_median_foreign_share_ratio() -> None:
    assert median([3.0, math.nan, 1.0, 2.0]) == 2.0
    assert math.isnan(median([math.nan]))
    # 60% busy while our process used 1.5 of 3 CPU-seconds: 10% went to others.
    assert foreign_share(0.6, 1.5, 3.0) == pytest.approx(0.1)
    assert foreign_share(0.4, 1.5, 3.0) == 0.0
    assert foreign_share(0.5, 1.0, 0.0) == 0.0
    assert ratio(30.0, 10.0) == 3.0
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 1.0) is None
    assert ratio(math.nan, 1.0) is None


def _result(rps: float, errors: int = 0, p50: float = 1.0) -> LoadResult:
    sockets = {"connect": 0, "read": 0, "write": 0, "timeout": errors}
    return LoadResult(int(rps * 3), 3.0, rps, p50, p50 * 3, 0, sockets)


def _run(server: str, rps: float, contended: bool = False, errors: int = 0) -> Run:
    return Run(
        "hello-wsgi",
        server,
        0,
        _result(rps, errors),
        server_cpu_s=3.0,
        peak_rss=20 * MiB,
        contended=contended,
    )


def test_summarise_prefers_clean_runs_and_relates_to_aserve() -> None:
    runs = [
        _run("ceiling", 80_000.0),
        _run("aserve", 10_000.0, contended=True, errors=1),
        _run("aserve", 40_000.0),
        _run("aserve", 30_000.0),
        _run("waitress", 12_000.0, contended=True),
        Run("hello-wsgi", "granian", 0, error="exited with code 1"),
        _run("other-scenario-server", 1.0),
    ]
    rows = summarise("hello-wsgi", ["ceiling", "aserve", "waitress", "granian"], runs)
    assert [s.server for s in rows] == ["ceiling", "aserve", "waitress", "granian"]
    ceiling, aserve, waitress, granian = rows
    assert (aserve.runs, aserve.clean_runs) == (3, 2)
    assert aserve.requests_per_s == 35_000.0
    assert (aserve.min_requests_per_s, aserve.max_requests_per_s) == (30_000.0, 40_000.0)
    # Errors count over every run, contended or not.
    assert aserve.errors == 1
    assert aserve.error_kinds == {"timeout": 1}
    assert aserve.vs_aserve == 1.0
    assert aserve.of_ceiling == pytest.approx(35 / 80)
    assert aserve.requests_per_cpu_s == pytest.approx(35_000.0)
    # Only contended runs: their median is used all the same.
    assert (waitress.clean_runs, waitress.requests_per_s) == (0, 12_000.0)
    assert waitress.vs_aserve == pytest.approx(12 / 35)
    assert ceiling.of_ceiling == 1.0
    assert math.isnan(granian.requests_per_s)
    assert granian.error == "exited with code 1"
    assert granian.vs_aserve is None


def _summary(server: str, rps: float, errors: int = 0, per_cpu: float = math.nan) -> Summary:
    return Summary("s", server, 1, 1, requests_per_s=rps, requests_per_cpu_s=per_cpu, errors=errors)


def test_targets_met_not_met_and_not_measured() -> None:
    summaries = {
        "hello-wsgi": [
            _summary("aserve", 30_000.0, per_cpu=32_000.0),
            _summary("waitress", 10_000.0, per_cpu=8_000.0),
        ],
        "hello-asgi": [_summary("aserve", 35_000.0), _summary("uvicorn", 30_000.0)],
        "hello-wsgi-c1000": [_summary("aserve", 20_000.0, errors=2)],
    }
    memory = [
        MemoryRun("memory-1gib", "aserve", 2**30, Transfer(1.0, 3 * MiB), Transfer(1.0, 40 * MiB))
    ]
    results = evaluate(summaries, memory)
    verdicts = {v.label: (v.status, v.measured) for v in results}
    assert verdicts["WSGI hello: aserve >= 1x granian"] == ("n/a", "not measured")
    assert verdicts["WSGI hello: aserve >= 5x waitress (4 threads)"] == ("NOT MET", "3.00x")
    assert results[1].per_cpu == "4.00x"
    assert results[3].per_cpu == "-"
    table = report.claims_table(results).splitlines()
    assert table[3] == (
        "| WSGI hello: aserve >= 5x waitress (4 threads)             |        3.00x |     4.00x "
        "| NOT MET |"
    )
    assert verdicts["WSGI hello: aserve >= 5x uvicorn + a2wsgi"] == ("n/a", "not measured")
    assert verdicts["ASGI hello: aserve >= 1.5x uvicorn"] == ("NOT MET", "1.17x")
    assert verdicts["1000 connections: aserve has no socket errors or timeouts"] == (
        "NOT MET",
        "2 errors",
    )
    assert verdicts["1 GiB upload: aserve RSS growth <= 32 MiB"] == ("met", "3.0 MiB")
    assert verdicts["1 GiB response: aserve RSS growth <= 32 MiB"] == ("NOT MET", "40.0 MiB")
    assert verdicts["Django view: aserve >= 5x runserver"][0] == "n/a"


# -- peers -----------------------------------------------------------------------------------


def test_discover_reports_missing_peers_with_install_hint() -> None:
    absent = {"granian", "a2wsgi"}
    found = discover(installed=lambda module: module not in absent)
    # aserve-pure depends on the build under test (test_the_pure_row_...).
    names = [p.name for p in found.available if p.name != "aserve-pure"]
    assert "granian" not in names
    assert "uvicorn+a2wsgi" not in names
    assert names[:4] == ["ceiling", "aserve", "aserve+log", "aserve-wsgiref"]
    missing = {peer.name: reason for peer, reason in found.missing if peer.name != "aserve-pure"}
    assert missing == {
        "uvicorn+a2wsgi": "a2wsgi not installed (pip install 'uvicorn[standard]' a2wsgi)",
        "granian": "granian not installed (pip install granian)",
    }


def test_the_pure_row_runs_only_beside_a_compiled_build() -> None:
    found = discover(["aserve", "aserve-pure"])
    if build() == "compiled":
        assert [p.name for p in found.available] == ["aserve", "aserve-pure"]
    else:
        assert [p.name for p in found.available] == ["aserve"]
        assert [(p.name, reason) for p, reason in found.missing] == [
            ("aserve-pure", "the aserve row is pure Python already (make build-compiled; run "
             "from build/compiled)"),
        ]  # fmt: skip


def test_the_pure_row_imports_the_sources_whatever_the_working_directory() -> None:
    """Run from the compiled build's directory, as `make build-compiled` suggests, the pure
    row's command line still imports aserve's sources, and none of them is missing."""
    tree = Path(peers.pure_tree())
    assert not list(tree.rglob("*.so"))
    assert {p.name for p in tree.joinpath("aserve").iterdir()} >= {"exchange.py", "protocols"}
    launch = Launch(8000, 50)
    command = peers.BY_NAME["aserve-pure"].command(HELLO_WSGI, launch)
    assert command[:4] == [sys.executable, "-P", "-m", "aserve"]
    env = {**os.environ, **peers.BY_NAME["aserve-pure"].env(HELLO_WSGI)}
    version = subprocess.run(
        [*command[:4], "--version"],
        env=env,
        cwd=Path(peers.__file__).parents[2],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.strip() == f"aserve {__version__} (pure Python)"


def test_discover_a_subset_when_nothing_is_installed() -> None:
    found = discover(["aserve", "uvicorn"], installed=lambda module: False)
    # aserve needs nothing beyond itself; uvicorn names every module that is missing.
    assert [p.name for p in found.available] == ["aserve"]
    assert found.missing[0][1] == (
        "uvicorn, uvloop, httptools not installed (pip install 'uvicorn[standard]')"
    )


def test_module_installed() -> None:
    assert peers.module_installed("json")
    assert not peers.module_installed("no_such_module_for_aserve_bench")


def test_peer_supports() -> None:
    by_name = peers.BY_NAME
    assert by_name["runserver"].supports(DJANGO)
    assert not by_name["runserver"].supports(HELLO_WSGI)
    assert by_name["ceiling"].supports(HELLO_WSGI)
    assert not by_name["ceiling"].supports(TRANSFER)
    assert not by_name["uvicorn"].supports(HELLO_WSGI)
    assert by_name["granian"].supports(HELLO_WSGI)
    assert by_name["granian"].supports(AppSpec("user", "m:a", "asgi"))


def test_peer_command_lines() -> None:
    launch = Launch(port=4321, connections=1000)
    logged = peers.BY_NAME["aserve+log"].command(HELLO_WSGI, launch)
    assert "--access-log" in logged
    assert "--no-access-log" not in logged
    aserve = peers.BY_NAME["aserve"].command(HELLO_WSGI, launch)
    assert aserve[:3] == [sys.executable, "-m", "aserve"]
    assert HELLO_WSGI.app in aserve
    assert "--no-access-log" in aserve
    assert aserve[aserve.index("--port") + 1] == "4321"
    waitress = peers.BY_NAME["waitress"].command(HELLO_WSGI, launch)
    assert "--threads=4" in waitress
    assert "--connection-limit=2000" in waitress
    hypercorn = peers.BY_NAME["hypercorn"].command(HELLO_WSGI, launch)
    assert hypercorn[-1] == f"wsgi:{HELLO_WSGI.app}"
    a2wsgi = peers.BY_NAME["uvicorn+a2wsgi"]
    assert "aserve.bench.apps:a2wsgi_factory" in a2wsgi.command(HELLO_WSGI, launch)
    assert a2wsgi.env(HELLO_WSGI) == {"ASERVE_BENCH_A2WSGI_TARGET": HELLO_WSGI.app}


def test_standard_scenarios_name_known_peers() -> None:
    assert [s.name for s in STANDARD] == [
        "hello-wsgi", "hello-asgi", "ws-echo", "django", "stream-1mib", "upload-16mib",
        "hello-wsgi-c1000", "memory-1gib", "reload",
    ]  # fmt: skip
    for scenario in STANDARD:
        assert scenario.servers[0] in ("ceiling", "aserve")
        for name in scenario.servers:
            assert peers.BY_NAME[name].supports(scenario.app), (scenario.name, name)
    assert BY_NAME["hello-wsgi-c1000"].connections == 1000


def test_count_runs() -> None:
    available = discover(installed=lambda module: True).available
    plan = [
        runner.Step(BY_NAME["hello-wsgi"], available[:3]),
        runner.Step(BY_NAME["memory-1gib"], available[1:3]),
    ]
    assert runner.count_runs(plan, rounds=3) == 9 + 2


# -- CLI -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scenarios", "hello-wsgi,nope"], "unknown scenario(s): nope"),
        (["--servers", "aserve,apache"], "unknown server(s): apache"),
        (["--path", "/x"], "--path applies to --app only"),
        (["--duration", "0"], "--duration, --rounds and --edits must be at least 1"),
        (["--warmup", "-1"], "--warmup, --retries and --settle cannot be negative"),
        (["--app", "hello"], "APP must look like 'module:attribute'"),
        (["--app", "aserve.bench.apps:hello_wsgi", "--path", "x"], "--path must start with"),
        (["--app", "no_such_module_xyz:app"], "no_such_module_xyz"),
        (["--server-cpu", "1", "--load-cpu", "1"], "--server-cpu and --load-cpu must differ"),
        (["--server-cpu", "7"], "--server-cpu 7 is not one of this process's CPUs [0, 1]"),
        (["--generator", "wrk"], "--generator wrk: wrk is not installed"),
        (["--generator", "fast"], "argument --generator: invalid choice"),
    ],
)
def test_cli_usage_errors_are_one_line_exit_2(
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(cli, "usable_cpus", lambda: [0, 1])
    monkeypatch.setattr("aserve.bench.loadgen.shutil.which", lambda name: None)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("aserve-bench: error: ")
    assert message in err


def test_cli_plan_for_a_users_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "usable_cpus", lambda: [0, 1])
    monkeypatch.setattr(cli, "discover", lambda names: discover(names, lambda module: True))
    options = cli.parse(
        ["--app", "aserve.bench.apps:hello_asgi", "--path", "/x?y=1", "--connections", "10"]
    )
    (step,) = options.plan
    assert step.scenario.name == "user"
    assert step.scenario.app.interface == "asgi"
    assert step.scenario.request == Request("GET", "/x?y=1")
    assert step.scenario.connections == 10
    # The pure row joins aserve's where the build under test is the compiled one.
    pure = ["aserve-pure"] if build() == "compiled" else []
    assert [p.name for p in step.peers] == [
        "ceiling", "aserve", *pure, "uvicorn", "uvicorn-zttp", "granian", "hypercorn",
    ]  # fmt: skip
    assert (options.settings.server_cpu, options.settings.load_cpu) == (0, 1)


def test_cli_standard_plan_skips_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "usable_cpus", lambda: [2, 3])
    monkeypatch.setattr(
        cli, "discover", lambda names: discover(names, lambda module: module != "waitress")
    )
    monkeypatch.setattr(cli, "module_installed", lambda module: module != "django")
    options = cli.parse(["--scenarios", "hello-wsgi,django", "--servers", "aserve,waitress"])
    assert [(s.scenario.name, [p.name for p in s.peers]) for s in options.plan] == [
        ("hello-wsgi", ["aserve"])
    ]
    assert options.skipped == [
        "waitress: waitress not installed (pip install waitress)",
        "scenario django: Django is not installed (pip install django)",
    ]
    assert (options.settings.server_cpu, options.settings.load_cpu) == (2, 3)


def test_cli_one_cpu_does_not_pin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "usable_cpus", lambda: [0])
    options = cli.parse(["--scenarios", "hello-asgi", "--servers", "aserve"])
    assert (options.settings.server_cpu, options.settings.load_cpu) == (None, None)
    assert "not pinned" in capsys.readouterr().err


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "hello-wsgi-c1000" in out
    assert "ceiling" in out


# -- report ----------------------------------------------------------------------------------


def test_load_table() -> None:
    rows = summarise(
        "hello-wsgi",
        ["ceiling", "aserve", "granian"],
        [
            _run("ceiling", 80_000.0),
            _run("aserve", 40_000.0, errors=2),
            Run("hello-wsgi", "granian", 0, error="exited with code 1\ntraceback"),
        ],
    )
    table = report.load_table(BY_NAME["hello-wsgi"], rows).splitlines()
    assert table[0].split("|")[1:-1] == [
        " server  ", " runs ", "  req/s ", "       min-max ", " req/CPU-s ", " p50 ms ", " p99 ms ",
        "        errors ", " peak RSS MiB ", " vs aserve ", " of ceiling ",
    ]  # fmt: skip
    assert table[3].split("|")[1:-1] == [
        " aserve  ", "  1/1 ", " 40,000 ", " 40,000-40,000 ", "    40,000 ", "   1.00 ", "   3.00 ",
        " 2 (timeout 2) ", "         20.0 ", "     1.00x ", "        50% ",
    ]  # fmt: skip
    assert table[4].split("|")[1:4] == [" granian ", "  0/1 ", " failed "]
    assert table[-1] == "granian failed: exited with code 1"


def test_memory_table_and_describe() -> None:
    good = MemoryRun("memory-1gib", "aserve", 2**30, Transfer(2.0, MiB), Transfer(1.0, 0))
    refused = MemoryRun(
        "memory-1gib", "hypercorn", 2**30, Transfer(error="BrokenPipeError"), Transfer(1.0, 0)
    )
    table = report.memory_table([good, refused])
    assert "| aserve    |" in table
    assert "failed: BrokenPipeError" in table
    assert report.describe(good) == (
        "upload 512 MiB/s +1.0 MiB RSS, download 1,024 MiB/s +0.0 MiB RSS"
    )
    contended = _run("aserve", 1234.0, contended=True)
    contended.foreign_server_cpu = 0.25
    assert report.describe(contended, again=True).endswith("CONTENDED, measuring again")


def test_access_log_note() -> None:
    rows = [_summary("aserve", 40_000.0), _summary("aserve+log", 20_000.0)]
    assert report.access_log_note(rows) == (
        "aserve's access log: 20,000 req/s on, 40,000 off (+25.0 us per request)."
    )
    assert report.access_log_note(rows[:1]) is None


def test_generator_note() -> None:
    summaries = {"hello-wsgi": [_summary("ceiling", 50_000.0)], "x": [_summary("ceiling", 60_000)]}
    assert "reached 60,000 req/s" in report.generator_note("wrk 4.1.0", summaries)
    assert "not measured" in report.generator_note("wrk 4.1.0", {})


def test_progress_lines() -> None:
    stream = io.StringIO()
    progress = report.Progress(total=2, stream=stream)
    scenario = BY_NAME["hello-wsgi"]
    progress.begin(scenario, "aserve", 0, waited=0.0)
    progress.end(_run("aserve", 1000.0, contended=True), again=True)
    progress.begin(scenario, "aserve", 0, waited=3.0)
    progress.end(_run("aserve", 2000.0), again=False)
    first, second = stream.getvalue().splitlines()
    assert first.startswith("[    1/2 ~? left] hello-wsgi")
    assert "CONTENDED, measuring again" in first
    assert second.startswith("[    1/2 ")
    assert "waited 3s for a quiet machine" in second
    assert "2,000 req/s" in second
    assert progress.done == 1


def test_json_has_no_nan_and_bytes_as_text(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    report.write_json(path, {"a": math.nan, "b": [1.5, {"c": math.nan}], "d": b"ok"})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5, {"c": None}], "d": "ok"}


def test_chart_is_written_when_matplotlib_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "chart.png"
    rows = {"hello-wsgi": [_summary("aserve", 30_000.0), _summary("waitress", 10_000.0)]}
    assert report.write_chart(path, [BY_NAME["hello-wsgi"]], rows)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- apps and the ceiling server -------------------------------------------------------------


def _call(app: Any, environ: Environ) -> tuple[str, bytes]:
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda data: None

    result: Iterable[bytes] = validator(app)(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        cast(Any, result).close()
    return statuses[0], body


def _environ(method: str, query: str = "", body: bytes = b"") -> Environ:
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "QUERY_STRING": query,
        "wsgi.input": io.BytesIO(body),
    }
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
    setup_testing_defaults(environ)
    return environ


def test_transfer_app_streams_and_counts() -> None:
    assert _call(hello_wsgi, _environ("GET")) == ("200 OK", BODY)
    status, body = _call(transfer_wsgi, _environ("GET", f"size={200_000}"))
    assert (status, len(body), set(body)) == ("200 OK", 200_000, {ord("x")})
    assert len(_call(transfer_wsgi, _environ("GET"))[1]) == MiB
    assert _call(transfer_wsgi, _environ("POST", body=b"y" * 70_000)) == ("200 OK", b"70000")


async def test_hello_asgi_answers_lifespan_and_http() -> None:
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await hello_asgi({"type": "lifespan"}, receive, send)
    await hello_asgi({"type": "http"}, receive, send)
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete", "lifespan.shutdown.complete", "http.response.start",
        "http.response.body",
    ]  # fmt: skip
    assert sent[3]["body"] == BODY


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


def test_ceiling_answers_pipelined_requests_in_one_write() -> None:
    protocol = CannedProtocol()
    transport = _Transport()
    protocol.connection_made(cast(asyncio.Transport, transport))
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\nGE")
    assert transport.written == [RESPONSE * 2]
    protocol.data_received(b"T / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert not transport.closed
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert transport.written == [RESPONSE * 2, RESPONSE, RESPONSE]
    assert RESPONSE.endswith(b"\r\n\r\n" + BODY)
    assert transport.closed


def test_django_app_in_process() -> None:
    pytest.importorskip("django")
    code = (
        "from aserve.bench.django_app import application, in_process_rate\n"
        "assert in_process_rate(0.05) > 0\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


# -- system ----------------------------------------------------------------------------------


def test_process_tree_and_memory() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        tree = process_tree(os.getpid())
        assert tree[0] == os.getpid()
        assert child.pid in tree
        reset_peak(os.getpid())
        memory = tree_memory(child.pid)
        assert 0 < memory.rss <= memory.peak
    finally:
        child.kill()
        child.wait()


def test_without_proc_the_figures_are_zero_and_nothing_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """macOS and Windows have no /proc, nor sched_setaffinity: the benchmark still runs."""
    from aserve.bench import system

    monkeypatch.setattr(system, "_PROC", tmp_path / "no-proc")
    monkeypatch.delattr(os, "sched_setaffinity")
    assert system.process_tree(os.getpid()) == [os.getpid()]
    assert system.tree_cpu_s(os.getpid()) == 0.0
    assert system.tree_memory(os.getpid()) == system.Memory(rss=0, peak=0)
    system.reset_peak(os.getpid())
    assert system.Ticks.read(None) == system.Ticks(0, 0)
    assert system.memory_total() == 0
    assert system.cpu_model()
    assert pinned(1, ["wrk"]) == ["wrk"]
    assert system.usable_cpus()


def test_pinned_command(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pinned(None, ["wrk"]) == ["wrk"]
    monkeypatch.setattr("aserve.bench.system.shutil.which", lambda name: "/usr/bin/taskset")
    assert pinned(1, ["wrk", "-v"]) == ["taskset", "-c", "1", "wrk", "-v"]
    monkeypatch.setattr("aserve.bench.system.shutil.which", lambda name: None)
    shim = pinned(1, ["wrk"])
    assert shim[:2] == [sys.executable, "-c"]
    assert shim[3:] == ["1", "wrk"]


# -- the built-in generator and the runner against a real aserve -----------------------------


@pytest.fixture
def transfer_server() -> Iterator[int]:
    with running(validator(transfer_wsgi)) as server:
        yield server.port


async def test_builtin_generator_against_aserve() -> None:
    with running(validator(hello_wsgi)) as server:
        result = await generate(server.url, Request(), connections=4, duration=0.3)
    assert result.requests > 50
    assert result.errors == 0
    assert result.requests_per_s == pytest.approx(result.requests / result.duration_s)
    assert 0.25 <= result.duration_s < 1.0
    assert 0 < result.p50_ms <= result.p99_ms < 1000


async def test_websocket_generator_against_aserve() -> None:
    with running(ws_echo) as server:
        url = server.url.replace("http://", "ws://") + "/"
        result = await wsload.generate(url, connections=4, duration=0.3, size=1024)
    assert result.requests > 50
    assert result.errors == 0
    assert 0 < result.p50_ms <= result.p99_ms < 1000


def test_websocket_frames_of_the_generator() -> None:
    assert wsload.client_frame(0x1, b"hi") == b"\x81\x82\0\0\0\0hi"
    assert wsload.client_frame(0x2, b"x" * 200)[:4] == b"\x82\xfe\x00\xc8"
    assert wsload.server_frame_size(b"\x81\x02hi", 0) == 4
    assert wsload.server_frame_size(b"\x81\x7e\x01", 0) == 0  # the length is not all there
    assert wsload.server_frame_size(b"\x81\x7e\x01\x00", 0) == 260


async def test_builtin_generator_uploads_and_counts_non_2xx(transfer_server: int) -> None:
    url = f"http://127.0.0.1:{transfer_server}"
    upload = await generate(url, Request("POST", "/", 100_000), connections=2, duration=0.3)
    assert upload.requests > 5
    assert upload.errors == 0
    missing = await generate(url, Request("GET", "/?size=x"), connections=1, duration=0.2)
    # int("x") raises in the app: every answer is a 500.
    assert missing.requests > 0
    assert missing.non_2xx_3xx == missing.requests


async def test_builtin_generator_counts_timeouts() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await generate(
            f"http://127.0.0.1:{port}", Request(), connections=2, duration=0.35, timeout=0.1
        )
    assert result.requests == 0
    assert result.socket_errors["timeout"] >= 2
    assert math.isnan(result.p50_ms)


def test_runner_transfers_and_check(transfer_server: int) -> None:
    assert runner.upload(transfer_server, 3 * MiB + 5) == 3 * MiB + 5
    assert runner.download(transfer_server, 2 * MiB + 7) == 2 * MiB + 7
    runner.check(transfer_server, BY_NAME["stream-1mib"])
    with pytest.raises(runner.ServerFailed, match="answered b'0', not b'16777216'"):
        runner.check(transfer_server, replace(BY_NAME["upload-16mib"], request=Request("POST")))


def _fake_peer(code: str) -> peers.Peer:
    return peers.Peer(
        "fake",
        "a server that is not one",
        peers.BOTH,
        (),
        lambda spec, launch: [sys.executable, "-c", code],
        "nothing",
    )


def test_measure_load_reports_a_server_that_dies() -> None:
    peer = _fake_peer("import sys; print('cannot start: no such option'); sys.exit(3)")
    settings = runner.Settings(duration=1, warmup=0, server_cpu=None, load_cpu=None)
    generator = loadgen.Generator("builtin", None)
    run = runner.measure_load(peer, BY_NAME["hello-wsgi"], settings, generator, 0)
    assert run.result is None
    assert run.error is not None
    assert run.error.startswith("exited with code 3; its output ends:\n")
    assert run.error.endswith("cannot start: no such option")


def test_measure_load_end_to_end_for_one_second() -> None:
    """aserve started as the harness starts it, checked, loaded by the built-in generator in
    its own process, measured and stopped: the whole path of one run, unpinned."""
    settings = runner.Settings(duration=1, warmup=0, server_cpu=None, load_cpu=None)
    generator = loadgen.Generator("builtin", None)
    run = runner.measure_load(
        peers.BY_NAME["aserve"], BY_NAME["hello-asgi"], settings, generator, 0
    )
    assert run.error is None
    assert run.result is not None
    assert run.result.requests > 100
    assert run.result.errors == 0
    assert run.server_cpu_s > 0
    assert run.peak_rss > 10 * MiB
    assert not run.contended


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, bool]] = []

    def begin(self, scenario: Any, server: str, round_no: int, waited: float) -> None:
        pass

    def end(self, outcome: Run | MemoryRun | ReloadRun, again: bool) -> None:
        self.events.append((outcome.server, again))


def test_execute_measures_a_failed_run_again_up_to_the_retries() -> None:
    peer = _fake_peer("import sys; sys.exit(2)")
    settings = runner.Settings(
        duration=1, warmup=0, server_cpu=None, load_cpu=None, retries=2, settle=0.0
    )
    results = Results()
    recorder = _Recorder()
    plan = [runner.Step(BY_NAME["hello-wsgi"], [peer])]
    runner.execute(plan, settings, loadgen.Generator("builtin", None), recorder, results)
    assert recorder.events == [("fake", True), ("fake", True), ("fake", False)]
    assert [r.error for r in results.runs] == ["exited with code 2"] * 3
    (summary,) = summarise("hello-wsgi", ["fake"], results.runs)
    assert (summary.runs, summary.error) == (3, "exited with code 2")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.2, "about 1 s"), (4.0, "about 4 s"), (40.5, "about 41 s"), (89.0, "about 89 s"),
     (90.0, "about 2 min"), (125.0, "about 3 min")],
)  # fmt: skip
def test_the_announced_duration_is_the_plans(seconds: float, text: str) -> None:
    assert cli.duration_text(seconds) == text


def test_a_missing_matplotlib_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(report, "chart_available", lambda: False)
    code = cli.main(
        ["--scenarios", "hello-asgi", "--servers", "aserve", "--rounds", "1", "--duration", "1",
         "--warmup", "0", "--output", str(tmp_path), "--generator", "builtin",
         # Neither a wait for a quiet machine nor a contended run measured again: the test is
         # about the message, and on a busy machine those took half a minute.
         "--settle", "0", "--retries", "0"]
    )  # fmt: skip
    assert code == 0
    assert "no chart: matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "aserve-bench.png").exists()
