"""aserve-bench's reload scenario and its uvicorn-zttp peer: the plan, the summary of given
saves, the table, the targets, the JSON, the probe's verdicts, and one real run of two saves
under aserve --reload (a few seconds)."""

from __future__ import annotations

import json
import math
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aserve.bench import cli, peers, reload, report, runner
from aserve.bench.peers import RELOAD_APP, AppSpec, Launch, discover
from aserve.bench.reload import Edit, ReloadRun, ReloadSettings
from aserve.bench.results import ReloadSummary, summarise_reload
from aserve.bench.scenarios import BY_NAME, HELLO_ASGI, RELOAD_PROJECT
from aserve.bench.stats import interpolated
from aserve.bench.targets import evaluate


def _everything_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "usable_cpus", lambda: [0, 1])
    monkeypatch.setattr(cli, "discover", lambda names: discover(names, lambda module: True))
    monkeypatch.setattr(cli, "module_installed", lambda module: True)


# -- the plan --------------------------------------------------------------------------------


def test_the_reload_scenario_runs_each_servers_own_reloader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _everything_installed(monkeypatch)
    options = cli.parse(["--scenarios", "reload", "--edits", "3"])
    (step,) = options.plan
    assert step.scenario.kind == "reload"
    assert [p.name for p in step.peers] == ["aserve", "runserver", "runserver-aserve", "uvicorn"]
    assert options.settings.edits == 3
    assert runner.count_runs(options.plan, rounds=2) == 8
    assert cli.parse(["--scenarios", "reload"]).settings.edits == 10


def test_the_reload_scenario_skips_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "usable_cpus", lambda: [0, 1])
    monkeypatch.setattr(
        cli, "discover", lambda names: discover(names, lambda module: module != "uvicorn")
    )
    monkeypatch.setattr(cli, "module_installed", lambda module: True)
    options = cli.parse(["--scenarios", "reload,hello-wsgi", "--servers", "aserve,uvicorn"])
    assert [(s.scenario.name, [p.name for p in s.peers]) for s in options.plan] == [
        ("reload", ["aserve"]),
        ("hello-wsgi", ["aserve"]),
    ]
    assert options.skipped[0].startswith("uvicorn: uvicorn not installed")
    monkeypatch.setattr(cli, "module_installed", lambda module: module != "django")
    options = cli.parse(["--scenarios", "reload,hello-wsgi", "--servers", "aserve"])
    assert [s.scenario.name for s in options.plan] == ["hello-wsgi"]
    assert options.skipped == ["scenario reload: Django is not installed (pip install django)"]


def test_edits_must_be_positive(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "usable_cpus", lambda: [0, 1])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--scenarios", "reload", "--edits", "0"])
    assert exit_info.value.code == 2
    assert "--duration, --rounds and --edits must be at least 1" in capsys.readouterr().err


def test_the_estimate_counts_saves(monkeypatch: pytest.MonkeyPatch) -> None:
    _everything_installed(monkeypatch)
    options = cli.parse(["--scenarios", "reload", "--servers", "aserve,runserver"])
    short = cli.estimate_s(options.plan, options.settings)
    options = cli.parse(["--scenarios", "reload", "--servers", "aserve,runserver", "--edits", "20"])
    assert cli.estimate_s(options.plan, options.settings) == pytest.approx(short + 2 * 10 * 2.0)
    assert cli.run_sizes(options.plan, options.settings) == "20 saves per reloading server"


def test_only_reloading_peers_serve_the_project() -> None:
    reloading = [p.name for p in peers.PEERS if p.supports(RELOAD_PROJECT)]
    assert reloading == ["aserve", "aserve-spawn", "uvicorn", "runserver", "runserver-aserve"]
    # aserve-spawn is a reload variant only; runserver serves the load scenarios' Django app.
    assert not peers.BY_NAME["aserve-spawn"].supports(HELLO_ASGI)
    assert peers.BY_NAME["runserver"].supports(BY_NAME["django"].app)
    assert not peers.BY_NAME["waitress"].supports(RELOAD_PROJECT)


