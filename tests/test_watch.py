"""aserve.reload.filter.ReloadFilter: which changed paths restart the worker (default set, ignored
directories and editor files, --reload-include/--reload-exclude globs, several roots)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest
from watchfiles import Change

from aserve.reload.filter import ReloadFilter


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    return root


def accepted(root: Path, *relative: str, **globs: list[str]) -> list[str]:
    """Which of `relative` (paths under `root`) the filter for `root` lets through."""
    checker = ReloadFilter([root], globs.get("includes", ()), globs.get("excludes", ()))
    return [name for name in relative if checker.accepts(root / name)]


# ---------------------------------------------------------------- the default set


@pytest.mark.parametrize(
    "name",
    [
        "app.py",
        "stubs.pyi",
        "pkg/sub/models.py",
        "templates/base.html",
        "templates/old.htm",
        "requirements.txt",
        "fixtures/data.json",
        "pyproject.toml",
        "settings.yaml",
        "compose.yml",
        "setup.cfg",
        "tox.ini",
        ".env",
        "prod.env",
        "templates/page.jinja",
        "templates/page.jinja2",
        "templates/page.j2",
        "locale/fr/LC_MESSAGES/django.po",
        "locale/fr/LC_MESSAGES/django.mo",
    ],
)
def test_default_set_restarts_on_source_templates_and_config(project: Path, name: str) -> None:
    assert accepted(project, name) == [name]


@pytest.mark.parametrize(
    "name",
    [
        "static/site.css",
        "static/app.js",
        "static/app.js.map",
        "static/logo.png",
        "static/icon.svg",
        "media/upload.jpg",
        "app.pyc",
        "db.sqlite3",
        "README.md",
        "Makefile",
    ],
)
def test_default_set_ignores_static_assets_and_other_files(project: Path, name: str) -> None:
    assert accepted(project, name) == []


def test_watchfiles_call_protocol_uses_the_same_rules(project: Path) -> None:
    checker = ReloadFilter([project])
    assert checker(Change.modified, str(project / "app.py")) is True
    assert checker(Change.added, str(project / "views.py")) is True
    assert checker(Change.deleted, str(project / "old.py")) is True
    assert checker(Change.modified, str(project / "static" / "site.css")) is False
    assert checker(Change.modified, str(project / ".git" / "hooks" / "pre-commit.py")) is False


def test_directory_added_with_sources_inside(project: Path) -> None:
    """A directory moved in (or created by `git switch`) arrives with its files: the watcher
    reports only the directory, so the filter looks inside it."""
    checker = ReloadFilter([project], (), ["generated"])
    blog = project / "blog" / "templates"
    blog.mkdir(parents=True)
    (blog / "post.html").write_text("<p>post</p>\n")
    assets = project / "assets" / "img"
    assets.mkdir(parents=True)
    (assets / "logo.png").write_bytes(b"\x89PNG")
    (project / "empty").mkdir()
    (project / "generated" / "api").mkdir(parents=True)
    (project / "generated" / "api" / "client.py").write_text("X = 1\n")
    (project / "node_modules" / "pkg").mkdir(parents=True)
    (project / "node_modules" / "pkg" / "index.json").write_text("{}\n")
    assert checker(Change.added, str(project / "blog")) is True
    assert checker(Change.added, str(project / "assets")) is False
    assert checker(Change.added, str(project / "empty")) is False
    assert checker(Change.added, str(project / "generated")) is False
    assert checker(Change.added, str(project / "node_modules")) is False
    assert checker(Change.added, str(project / "node_modules" / "pkg")) is False
    # Only an added directory is searched; a deleted one is judged by its name.
    assert checker(Change.deleted, str(project / "blog")) is False


def test_directory_added_below_an_ignored_one_is_not_searched(project: Path) -> None:
    objects = project / ".git" / "objects" / "ab"
    objects.mkdir(parents=True)
    (objects / "hooks.py").write_text("X = 1\n")
    assert ReloadFilter([project])(Change.added, str(objects)) is False


# ---------------------------------------------------------------- directories never watched


@pytest.mark.parametrize(
    "name",
    [
        ".git/hooks/pre-commit.py",
        "__pycache__/app.py",
        "pkg/__pycache__/models.py",
        "node_modules/left-pad/package.json",
        "frontend/node_modules/pkg/index.html",
        ".venv/lib/python3.11/site-packages/django/__init__.py",
        "venv/bin/activate_this.py",
        "lib/site-packages/thing.py",
        ".tox/py311/setup.cfg",
        ".mypy_cache/3.11/app.json",
        ".pytest_cache/v/cache/lastfailed.json",
        ".ruff_cache/content.json",
        ".idea/workspace.json",
        ".vscode/settings.json",
    ],
)
def test_ignored_directories(project: Path, name: str) -> None:
    assert accepted(project, name) == []


def test_virtual_environment_found_by_its_pyvenv_cfg(project: Path) -> None:
    env = project / "python-env"
    (env / "lib").mkdir(parents=True)
    (env / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (project / "envelope").mkdir()
    assert accepted(
        project,
        "python-env/lib/helpers.py",
        "python-env/pyvenv.cfg",
        "python-env/settings.toml",
        "envelope/helpers.py",
        "helpers.py",
    ) == ["envelope/helpers.py", "helpers.py"]


def test_project_inside_a_directory_named_like_an_ignored_one(tmp_path: Path) -> None:
    """Only directories below the watched root count: a project kept in ~/venv/site is
    watched like any other."""
    root = tmp_path / "venv" / "node_modules" / "site"
    root.mkdir(parents=True)
    assert accepted(root, "app.py", "pkg/views.py") == ["app.py", "pkg/views.py"]


# ---------------------------------------------------------------- editor files


@pytest.mark.parametrize(
    "name",
    [
        ".app.py.swp",
        ".app.py.swo",
        ".app.py.swx",
        "pkg/.models.py.swp",
        "app.py~",
        "settings.toml~",
        ".#app.py",
        "#app.py#",
        "4913",
        "pkg/4913",
        "app.py.tmp",
        ".DS_Store",
    ],
)
def test_editor_swap_and_backup_files_are_ignored(project: Path, name: str) -> None:
    assert accepted(project, name) == []


# ---------------------------------------------------------------- --reload-include


def test_include_replaces_the_default_set(project: Path) -> None:
    """As documented in the CLI help and README: the include globs replace the defaults."""
    assert accepted(project, "schema.sql", "app.py", "static/site.css", includes=["*.sql"]) == [
        "schema.sql"
    ]


def test_include_several_globs(project: Path) -> None:
    names = ["app.py", "static/site.css", "static/app.js", "logo.png"]
    assert accepted(project, *names, includes=["*.py", "*.css"]) == ["app.py", "static/site.css"]


def test_include_with_a_slash_is_relative_to_the_root(project: Path) -> None:
    names = [
        "templates/page.jinja",
        "other/page.jinja",
        "app/templates/page.jinja",
        "page.jinja",
        "app.py",
    ]
    assert accepted(project, *names, includes=["templates/*.jinja"]) == ["templates/page.jinja"]
    assert accepted(project, *names, includes=["./templates/*.jinja"]) == ["templates/page.jinja"]


def test_include_does_not_reach_into_ignored_directories_or_editor_files(project: Path) -> None:
    names = ["site.css", "node_modules/pkg/site.css", ".site.css.swp", "site.css~"]
    assert accepted(project, *names, includes=["*.css"]) == ["site.css"]


# ---------------------------------------------------------------- --reload-exclude


def test_exclude_file_name_glob(project: Path) -> None:
    names = ["app.py", "test_app.py", "pkg/test_views.py", "pkg/views.py"]
    assert accepted(project, *names, excludes=["test_*.py"]) == ["app.py", "pkg/views.py"]


def test_exclude_directory_contents_with_a_slash(project: Path) -> None:
    names = ["static/settings.json", "static/deep/data.json", "app/static/data.json", "app.py"]
    # Anchored at the watched directory: app/static is not static/.
    assert accepted(project, *names, excludes=["static/*"]) == ["app/static/data.json", "app.py"]


@pytest.mark.parametrize("pattern", ["docs", "docs/", "./docs", "./docs/"])
def test_exclude_directory_by_name(project: Path, pattern: str) -> None:
    names = ["docs/conf.py", "docs/api/index.html", "mydocs.py", "docsite/conf.py", "app.py"]
    assert accepted(project, *names, excludes=[pattern]) == [
        "mydocs.py",
        "docsite/conf.py",
        "app.py",
    ]


def test_exclude_directory_name_anywhere_without_a_slash(project: Path) -> None:
    names = ["build/lib/app.py", "pkg/build/out.py", "rebuild.py", "builder/x.py"]
    assert accepted(project, *names, excludes=["build/"]) == ["rebuild.py", "builder/x.py"]


def test_exclude_relative_path_glob(project: Path) -> None:
    names = [
        "generated/models.py",
        "generated/schema.json",
        "other/generated/models.py",
        "models.py",
    ]
    assert accepted(project, *names, excludes=["./generated/*.py"]) == [
        "generated/schema.json",
        "other/generated/models.py",
        "models.py",
    ]


def test_exclude_nested_directory_path(project: Path) -> None:
    names = ["app/migrations/0001_initial.py", "app/models.py", "migrations/0001.py"]
    assert accepted(project, *names, excludes=["app/migrations"]) == [
        "app/models.py",
        "migrations/0001.py",
    ]
    assert accepted(project, *names, excludes=["*/migrations/*"]) == [
        "app/models.py",
        "migrations/0001.py",
    ]


@pytest.mark.parametrize("pattern", ["**/migrations", "**/migrations/*", "**/migrations/"])
def test_exclude_double_star_matches_at_any_depth_including_the_root(
    project: Path, pattern: str
) -> None:
    names = ["migrations/0001.py", "app/migrations/0001.py", "a/b/migrations/0002.py", "app.py"]
    assert accepted(project, *names, excludes=[pattern]) == ["app.py"]


def test_exclude_wins_over_include(project: Path) -> None:
    names = ["templates/page.html", "templates/admin/page.html", "app.py"]
    assert accepted(project, *names, includes=["*.html"], excludes=["templates/admin/*"]) == [
        "templates/page.html"
    ]


@pytest.mark.parametrize("root_given_as", ["relative", "dot", "absolute"])
def test_relative_exclude_whatever_form_the_root_was_given_in(
    project: Path, monkeypatch: pytest.MonkeyPatch, root_given_as: str
) -> None:
    """uvicorn's trap: `--reload-exclude .venv` only worked with absolute paths there. The
    watcher reports absolute paths; the globs stay relative to the watched directory."""
    monkeypatch.chdir(project.parent)
    root = {
        "relative": Path("project"),
        "dot": Path("./project/../project"),
        "absolute": project,
    }[root_given_as]
    checker = ReloadFilter([root], (), ["myenv", "static/*", "./generated/*.py"])
    assert checker.accepts(project / "app.py")
    assert not checker.accepts(project / "myenv" / "lib" / "x.py")
    assert not checker.accepts(project / "static" / "data.json")
    assert not checker.accepts(project / "generated" / "models.py")
    assert checker.accepts(project / "generated" / "schema.json")


def test_root_given_as_the_current_directory(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    checker = ReloadFilter([Path(".")], (), ["static/*"])
    assert checker.accepts(project / "app.py")
    assert not checker.accepts(project / "static" / "app.json")
    assert not checker.accepts(project / ".venv" / "lib" / "x.py")


def test_absolute_exclude_pattern(project: Path) -> None:
    """Users who learned uvicorn's workaround pass absolute paths: those must work too."""
    names = ["generated/models.py", "generated/deep/x.py", "app.py", "other/generated/x.py"]
    assert accepted(project, *names, excludes=[str(project / "generated")]) == [
        "app.py",
        "other/generated/x.py",
    ]
    assert accepted(project, *names, excludes=[f"{project}/generated/*"]) == [
        "app.py",
        "other/generated/x.py",
    ]


