"""`--env-file`: its variables are set before the app is imported, in every serving mode, with
the environment's own winning; a missing file is a usage error; under --reload an edit of it
restarts the workers, which read it afresh."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

import pytest

from aserve.arguments import add_config_options
from aserve.loader import load_env_file
from tests.support.client import http_get
from tests.support.polling import wait_until
from tests.support.procs import ServerProcess, assert_usage_error
from tests.support.servers import running

MODES = [[], ["--server", "wsgiref"], ["--reload"]]
MODE_IDS = ["aserve", "wsgiref", "reload"]
# The app reads both at import time: the file must be loaded before it.
APP = textwrap.dedent(
    """\
    import os

    BODY = f"{os.environ['ENVFILE_GREETING']} {os.environ['ENVFILE_PRESET']}".encode()


    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [BODY]
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "config").mkdir()
    # A name the reloader's default globs do not match.
    (tmp_path / "config" / "dev.vars").write_text(
        "ENVFILE_GREETING=hello\nENVFILE_PRESET=from-the-file\n"
    )
    return tmp_path


def serving(project: Path, *args: str) -> ServerProcess:
    """The app served from `project` with --env-file config/dev.vars, in an environment that
    already sets ENVFILE_PRESET."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVFILE_")}
    env["ENVFILE_PRESET"] = "from-the-shell"
    return ServerProcess(
        "app:app", "--port", "0", "--env-file", "config/dev.vars", *args, cwd=project, env=env
    )


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_the_app_sees_the_files_variables_and_the_environment_wins(
    project: Path, mode: list[str]
) -> None:
    with serving(project, *mode) as server:
        assert http_get(server.wait_listening()) == (200, b"hello from-the-shell")


def test_an_edit_of_the_file_restarts_and_the_new_value_is_seen(project: Path) -> None:
    with serving(project, "--reload") as server:
        port = server.wait_listening()
        assert http_get(port) == (200, b"hello from-the-shell")
        (project / "config" / "dev.vars").write_text(
            "ENVFILE_GREETING=goodbye\nENVFILE_PRESET=from-the-file\n"
        )
        server.wait_for(r"Reloaded in \d+ ms \(files: config/dev\.vars; worker \d+\)")
        assert wait_until(lambda: http_get(port) == (200, b"goodbye from-the-shell"), 10.0)


def test_a_file_gone_under_reload_shows_on_the_error_page(project: Path) -> None:
    with serving(project, "--reload") as server:
        port = server.wait_listening()
        (project / "config" / "dev.vars").unlink()
        server.wait_for(r"could not be imported: --env-file config/dev\.vars: No such file")
        status, body = http_get(port)
        assert status == 500
        assert b"--env-file config/dev.vars: No such file or directory" in body


def test_a_file_outside_the_watched_directories_gets_a_warning(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("elsewhere") / "dev.env"
    outside.write_text((project / "config" / "dev.vars").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVFILE_")}
    args = ["app:app", "--reload", "--port", "0", "--env-file", str(outside)]
    with ServerProcess(*args, cwd=project, env=env) as server:
        assert http_get(server.wait_listening()) == (200, b"hello from-the-file")
    assert (
        f"aserve: warning: --env-file {outside} is outside the watched directories: an edit "
        "of it restarts nothing (see --reload-dir)"
    ) in server.lines[0]


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_a_missing_file_is_a_usage_error(mode: list[str]) -> None:
    assert_usage_error(
        ["--env-file", "no/such.env", *mode, "tests.support.apps.wsgi_apps:app"],
        "--env-file no/such.env: No such file or directory",
    )


def test_variables_already_set_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVFILE_KEPT", "shell")
    monkeypatch.delenv("ENVFILE_ADDED", raising=False)
    path = tmp_path / ".env"
    path.write_text("ENVFILE_KEPT=file\nexport ENVFILE_ADDED='quoted ${ENVFILE_KEPT}'\n")
    load_env_file(str(path))
    # monkeypatch's own setenv is undone at the end; the variable the file added is not.
    monkeypatch.setenv("ENVFILE_ADDED", os.environ["ENVFILE_ADDED"])
    assert os.environ["ENVFILE_KEPT"] == "shell"
    assert os.environ["ENVFILE_ADDED"] == "quoted shell"


def test_runserver_on_aserve_does_not_offer_it() -> None:
    """Django has imported the settings before runserver runs: too late for the file."""
    assert "env_file" not in add_config_options(argparse.ArgumentParser())
    assert "env_file" in add_config_options(argparse.ArgumentParser(), runserver=False)


def test_server_in_a_program_reads_it_before_importing_the_app(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Server("app:app", env_file=...)`, as `uvicorn.run(..., env_file=...)` is used."""
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.setenv("ENVFILE_PRESET", "from-the-program")
    monkeypatch.delenv("ENVFILE_GREETING", raising=False)
    try:
        with running("app:app", env_file=str(project / "config" / "dev.vars")) as server:
            assert http_get(server.port) == (200, b"hello from-the-program")
    finally:
        sys.modules.pop("app", None)  # no other test's app:app finds this one