def test_reload_command_lines() -> None:
    def command(name: str) -> list[str]:
        """The command line after its launcher: a console script, or `python -m NAME` where
        the script is not installed (uvicorn comes with the bench extra only)."""
        build = peers.BY_NAME[name].reload
        assert build is not None
        argv = build(8001)
        return argv[2:] if argv[1:3] == ["-m", name] else argv

    host = ["--host", "127.0.0.1", "--port", "8001"]
    assert command("aserve")[1:] == ["mysite.wsgi:application", "--reload", *host]
    assert Path(command("aserve")[0]).name in ("aserve", "python", "python3")
    assert command("aserve-spawn")[-2:] == ["--reload-worker", "spawn"]
    assert command("uvicorn")[1:] == [
        "mysite.wsgi:application", "--reload", "--interface", "wsgi", *host,
    ]  # fmt: skip
    assert command("runserver")[1:] == ["manage.py", "runserver", "127.0.0.1:8001"]
    assert command("runserver-aserve")[1:] == [
        "manage.py", "runserver", "--settings=mysite.settings_aserve", "127.0.0.1:8001",
    ]  # fmt: skip


# -- uvicorn's zttp parser -------------------------------------------------------------------


def test_uvicorn_zttp_peer() -> None:
    peer = peers.BY_NAME["uvicorn-zttp"]
    command = peer.command(HELLO_ASGI, Launch(8002, 50))
    assert command[command.index("--http") + 1] == "zttp"
    assert "httptools" not in command
    assert peer.supports(HELLO_ASGI)
    assert not peer.supports(BY_NAME["hello-wsgi"].app)
    assert "uvicorn-zttp" in BY_NAME["hello-asgi"].servers
    found = discover(["uvicorn-zttp"], lambda module: module != "zttp")
    ((missing, reason),) = found.missing
    assert missing.name == "uvicorn-zttp"
    assert reason.startswith("zttp not installed (pip install")
    # A uvicorn without the option: its protocol module is what is missing.
    found = discover(["uvicorn-zttp"], lambda module: not module.endswith("zttp_impl"))
    assert found.missing[0][1].startswith("uvicorn.protocols.http.zttp_impl not installed")


def test_module_installed_finds_submodules_without_importing_them() -> None:
    assert peers.module_installed("aserve.bench.reload")
    assert peers.module_installed("json.decoder")
    assert not peers.module_installed("aserve.bench.no_such_module")
    assert not peers.module_installed("no_such_package_xyz.sub")


def test_uvicorn_zttp_answers_when_installed() -> None:
    if discover(["uvicorn-zttp"]).missing:
        pytest.skip("uvicorn's --http zttp or the zttp package is not installed")
    settings = runner.Settings(server_cpu=None, load_cpu=None)
    with (
        tempfile.TemporaryFile() as log,
        runner.serving(peers.BY_NAME["uvicorn-zttp"], BY_NAME["hello-asgi"], settings, log),
    ):
        pass  # serving() checked the answer's exact body


# -- summaries, table, targets ---------------------------------------------------------------


def _run(
    server: str, latencies: list[float | None], refused: int = 0, round_no: int = 0
) -> ReloadRun:
    edits = [
        Edit(n + 1, latency, polls=3, refused=refused, errors=1 if server == "uvicorn" else 0)
        for n, latency in enumerate(latencies)
    ]
    return ReloadRun("reload", server, round_no, ["x"], startup_s=0.5, edits=edits)


def test_interpolated_quantiles() -> None:
    assert interpolated([100.0, 200.0, 300.0, 400.0, 1000.0], 0.5) == 300.0
    assert interpolated([100.0, 200.0, 300.0, 400.0, 1000.0], 0.9) == pytest.approx(760.0)
    assert interpolated([5.0], 0.9) == 5.0
    assert math.isnan(interpolated([], 0.5))
    with pytest.raises(ValueError, match="between 0 and 1"):
        interpolated([1.0], 50)


def test_summarise_reload_pools_rounds_and_relates_to_aserve() -> None:
    runs = [
        _run("aserve", [100.0, 300.0]),
        _run("runserver", [800.0, 1200.0], refused=400),
        _run("aserve", [200.0], round_no=1),
        _run("runserver", [1000.0, None], refused=10, round_no=1),
        _run("other-scenario-server", [1.0]),
    ]
    runs[3].error = "version 2 never answered:\n..."
    aserve, runserver = summarise_reload("reload", ["aserve", "runserver", "uvicorn"], runs)
    assert (aserve.runs, aserve.edits, aserve.p50_ms, aserve.max_ms) == (2, 3, 200.0, 300.0)
    assert aserve.p90_ms == pytest.approx(280.0)
    assert (aserve.refused, aserve.missed, aserve.error, aserve.vs_aserve) == (0, 0, None, 1.0)
    assert runserver.edits == 3
    assert runserver.p50_ms == 1000.0
    assert (runserver.refused, runserver.missed, runserver.edits_with_refused) == (820, 1, 4)
    assert runserver.vs_aserve == 5.0
    assert runserver.error == "version 2 never answered:\n..."
    assert runserver.startup_s == 0.5