# ---------------------------------------------------------------- several roots


def test_several_roots_each_anchor_their_own_globs(tmp_path: Path) -> None:
    first, second = tmp_path / "site", tmp_path / "shared"
    first.mkdir()
    second.mkdir()
    checker = ReloadFilter([first, second], (), ["static/*"])
    assert checker.accepts(first / "app.py")
    assert checker.accepts(second / "lib.py")
    assert not checker.accepts(first / "static" / "data.json")
    assert not checker.accepts(second / "static" / "data.json")
    assert not checker.accepts(second / "node_modules" / "x" / "index.html")
    assert not checker.accepts(second / ".lib.py.swp")
    assert checker.accepts(second / "pkg" / "static" / "data.json")


def test_several_roots_virtualenv_check_stays_inside_each_root(tmp_path: Path) -> None:
    first, second = tmp_path / "site", tmp_path / "shared"
    (first / "env").mkdir(parents=True)
    (first / "env" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (second / "env").mkdir(parents=True)
    checker = ReloadFilter([first, second])
    assert not checker.accepts(first / "env" / "x.py")
    assert checker.accepts(second / "env" / "x.py")


def test_the_servers_own_output_file_is_ignored(project: Path) -> None:
    """`aserve app:app --reload > out.txt` in the project: its own log lines must not restart
    it; another .txt file still does."""
    checker = ReloadFilter([project])
    with open(project / "out.txt", "w") as output:
        checker.ignore_output((output.fileno(),))
        (project / "notes.txt").write_text("x\n")
        assert not checker.accepts(project / "out.txt")
        assert checker.accepts(project / "notes.txt")
    # A pipe or a terminal (the usual case) is no file to ignore.
    piped = ReloadFilter([project])
    read, write = os.pipe()
    try:
        piped.ignore_output((write,))
    finally:
        os.close(read)
        os.close(write)
    assert piped.accepts(project / "out.txt")


# ---------------------------------------------------------------- other platforms' file systems


def test_case_folded_where_the_file_system_ignores_case() -> None:
    """macOS and Windows: the watcher reports a path in the case it is stored in, whatever
    the case the directory and the globs were typed in."""
    root = PurePosixPath("/Users/ada/Projects/site")
    folding = ReloadFilter([root], (), ["Static/*"], fold_case=True)
    reported = PurePosixPath("/Users/ada/projects/SITE")
    assert folding.accepts(reported / "views.PY")
    assert folding.accepts(reported / "Templates" / "Base.HTML")
    assert not folding.accepts(reported / "static" / "app.py")  # excluded as Static/*
    assert not folding.accepts(reported / "Node_Modules" / "pkg" / "index.py")
    assert not folding.accepts(reported / "notes.SWP")
    # Where case matters (Linux), the same path is another directory and another name.
    exact = ReloadFilter([root], (), ["Static/*"], fold_case=False)
    assert not exact.accepts(reported / "views.PY")
    assert exact.accepts(reported / "static" / "app.py")  # not under the root: not excluded


def test_windows_paths_and_globs() -> None:
    root = PureWindowsPath("C:\\Users\\ada\\site")
    checker = ReloadFilter(
        [root], (), ["static\\*", "C:\\Users\\ada\\site\\generated\\*"], fold_case=True
    )
    checker.add([(PureWindowsPath("D:\\shared\\templates"), "**/*.html")], [])
    reported = PureWindowsPath("c:\\users\\ADA\\site")
    assert checker.accepts(reported / "app.py")
    assert checker.accepts(reported / "polls" / "models.py")
    assert not checker.accepts(reported / "static" / "app.py")
    assert not checker.accepts(reported / "generated" / "schema.py")
    assert not checker.accepts(reported / "__pycache__" / "app.cpython-311.pyc")
    assert not checker.accepts(reported / ".git" / "HEAD")
    assert checker.accepts(PureWindowsPath("D:\\Shared\\Templates\\polls\\index.html"))
    assert not checker.accepts(PureWindowsPath("D:\\shared\\templates\\style.css"))