def test_a_server_that_never_answered_has_no_latency() -> None:
    failed = ReloadRun("reload", "aserve", 0, error="exited with code 1:\nboom")
    (summary,) = summarise_reload("reload", ["aserve"], [failed, _run("uvicorn", [5.0])])
    assert summary.edits == 0
    assert math.isnan(summary.p50_ms)
    assert summary.vs_aserve is None
    assert report.describe(failed) == "FAILED: exited with code 1:"


def test_reload_table_and_progress_line() -> None:
    runs = [_run("aserve", [141.0, 156.0, 167.0]), _run("uvicorn", [606.0, 700.0])]
    runs[1].error = "version 3 never answered:\nlog"
    summaries = summarise_reload("reload", ["aserve", "uvicorn"], runs)
    assert report.reload_table(summaries) == (
        "| server  | edits | p50 ms | p90 ms | max ms | refused | errors | non-200 | missed "
        "| start s | other CPU | p50 / aserve |\n"
        "|---------|------:|-------:|-------:|-------:|--------:|-------:|--------:|-------:"
        "|--------:|----------:|-------------:|\n"
        "| aserve  |     3 |    156 |    165 |    167 |       0 |      0 |       0 |      0 "
        "|    0.50 |        0% |        1.00x |\n"
        "| uvicorn |     2 |    653 |    691 |    700 |       0 |      2 |       0 |      0 "
        "|    0.50 |        0% |        4.19x |\n"
        "uvicorn failed: version 3 never answered:"
    )
    assert report.describe(runs[1]) == (
        "2 saves, p50 653 ms, max 700 ms, refused 0, errors 2; FAILED: version 3 never answered:"
    )


def _reload_summary(server: str, p50: float, refused: int = 0) -> ReloadSummary:
    return ReloadSummary("reload", server, 1, edits=20, p50_ms=p50, refused=refused)


def test_reload_targets() -> None:
    def verdicts(rows: list[ReloadSummary]) -> list[tuple[str, str]]:
        return [
            (v.status, v.measured) for v in evaluate({}, [], rows) if v.label.startswith("Reload")
        ]

    assert verdicts([]) == [("n/a", "not measured"), ("n/a", "not measured")]
    assert verdicts([_reload_summary("aserve", 150.0), _reload_summary("runserver", 900.0)]) == [
        ("met", "6.00x"),
        ("met", "0 failed of 20 saves"),
    ]
    assert verdicts(
        [_reload_summary("aserve", 300.0, refused=2), _reload_summary("runserver", 900.0)]
    ) == [("NOT MET", "3.00x"), ("NOT MET", "2 failed of 20 saves")]
    assert verdicts([_reload_summary("aserve", 150.0)]) == [
        ("n/a", "not measured"),
        ("met", "0 failed of 20 saves"),
    ]


def test_the_json_and_the_table_of_a_reload_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole command with the measuring replaced: what it plans, prints and writes."""
    asked: list[tuple[str, int, int | None, int]] = []

    def measure(
        peer: peers.Peer, directory: Path, view: reload.ViewEditor, settings: ReloadSettings,
        say: reload.Say = print, scenario: str = "", round_no: int = 0, cpu: int | None = None,
    ) -> ReloadRun:  # fmt: skip
        assert (directory / "manage.py").exists()
        asked.append((peer.name, settings.edits, cpu, round_no))
        run = _run(peer.name, [120.0, 140.0] if peer.name == "aserve" else [700.0, 900.0])
        run.round = round_no
        if peer.name == "runserver":
            run.edits[0].refused = 300
        return run

    monkeypatch.setattr(cli, "usable_cpus", lambda: [0, 1])
    monkeypatch.setattr(cli, "pin_self", lambda cpu: None)
    monkeypatch.setattr(reload, "measure", measure)
    code = cli.main(
        ["--scenarios", "reload", "--servers", "aserve,runserver", "--edits", "2", "--rounds",
         "2", "--settle", "0", "--output", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    # Alternated rounds, each server pinned to the server CPU.
    first, second = [("aserve", 2, 0, 0), ("runserver", 2, 0, 0)], [("runserver", 2, 0, 1)]
    assert asked == [*first, *second, ("aserve", 2, 0, 1)]
    out = capsys.readouterr().out
    assert "## reload: save of a Django view" in out
    assert "| runserver |     4 |    800 |    900 |    900 |     600 |" in out
    assert "| Reload: aserve's p50 <= 1/4 of runserver's" in out
    document = json.loads((tmp_path / "aserve-bench.json").read_text())
    aserve, runserver = document["reload"]["reload"]
    assert (aserve["server"], aserve["p50_ms"], aserve["edits"]) == ("aserve", 130.0, 4)
    assert runserver["vs_aserve"] == pytest.approx(800 / 130)
    assert len(document["reload_runs"]) == 4
    assert document["reload_runs"][0]["edits"][0]["latency_ms"] == 120.0
    assert document["settings"]["edits"] == 2
    targets = {t["label"]: t["status"] for t in document["targets"]}
    assert targets["Reload: aserve's p50 <= 1/4 of runserver's"] == "met"


def test_a_failed_aserve_reload_fails_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def measure(peer: peers.Peer, *args: object, **kwargs: object) -> ReloadRun:
        return ReloadRun("reload", peer.name, 0, error="no version 0 after 60 s:\n")

    monkeypatch.setattr(cli, "usable_cpus", lambda: [0, 1])
    monkeypatch.setattr(cli, "pin_self", lambda cpu: None)
    monkeypatch.setattr(reload, "measure", measure)
    argv = ["--scenarios", "reload", "--servers", "aserve", "--settle", "0"]
    assert cli.main([*argv, "--output", str(tmp_path)]) == 1


# -- probing and the project -----------------------------------------------------------------


@pytest.fixture
def closing_server() -> Iterator[int]:
    """Accepts connections and closes them without an answer, as a worker on its way out."""
    listener = socket.create_server(("127.0.0.1", 0))
    # A closed socket does not wake a thread blocked in accept(): it polls for `done` instead.
    listener.settimeout(0.05)
    port = listener.getsockname()[1]
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    done.set()
    thread.join(5)
    listener.close()


def test_probe_tells_refused_from_failed(closing_server: int) -> None:
    with socket.create_server(("127.0.0.1", 0)) as unused:
        port = unused.getsockname()[1]
    assert reload.probe(port).outcome == "refused"
    assert reload.probe(closing_server).outcome == "error"


def test_the_view_editor_moves_the_mtime_a_second_at_least(tmp_path: Path) -> None:
    view = tmp_path / "views.py"
    view.write_text(reload.view_source(0))
    editor = ReloadSettings()  # the defaults the script documents
    assert (editor.edits, editor.interval, editor.gap, editor.jitter) == (20, 0.001, 0.5, 1.0)
    writer = reload.ViewEditor(view)
    before = view.stat().st_mtime_ns
    writer.write(1)
    writer.write(2)
    assert view.stat().st_mtime_ns >= before + 2_000_000_000
    assert 'f"version={VERSION};"' in view.read_text()
    assert "VERSION = 2\n" in view.read_text()
    assert "import hypothesis" in reload.view_source(3, "hypothesis")


def test_aserve_reloads_two_saves_for_real() -> None:
    """The project made by django-admin, aserve --reload started from it as a developer would,
    two saves measured, and the server stopped with nothing left behind."""
    settings = ReloadSettings(edits=2, gap=0.1, jitter=0.1, settle=0.2, machine_settle=0.0)
    lines: list[str] = []
    with reload.project() as (directory, view):
        run = reload.measure(peers.BY_NAME["aserve"], directory, view, settings, lines.append)
        assert reload.processes_in(directory) == []
        assert "VERSION = 0\n" in view.path.read_text()
    assert run.error is None, run.error
    assert [e.version for e in run.edits] == [1, 2]
    latencies = run.latencies()
    assert len(latencies) == 2
    assert all(0 < latency < 10_000 for latency in latencies)
    assert sum(e.refused + e.errors + e.non_200 for e in run.edits) == 0
    assert run.startup_s is not None
    assert lines[0].startswith("aserve: ")
    assert "mysite.wsgi:application --reload" in lines[0]
    assert any("edit  2:" in line for line in lines)


def test_the_reload_app_is_a_project_not_an_import() -> None:
    assert AppSpec(RELOAD_APP, "mysite.wsgi:application", "wsgi") == RELOAD_PROJECT
